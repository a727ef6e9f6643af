from collections import Counter

from fmlab.data.splits import split_of


def test_split_is_deterministic_and_content_based():
    text = "Some document about packing tokens."
    assert split_of(text, 0.1, 0.1) == split_of(text, 0.1, 0.1)
    # whitespace-normalised: reformatting does not move a document
    assert split_of("a  b\n c", 0.3, 0.3) == split_of("a b c", 0.3, 0.3)


def test_split_fractions_match_in_expectation():
    counts = Counter(split_of(f"document number {i}", 0.1, 0.2) for i in range(20000))
    assert abs(counts["validation"] / 20000 - 0.1) < 0.01
    assert abs(counts["test"] / 20000 - 0.2) < 0.01


def test_salt_changes_assignment_and_zero_fractions():
    docs = [f"doc {i}" for i in range(500)]
    a = [split_of(d, 0.2, 0.2) for d in docs]
    b = [split_of(d, 0.2, 0.2, salt="other") for d in docs]
    assert a != b
    assert {split_of(d, 0.0, 0.0) for d in docs} == {"train"}


def test_declared_splits_take_the_hash_split_out_of_their_split():
    from fmlab.data.splits import empty_split_cause, hash_fractions

    assert hash_fractions(0.1, 0.2, [None, "test"]) == (0.1, 0.0)
    assert hash_fractions(0.1, 0.2, ["validation", "test", None]) == (0.0, 0.0)
    assert hash_fractions(0.1, 0.2, ["train"]) == (0.1, 0.2)
    # every source declares, none declares validation: the real cause is named
    cause = empty_split_cause("validation", {"a.jsonl": "train", "b.jsonl": "test"}, 0.1, 0.1)
    assert "no source feeds the validation split" in cause and "b.jsonl (split: test)" in cause
    assert empty_split_cause("validation", {"a.jsonl": None}, 0.1, 0.1) is None
    assert "fraction for test: 0" in empty_split_cause("test", {"a.jsonl": None}, 0.1, 0.0)


def test_prepare_honours_declared_splits_and_reports_them(tmp_path):
    import json

    import pytest

    from fmlab.data.pipeline import SourceSpec, prepare_dataset

    texts = {
        s: [f"{s} document number {i} about tokens and blocks" for i in range(n)]
        for s, n in (("train", 30), ("val", 7), ("test", 5))
    }
    for name, rows in texts.items():
        (tmp_path / f"{name}.jsonl").write_text(
            "".join(json.dumps({"text": t}) + "\n" for t in rows)
        )
    sources = [
        str(tmp_path / "train.jsonl"),
        {"path": str(tmp_path / "val.jsonl"), "split": "validation"},
        {"path": str(tmp_path / "test.jsonl"), "split": "test"},
    ]
    card = prepare_dataset(
        sources,
        str(tmp_path / "out"),
        work_dir=tmp_path / "work",
        cache_dir=tmp_path / "cache",
        progress=False,
    )
    assert {s: card["splits"][s]["documents"] for s in ("train", "validation", "test")} == {
        "train": 30,
        "validation": 7,
        "test": 5,
    }
    by = {k.rsplit("/", 1)[-1]: v for k, v in card["split_sources"].items()}
    assert by["test.jsonl"] == {"declared": "test", "train": 0, "validation": 0, "test": 5}
    assert by["train.jsonl"]["declared"] is None and by["train.jsonl"]["train"] == 30
    with pytest.raises(ValueError, match="hf_split: dev"):
        SourceSpec(path="x.jsonl", split="dev")
    assert SourceSpec(path="d", hf_split="dev", split="validation").read_split == "dev"
