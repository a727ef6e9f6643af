"""The whole pipeline: per-stage caching, reruns from a changed stage, the data card, outputs."""

from __future__ import annotations

import functools
import json
import os

import datasets
import pytest
from tests.unit.data.prep_helpers import random_doc, write_jsonl

from fmlab.data.pipeline import (
    Clean,
    Decontaminate,
    Dedup,
    Filter,
    Pack,
    PrepareError,
    Split,
    Write,
    prepare_dataset,
)
from fmlab.data.tokenizer import bpe


def _corpus(path, n=120, extra=()):
    rows = [
        {
            "text": random_doc(i, 80),
            "topic": ["news", "wiki"][i % 2],
            "when": f"20{10 + i % 12}-0{1 + i % 9}-1{i % 10}",
        }
        for i in range(n)
    ]
    rows.append({**rows[3]})  # an exact duplicate
    rows.append({"text": "tiny", "topic": "news", "when": "2030-01-01"})  # filtered: too short
    rows.append({"text": 5})  # a bad row
    return write_jsonl(path, rows + list(extra))


def _run(tmp_path, source, out="out", num_proc=1, batch_size=1000, **over):
    stages = dict(
        clean=Clean(),
        filter=Filter(min_words=20),
        dedup=Dedup(),
        split=Split(val_fraction=0.1, test_fraction=0.1),
        decontaminate=Decontaminate(),
        segment=Pack(block_size=64),
        write=Write(),
    )
    stages.update(over)
    spec = {"path": str(source), "domain_field": "topic", "date_field": "when"}
    return prepare_dataset(
        [spec],
        str(tmp_path / out),
        **stages,
        tokenizer=functools.partial(bpe, vocab_size=300),
        work_dir=tmp_path / "work",
        cache_dir=tmp_path / "cache",
        progress=False,
        num_proc=num_proc,
        batch_size=batch_size,
    )


def _stage_dirs(tmp_path):
    names = sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "work" / "stages").iterdir())
    return {n: names.count(n) for n in set(names)}


def test_card_counts_every_stage(tmp_path):
    card = _run(tmp_path, _corpus(tmp_path / "raw.jsonl"))
    st = card["stages"]
    assert st["structure"]["in"] == 123 and st["structure"]["removed"] == {"non_string_field": 1}
    assert st["structure"]["examples"]["non_string_field"][0]["where"].endswith("raw.jsonl:123")
    assert st["filter"]["removed"] == {"too_few_words": 1}
    assert st["dedup"]["removed"] == {"exact": 1, "near": 0}
    assert card["duplicates"]["largest"][0]["removed"][0].endswith("raw.jsonl:121")
    docs = sum(card["splits"][s]["documents"] for s in ("train", "validation", "test"))
    assert docs == st["decontaminate"]["out"] == 120 - sum(st["decontaminate"]["removed"].values())
    assert card["dates"]["min"] == "2010-01-10" and card["dates"]["cutoff"] == card["dates"]["max"]
    assert card["dates"]["max"] <= "2021-12-31"  # the 2030 row was filtered out
    assert set(card["domains"]) == {"news", "wiki"}
    assert (
        sum(d["train"]["documents"] for d in card["domains"].values())
        == card["splits"]["train"]["documents"]
    )
    assert (
        sum(d["train"]["tokens"] for d in card["domains"].values())
        == card["splits"]["train"]["tokens"]
    )
    out = tmp_path / "out"
    for name in ("card.json", "card.md", "plots/length_chars.png", "plots/length_tokens.png"):
        assert (out / name).is_file(), name
    assert (out / "plots/length_tokens.png").read_bytes()[:4] == b"\x89PNG"
    md = (out / "card.md").read_text()
    assert "| filter | 122 | 121 | too_few_words 1 |" in md and "non_string_field" in md
    assert "data cutoff **" in md and "## Duplicate clusters" in md
    assert json.loads((out / "card.json").read_text())["fingerprint"] == card["fingerprint"]
    dd = datasets.load_from_disk(str(out))
    assert len(dd["train"]) == card["splits"]["train"]["rows"] > 0
    assert len(dd["train"][0]["input_ids"]) == 64


