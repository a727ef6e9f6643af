import json

import datasets
import pandas as pd
import pytest

from fmlab.data.sources import DataSourceError, load_text_source

DOCS = ["first document about tokens", "second document, with a comma", "third one"]


@pytest.fixture
def files(tmp_path):
    (tmp_path / "a.txt").write_text("\n\n".join(DOCS))
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"body": d}) + "\n" for d in DOCS))
    (tmp_path / "a.json").write_text(json.dumps([{"text": d} for d in DOCS]))
    pd.DataFrame({"text": DOCS}).to_csv(tmp_path / "a.csv", index=False)
    pd.DataFrame({"text": DOCS}).to_parquet(tmp_path / "a.parquet")
    shards = tmp_path / "shards"
    shards.mkdir()
    for i, d in enumerate(DOCS):
        (shards / f"part-{i}.jsonl").write_text(json.dumps({"text": d}) + "\n")
    datasets.Dataset.from_dict({"content": DOCS}).save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": DOCS})}).save_to_disk(
        str(tmp_path / "saved_dict")
    )
    return tmp_path


@pytest.mark.parametrize(
    ("rel", "kwargs"),
    [
        ("a.txt", {}),
        ("a.jsonl", {"text_field": "body"}),
        ("a.json", {}),
        ("a.csv", {}),
        ("a.parquet", {}),
        ("shards", {}),
        ("shards/*.jsonl", {}),
        ("saved", {"text_field": "content"}),
        ("saved_dict", {}),
    ],
)
def test_every_local_format_reads_the_same_documents(files, rel, kwargs, cache_dir):
    ds = load_text_source(str(files / rel), cache_dir=str(cache_dir), **kwargs)
    assert sorted(ds["text"]) == sorted(DOCS)


def test_txt_sample_by_line(tmp_path, cache_dir):
    (tmp_path / "l.txt").write_text("one\ntwo\nthree\n")
    ds = load_text_source(str(tmp_path / "l.txt"), txt_sample_by="line", cache_dir=str(cache_dir))
    assert ds["text"] == ["one", "two", "three"]


def test_errors_name_the_source(files, cache_dir):
    with pytest.raises(DataSourceError, match=r"a.jsonl.*no column 'text'.*body"):
        load_text_source(str(files / "a.jsonl"), cache_dir=str(cache_dir))
    with pytest.raises(DataSourceError, match="missing.jsonl': no such file"):
        load_text_source(str(files / "missing.jsonl"), cache_dir=str(cache_dir))
    (files / "mixed").mkdir()
    (files / "mixed" / "x.csv").write_text("text\nhello\n")
    (files / "mixed" / "y.jsonl").write_text('{"text": "hi"}\n')
    with pytest.raises(DataSourceError, match="mixes file types"):
        load_text_source(str(files / "mixed"), cache_dir=str(cache_dir))
    with pytest.raises(DataSourceError, match="no split 'test'"):
        load_text_source(str(files / "saved_dict"), split="test", cache_dir=str(cache_dir))


def test_hub_name_fails_clearly_offline(cache_dir):
    with pytest.raises(DataSourceError, match="not a local file.*Hugging Face dataset"):
        load_text_source("no-such-user/no-such-dataset", cache_dir=str(cache_dir))
