"""Read + structure: every format, field mapping, bad rows counted per reason with file:line."""

from __future__ import annotations

import gzip
import json

import datasets
import pandas as pd
import pytest
from tests.unit.data.prep_helpers import structure

from fmlab.data.pipeline import PrepareError, SourceSpec
from fmlab.data.pipeline.read import resolve_source

DOCS = ["first document about tokens", "second document, with a comma", "third one"]


def test_bad_rows_counted_per_reason_with_file_and_line(tmp_path):
    path = tmp_path / "raw.jsonl"
    lines = [
        json.dumps({"text": "a good document"}),  # 1
        "{not json",  # 2: unparsable
        json.dumps({"body": "no text field"}),  # 3: missing_field
        json.dumps({"text": 42}),  # 4: non_string_field
        "",  # 5: blank lines are skipped, not counted
        json.dumps({"text": "   "}),  # 6: empty_text
        json.dumps(["a", "list"]),  # 7: not_an_object
        json.dumps({"text": "another good one"}),  # 8
    ]
    raw = ("\n".join(lines) + "\n").encode() + b'{"text": "bad \xff byte"}\n'  # 9: invalid_utf8
    path.write_bytes(raw)
    stats, table = structure(tmp_path, str(path), max_bad_fraction=0.9)
    assert table.column("text").to_pylist() == ["a good document", "another good one"]
    assert table.column("id").to_pylist() == [f"{path}:1", f"{path}:8"]
    assert stats["removed"] == {
        "unparsable": 1,
        "missing_field": 1,
        "non_string_field": 1,
        "empty_text": 1,
        "not_an_object": 1,
        "invalid_utf8": 1,
    }
    where = {r: [e["where"] for e in ex] for r, ex in stats["examples"].items()}
    assert where["unparsable"] == [f"{path}:2"]
    assert where["missing_field"] == [f"{path}:3"]
    assert where["non_string_field"] == [f"{path}:4"]
    assert where["empty_text"] == [f"{path}:6"]
    assert where["invalid_utf8"] == [f"{path}:9"]
    assert "no field 'text'" in stats["examples"]["missing_field"][0]["detail"]
    assert stats["sources"][0]["rows"] == 8 and stats["sources"][0]["kept"] == 2


def test_too_many_bad_rows_stops_naming_the_source(tmp_path):
    path = tmp_path / "mostly_bad.jsonl"
    path.write_text(json.dumps({"text": "ok"}) + "\n" + "{oops\n" * 3)
    with pytest.raises(PrepareError) as err:
        structure(tmp_path, str(path), max_bad_fraction=0.5)
    msg = str(err.value)
    assert "mostly_bad.jsonl" in msg and "3 of 4 rows are bad" in msg
    assert f"unparsable 3 (first at {path}:2" in msg and "max_bad_fraction" in msg
    with pytest.raises(PrepareError, match="no valid record among 4 rows"):
        structure(tmp_path, SourceSpec(path=str(path), text_field="body"), max_bad_fraction=1.0)


def test_missing_sources_fail_before_reading(tmp_path):
    with pytest.raises(PrepareError, match="nothing.jsonl': no such file"):
        resolve_source(SourceSpec(path=str(tmp_path / "nothing.jsonl")))
    with pytest.raises(PrepareError, match="no such file"):
        resolve_source(SourceSpec(path=str(tmp_path / "*.parquet")))
    (tmp_path / "notes.docx").write_text("x")
    with pytest.raises(PrepareError, match="unsupported file type"):
        resolve_source(SourceSpec(path=str(tmp_path / "notes.docx")))