def test_rerun_is_a_no_op_and_a_change_reruns_from_that_stage(tmp_path):
    raw = _corpus(tmp_path / "raw.jsonl")
    first = _run(tmp_path, raw)
    mtime = os.stat(tmp_path / "out" / "card.json").st_mtime_ns
    again = _run(tmp_path, raw)
    assert again["up_to_date"] and again["fingerprint"] == first["fingerprint"]
    assert os.stat(tmp_path / "out" / "card.json").st_mtime_ns == mtime  # nothing rewritten
    one_each = {
        "structure": 1,
        "clean": 1,
        "filter": 1,
        "dedup": 1,
        "split": 1,
        "decontaminate": 1,
        "segment": 1,
    }
    assert _stage_dirs(tmp_path) == one_each
    _run(tmp_path, raw, dedup=Dedup(threshold=0.5))  # dedup changed: dedup and later rerun
    assert _stage_dirs(tmp_path) == {
        **one_each,
        "dedup": 2,
        "split": 2,
        "decontaminate": 2,
        "segment": 2,
    }
    _run(tmp_path, raw, dedup=Dedup(threshold=0.5), segment=Pack(block_size=32))  # only segment
    assert _stage_dirs(tmp_path)["segment"] == 3 and _stage_dirs(tmp_path)["dedup"] == 2
    _run(tmp_path, raw, dedup=None, segment=Pack(block_size=32))  # off: passes through
    assert _stage_dirs(tmp_path)["dedup"] == 2 and _stage_dirs(tmp_path)["split"] == 3
    _corpus(raw, extra=[{"text": random_doc(5000, 80)}])  # the input changed: all rerun
    _run(tmp_path, raw)
    assert _stage_dirs(tmp_path)["structure"] == 2 and _stage_dirs(tmp_path)["clean"] == 2


def test_parallel_output_equals_serial_and_parquet_output(tmp_path):
    raw = _corpus(tmp_path / "raw.jsonl", n=150)
    serial = _run(tmp_path / "a", raw)
    parallel = _run(tmp_path / "b", raw, num_proc=2, batch_size=16, write=Write(format="parquet"))
    assert parallel["splits"] == serial["splits"]
    assert {k: v.get("removed") for k, v in parallel["stages"].items()} == {
        k: v.get("removed") for k, v in serial["stages"].items()
    }
    a = datasets.load_from_disk(str(tmp_path / "a" / "out"))
    b = datasets.load_dataset("parquet", data_dir=str(tmp_path / "b" / "out"), split=None)
    for split in ("train", "validation", "test"):
        assert a[split]["input_ids"] == b[split]["input_ids"]


def test_output_dir_that_is_not_a_dataset_is_never_overwritten(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(PrepareError, match="not an fmlab prepared dataset"):
        _run(tmp_path, _corpus(tmp_path / "raw.jsonl"), out="mine")
    assert (out / "thesis.tex").read_text() == "precious"
    assert not list(tmp_path.glob(".mine.tmp*"))  # the staging directory is cleaned up


def test_records_recipe_writes_text_per_split(tmp_path):
    card = _run(tmp_path, _corpus(tmp_path / "raw.jsonl"), segment=None)
    dd = datasets.load_from_disk(str(tmp_path / "out"))
    assert card["segment"]["mode"] == "records" and "tokenizer" not in card
    assert set(dd["train"].column_names) == {"id", "source", "text", "domain", "date"}
    assert len(dd["train"]) == card["splits"]["train"]["documents"]


def test_sft_and_classification_recipes_end_to_end(tmp_path):
    from fmlab.config import build, compose_config
    from fmlab.prepare import STAGES

    rows = [
        {"q": f"Question {i}: {random_doc(i, 12)}", "a": random_doc(900 + i, 6)} for i in range(60)
    ]
    rows.append(rows[0])  # an exact duplicate pair
    raw = write_jsonl(tmp_path / "qa.jsonl", rows)
    cfg = compose_config(
        "prepare",
        [
            f"sources=[{{path: '{raw}', prompt_field: q, response_field: a}}]",
            "prepare/recipe=sft",
            "segment.max_length=96",
            "segment.pack=true",
            "tokenizer.vocab_size=300",
            f"output_dir={tmp_path / 'qa'}",
            f"work_dir={tmp_path / 'work'}",
            "progress=false",
        ],
        output_dir=tmp_path,
    )
    stages = {name: build(cfg.get(name), name) for name in STAGES}
    card = prepare_dataset(
        [{"path": str(raw), "prompt_field": "q", "response_field": "a"}],
        str(tmp_path / "qa"),
        **stages,
        tokenizer=build(cfg.tokenizer, "tokenizer"),
        work_dir=tmp_path / "work",
        cache_dir=tmp_path / "cache",
        progress=False,
    )
    assert card["kind"] == "sft" and card["stages"]["dedup"]["removed"]["exact"] == 1
    assert not card["stages"]["filter"]["enabled"]  # the recipe switches Gopher rules off
    dd = datasets.load_from_disk(str(tmp_path / "qa"))
    row = dd["train"][0]
    assert (
        set(row) == {"input_ids", "labels", "position_ids", "seq_ids"} and len(row["labels"]) == 96
    )
    labelled = [i for i, x in enumerate(row["labels"]) if x != -100]
    assert labelled and row["seq_ids"][labelled[0]] == 0  # the first example's response is trained
    docs = sum(card["splits"][s]["documents"] for s in ("train", "validation", "test"))
    assert docs == 60 - sum(card["stages"]["decontaminate"]["removed"].values())
