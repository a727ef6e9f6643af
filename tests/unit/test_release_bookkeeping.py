"""Release bookkeeping without training: the parent's data merged for replay, the card's
periods table, and the checks a release makes before reading any data."""

from __future__ import annotations

import json

import pytest

from fmlab.config import ConfigError
from fmlab.evaluation.periods import period_card
from fmlab.releases import ReleaseDataModule, _merged


def test_the_parents_data_is_replayed_as_one_window_per_source():
    news, wiki = [{"path": "/d/news.jsonl", "date_field": "date"}], [{"path": "/d/wiki.jsonl"}]
    part = lambda src, after, before, share, undated="drop": dict(
        sources=src, after=after, before=before, undated=undated, share=share
    )
    parts = [
        part(news, "2023-06-30", "2023-09-30", 0.9),
        part(news, None, "2023-06-30", 0.05),
        part(wiki, None, None, 0.05, "keep"),
    ]
    merged = _merged(parts)
    assert [(p["after"], p["before"], p["share"]) for p in merged] == [
        (None, "2023-09-30", pytest.approx(0.95)),
        (None, None, pytest.approx(0.05)),
    ]


def test_the_periods_table_joins_metrics_and_held_out_sets():
    info = {
        "2024Q1": {"first": "2024-01-01", "last": "2024-03-31", "documents": 12, "tokens": 900},
        "2024Q2": {"first": "2024-04-01", "last": "2024-06-30", "skipped": "too few records"},
    }
    metrics = {"val/period/2024Q1/ppl": 31.5, "val/ppl": 20.0, "forget/replay/ppl": 40.0}
    table = period_card(metrics, info)["periods"]
    assert table["2024Q1"] == {
        "first_day": "2024-01-01",
        "last_day": "2024-03-31",
        "held_out_documents": 12,
        "held_out_tokens": 900,
        "ppl": 31.5,
    }
    assert table["2024Q2"]["ppl"] is None and list(table) == ["2024Q1", "2024Q2"]
    assert period_card({"val/ppl": 3.0}, info) == {}


def test_a_release_checks_its_settings_before_reading(tmp_path):
    with pytest.raises(ConfigError, match="no date_field"):
        ReleaseDataModule(sources=[str(tmp_path / "news.jsonl")])
    src = [{"path": str(tmp_path / "news.jsonl"), "date_field": "date"}]
    with pytest.raises(ConfigError, match="must be after the window start"):
        ReleaseDataModule(sources=src, after="2024-06-30", until="2024-03-31")
    parent = tmp_path / "parent"
    parent.mkdir()
    (parent / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (parent / "fmlab_card.json").write_text(json.dumps({"data_cutoff": None}))
    with pytest.raises(ConfigError, match="records no data cutoff"):
        ReleaseDataModule(sources=src, parent=str(parent))
    (parent / "fmlab_card.json").write_text(json.dumps({"data_cutoff": "2024-03-31"}))
    with pytest.raises(ConfigError, match="nothing to replay from"):
        ReleaseDataModule(sources=src, parent=str(parent), replay=0.05)
    dm = ReleaseDataModule(sources=src, parent=str(parent), replay=0.0)
    assert dm.window() == {"after": "2024-03-31", "until": None, "undated": "drop"}
    assert dm.names == ["new"]  # replay 0 from a parent without release data: nothing to add