@pytest.fixture
def formats(tmp_path):
    (tmp_path / "a.txt").write_text("\n\n".join(DOCS) + "\n")
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"body": d}) + "\n" for d in DOCS))
    with gzip.open(tmp_path / "z.jsonl.gz", "wt") as fh:
        fh.write("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    (tmp_path / "a.json").write_text(json.dumps([{"text": d} for d in DOCS], indent=1))
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": [{"text": d} for d in DOCS]}))
    pd.DataFrame({"text": DOCS}).to_csv(tmp_path / "a.csv", index=False)
    pd.DataFrame({"text": DOCS}).to_parquet(tmp_path / "a.parquet")
    (tmp_path / "shards").mkdir()
    for i, d in enumerate(DOCS):
        (tmp_path / "shards" / f"part-{i}.jsonl").write_text(json.dumps({"text": d}) + "\n")
    datasets.Dataset.from_dict({"content": DOCS}).save_to_disk(str(tmp_path / "saved"))
    return tmp_path


@pytest.mark.parametrize(
    ("rel", "kwargs", "first_where"),
    [
        ("a.txt", {}, "a.txt:1"),
        ("a.jsonl", {"text_field": "body"}, "a.jsonl:1"),
        ("z.jsonl.gz", {}, "z.jsonl.gz:1"),
        ("a.json", {}, "a.json:2"),  # the array's first element starts on line 2
        ("wrapped.json", {}, "wrapped.json[0]"),
        ("a.csv", {}, "a.csv:2"),  # line 1 is the header
        ("a.parquet", {}, "a.parquet[0]"),
        ("shards", {}, "part-0.jsonl:1"),
        ("shards/*.jsonl", {}, "part-0.jsonl:1"),
        ("saved", {"text_field": "content"}, "[0]"),
    ],
)
def test_every_format_reads_the_same_documents(formats, rel, kwargs, first_where):
    stats, table = structure(formats, SourceSpec(path=str(formats / rel), **kwargs))
    assert table.column("text").to_pylist() == DOCS
    assert table.column("id").to_pylist()[0].endswith(first_where)
    assert stats["removed"] == {}


def test_txt_paragraph_positions_and_csv_bad_row(tmp_path):
    (tmp_path / "p.txt").write_text("one\nstill one\n\n\ntwo\n\nthree\n")
    _, table = structure(tmp_path, str(tmp_path / "p.txt"))
    assert table.column("text").to_pylist() == ["one\nstill one", "two", "three"]
    assert [i.rsplit(":", 1)[1] for i in table.column("id").to_pylist()] == ["1", "5", "7"]
    (tmp_path / "b.csv").write_text('text,label\n"fine",1\n"too",many,fields\n"also fine",2\n')
    stats, table = structure(tmp_path, str(tmp_path / "b.csv"), max_bad_fraction=0.5)
    assert table.num_rows == 2
    assert stats["examples"]["unparsable"][0]["where"] == f"{tmp_path / 'b.csv'}:3"
    assert "3 fields where the header has 2" in stats["examples"]["unparsable"][0]["detail"]


def test_sft_and_classification_mapping_with_metadata(tmp_path):
    rows = [
        {"q": {"text": "What is 2+2?"}, "a": "4", "meta": {"day": "2023-05-01T10:00:00Z"}, "k": 7},
        {"q": {"text": "Capital of France?"}, "a": "Paris", "meta": {"day": "2021-01-02"}, "k": 8},
        {"q": {"text": "Bad date"}, "a": "x", "meta": {"day": "yesterday"}, "k": 9},
    ]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = SourceSpec(
        path=str(tmp_path / "qa.jsonl"),
        prompt_field="q.text",
        response_field="a",
        date_field="meta.day",
        id_field="k",
        domain="math",
        name="qa",
    )
    stats, table = structure(tmp_path, spec, kind="sft", max_bad_fraction=0.5)
    assert table.column("prompt").to_pylist() == ["What is 2+2?", "Capital of France?"]
    assert table.column("date").to_pylist() == ["2023-05-01", "2021-01-02"]
    assert table.column("id").to_pylist() == ["7", "8"]
    assert set(table.column("domain").to_pylist()) == {"math"}
    assert set(table.column("source").to_pylist()) == {"qa"}
    assert stats["removed"] == {"invalid_date": 1}

    rows = [
        {"text": "great movie", "label": 1},
        {"text": "bad", "label": "neg"},
        {"text": "odd", "label": [1]},
        {"text": "none"},
    ]
    (tmp_path / "cls.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    stats, table = structure(
        tmp_path, str(tmp_path / "cls.jsonl"), "classification", max_bad_fraction=0.6
    )
    assert table.column("label").to_pylist() == ["1", "neg"]
    assert stats["removed"] == {"invalid_label": 1, "missing_field": 1}


def test_hub_name_fails_clearly_offline(tmp_path):
    from fmlab.data.pipeline.read import iter_rows

    src = resolve_source(SourceSpec(path="no-such-user/no-such-dataset"))
    assert src.kind == "hub"  # not a local path: read as a Hugging Face dataset, streamed
    with pytest.raises(PrepareError, match="no-such-user/no-such-dataset' is not a local file"):
        next(iter_rows(src, cache_dir=str(tmp_path)))
