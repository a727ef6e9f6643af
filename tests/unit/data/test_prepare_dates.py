"""Dated data: windows (after exclusive, before inclusive), the undated policy, split.by=date."""

from __future__ import annotations

import datetime as dt

import pytest
from tests.unit.data.prep_helpers import random_doc, write_jsonl

from fmlab.data.pipeline import Filter, PrepareError, Split, prepare_dataset
from fmlab.data.pipeline.dates import period_bounds, period_of


def _month_end(month: int) -> str:
    nxt = dt.date(2023 + month // 12, month % 12 + 1, 1)
    return (nxt - dt.timedelta(days=1)).isoformat()


@pytest.fixture(scope="module")
def dated(tmp_path_factory):
    """24 records of 2023, two per month (on the 1st and the last day), and 3 undated."""
    rows = []
    for m in range(1, 13):
        for day in (f"2023-{m:02d}-01", _month_end(m)):
            rows.append({"text": random_doc(len(rows), 40), "when": day})
    rows += [{"text": random_doc(100 + i, 40)} for i in range(3)]
    return write_jsonl(tmp_path_factory.mktemp("dated") / "dated.jsonl", rows)


def _prepare(tmp_path, source, **stages):
    stages.setdefault("split", Split(val_fraction=0.0, test_fraction=0.0))
    return prepare_dataset(
        [{"path": str(source), "date_field": "when"}],
        str(tmp_path / "out"),
        work_dir=tmp_path / "work",
        cache_dir=tmp_path / "cache",
        progress=False,
        batch_size=5,  # some batches hold no record of a window
        **stages,
    )


def _docs(card) -> dict[str, int]:
    return {s: card["splits"][s]["documents"] for s in ("train", "validation", "test")}


def test_periods_and_their_bounds():
    assert [period_of("2024-08-31", u) for u in ("month", "quarter", "year")] == [
        "2024-08",
        "2024Q3",
        "2024",
    ]
    assert period_bounds("2024Q3") == ("2024-07-01", "2024-09-30")
    assert period_bounds("2024-02") == ("2024-02-01", "2024-02-29")
    assert period_bounds("2023Q4") == ("2023-10-01", "2023-12-31")
    assert period_bounds("2023") == ("2023-01-01", "2023-12-31")


def test_a_window_keeps_after_exclusive_before_inclusive(tmp_path, dated):
    card = _prepare(
        tmp_path,
        dated,
        filter=Filter(enabled=False, date_after="2023-03-31", date_before="2023-06-30"),
    )
    st = card["stages"]["filter"]
    # 2023-03-31 is out (exclusive), 2023-06-30 is in (inclusive): April..June, plus the undated
    assert st["out"] == 6 + 3 and _docs(card) == {"train": 9, "validation": 0, "test": 0}
    assert st["removed"] == {"before_window": 6, "after_window": 12}
    assert st["dates"] == {
        "after": "2023-03-31",
        "before": "2023-06-30",
        "undated": 3,
        "undated_policy": "keep",
    }
    assert card["dates"]["min"] == "2023-04-01" and card["dates"]["max"] == "2023-06-30"
    assert "rules" in st["settings"] and st["settings"]["rules"] is False  # quality rules off


def test_undated_records_dropped_or_refused(tmp_path, dated):
    card = _prepare(tmp_path, dated, filter=Filter(enabled=False, undated="drop"))
    assert card["stages"]["filter"]["removed"] == {"undated": 3}
    assert card["dates"]["without_date"] == 0 and _docs(card)["train"] == 24
    with pytest.raises(PrepareError, match=r"filter.undated=error: 3 record\(s\) have no date"):
        _prepare(tmp_path / "e", dated, filter=Filter(enabled=False, undated="error"))
    with pytest.raises(ValueError, match="must be before"):
        Filter(date_after="2023-06-30", date_before="2023-06-30")


def test_split_by_date_holds_out_the_latest_period(tmp_path, dated):
    card = _prepare(tmp_path, dated, split=Split(by="date", val_fraction=0.5, test_fraction=0.5))
    docs = _docs(card)
    # 2023Q4 (6 records) held out, divided by hash; the undated 3 stay in train
    assert docs["train"] == 18 + 3 and docs["validation"] + docs["test"] == 6
    assert 0 < docs["test"] < 6
    assert card["stages"]["split"]["dates"] == {
        "heldout_after": "2023-09-30",
        "test_after": None,
        "undated_in_train": 3,
    }
    spans = card["dates"]["by_split"]
    assert spans["train"]["max"] == "2023-09-30" and spans["test"]["min"] >= "2023-10-01"


def test_split_by_date_with_explicit_bounds(tmp_path, dated):
    split = Split(by="date", heldout_after="2023-09-30", test_after="2023-11-30")
    docs = _docs(_prepare(tmp_path / "a", dated, split=split))
    assert docs == {"train": 21, "validation": 4, "test": 2}  # Oct+Nov | Dec
    month = _docs(_prepare(tmp_path / "b", dated, split=Split(by="date", period="month")))
    assert month["train"] == 22 + 3 and month["validation"] + month["test"] == 2
    with pytest.raises(PrepareError, match="training would get none"):
        _prepare(tmp_path / "c", dated, split=Split(by="date", heldout_after="2022-12-31"))
    with pytest.raises(ValueError, match="need split.by=date"):
        Split(heldout_after="2023-01-01")


def test_split_by_date_keeps_declared_splits(tmp_path, dated):
    own = write_jsonl(
        tmp_path / "own_test.jsonl", [{"text": random_doc(500 + i, 40)} for i in range(4)]
    )
    card = prepare_dataset(
        [{"path": str(dated), "date_field": "when"}, {"path": str(own), "split": "test"}],
        str(tmp_path / "out"),
        split=Split(by="date", val_fraction=0.5, test_fraction=0.5),
        work_dir=tmp_path / "work",
        cache_dir=tmp_path / "cache",
        progress=False,
    )
    # the declared source is all of test; the held-out 2023Q4 goes to validation (test is taken)
    assert _docs(card) == {"train": 18 + 3, "validation": 6, "test": 4}
