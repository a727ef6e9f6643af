"""Dedup (exact + MinHash LSH), hash splits stable under growth, 13-gram decontamination."""

from __future__ import annotations

import json
import random

import pyarrow as pa
from tests.unit.data.prep_helpers import random_doc, run_stage, structure, write_jsonl

from fmlab.data.pipeline import Decontaminate, Dedup, Split
from fmlab.data.pipeline.read import resolve_source
from fmlab.data.pipeline.records import SourceSpec, record_schema
from fmlab.data.splits import split_of


def _table(texts, ids=None, splits=None):
    n = len(texts)
    rows = {
        "id": ids or [f"d{i}" for i in range(n)],
        "source": ["s"] * n,
        "text": texts,
        "domain": [None] * n,
        "date": [None] * n,
    }
    table = pa.Table.from_pydict(rows, schema=record_schema("text"))
    return table if splits is None else table.append_column("split", pa.array(splits))


def _changed(text, n, seed):
    words = text.split()
    rng = random.Random(seed)
    for i in rng.sample(range(len(words)), n):
        words[i] = "zzz" + words[i]
    return " ".join(words)


def test_planted_exact_and_near_duplicates_are_found(tmp_path):
    texts = [random_doc(i, 150) for i in range(120)]
    ids = [f"d{i}" for i in range(120)]
    texts.append(texts[7].upper().replace(".", " !"))  # same words: an exact duplicate
    ids.append("exact-of-7")
    texts.append(_changed(texts[30], 2, seed=1))  # 2 of 150 words changed: Jaccard ~0.94
    ids.append("near-of-30")
    texts.append(texts[50][: len(texts[50]) // 2] + " " + random_doc(999, 75))  # Jaccard ~1/3
    ids.append("half-of-50")
    texts.append(texts[121])  # an exact copy of the near-duplicate joins its cluster
    ids.append("copy-of-near")
    stats, out = run_stage(Dedup(), _table(texts, ids), tmp_path, "text", 2)
    kept = out.column("id").to_pylist()
    assert stats["removed"] == {"exact": 2, "near": 1}
    assert {"exact-of-7", "near-of-30", "copy-of-near"}.isdisjoint(kept)
    assert "half-of-50" in kept and len(kept) == 121
    clusters = {c["kept"]: c for c in stats["clusters"]["largest"]}
    assert set(clusters) == {"d7", "d30"}
    assert clusters["d30"]["size"] == 3 and clusters["d30"]["near"] == 1
    assert sorted(clusters["d30"]["removed"]) == ["copy-of-near", "near-of-30"]
    assert 0.85 < clusters["d30"]["min_jaccard"] < 1.0
    assert clusters["d7"]["exact"] == 1 and stats["clusters"]["count"] == 2
    # switched parts: exact only / near only
    stats, _ = run_stage(Dedup(near=False), _table(texts, ids), tmp_path / "exact")
    assert stats["removed"] == {"exact": 2, "near": 0}
    stats, _ = run_stage(Dedup(exact=False), _table(texts, ids), tmp_path / "near")
    assert stats["removed"] == {"exact": 0, "near": 3}  # identical sets have Jaccard 1


def test_splits_stay_put_when_the_corpus_grows_and_is_reordered(tmp_path):
    docs = [{"text": random_doc(i, 30), "key": f"doc{i}"} for i in range(300)]
    spec = lambda p: SourceSpec(path=str(p), id_field="key")
    _, first = structure(tmp_path / "a", spec(write_jsonl(tmp_path / "a.jsonl", docs)))
    _, before = run_stage(Split(val_fraction=0.1, test_fraction=0.2), first, tmp_path / "a")
    grown = docs + [{"text": random_doc(1000 + i, 30), "key": f"new{i}"} for i in range(200)]
    random.Random(0).shuffle(grown)
    _, second = structure(tmp_path / "b", spec(write_jsonl(tmp_path / "b.jsonl", grown)))
    _, after = run_stage(Split(val_fraction=0.1, test_fraction=0.2), second, tmp_path / "b")
    old = dict(zip(before.column("id").to_pylist(), before.column("split").to_pylist()))
    new = dict(zip(after.column("id").to_pylist(), after.column("split").to_pylist()))
    assert all(new[k] == v for k, v in old.items())
    counts = {s: list(new.values()).count(s) for s in ("train", "validation", "test")}
    assert 0.05 < counts["validation"] / 500 < 0.15 and 0.15 < counts["test"] / 500 < 0.25
    _, off = run_stage(Split(enabled=False), first, tmp_path / "c")
    assert set(off.column("split").to_pylist()) == {"train"}


def _doc_in(split, start, vf=0.1, tf=0.1):
    """A random document (seed >= start) whose hash split is ``split``."""
    seed = start
    while split_of(random_doc(seed, 40), vf, tf) != split:
        seed += 1
    return random_doc(seed, 40)


def test_planted_contaminated_documents_are_dropped(tmp_path):
    test_doc = _doc_in("test", 0)
    val_doc = _doc_in("validation", 500)
    words = test_doc.split()
    leak13 = " ".join(words[10:23])  # 13 consecutive words of a test document
    leak12 = " ".join(words[10:22])  # only 12: below the n-gram size
    bench_passage = random_doc(777, 20)
    (tmp_path / "bench.jsonl").write_text(json.dumps({"question": bench_passage, "id": 3}) + "\n")
    texts = [
        random_doc(2000, 40) + " " + leak13.upper() + "!",  # case/punctuation do not hide it
        random_doc(2001, 40) + " " + leak12,
        random_doc(2002, 40) + " " + " ".join(val_doc.split()[:13]),
        "Intro. " + bench_passage + " Outro.",
        random_doc(2003, 40),
        test_doc,
        val_doc,
    ]
    splits = ["train"] * 5 + ["test", "validation"]
    table = _table(texts, splits=splits)
    bench = [resolve_source(SourceSpec(path=str(tmp_path / "bench.jsonl"), name="quiz"))]
    stage = Decontaminate(benchmarks=[str(tmp_path / "bench.jsonl")])
    stats, out = run_stage(stage, table, tmp_path, "text", 1, bench, str(tmp_path))
    assert out.column("id").to_pylist() == ["d1", "d4", "d5", "d6"]
    assert stats["removed"] == {"test": 1, "validation": 1, "benchmark:quiz": 1}
    assert {e["id"]: e["overlaps"] for e in stats["examples"]} == {
        "d0": "test",
        "d2": "validation",
        "d3": "benchmark:quiz",
    }
    assert stats["ngrams"]["test"] == 40 - 12  # 13-grams of a 40-word document
    # only the validation split is checked now: the test leak stays
    stats, out = run_stage(
        Decontaminate(against=["validation"]), table, tmp_path / "v", "text", 1, [], ""
    )
    assert stats["removed"] == {"validation": 1}
