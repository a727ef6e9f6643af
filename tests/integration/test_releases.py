"""A chain of releases on a dated corpus with drift: release 1 up to a day, an update from it
(exactly the newer records, replay of the parent's data), a second update continuing the chain,
"nothing newer" refused before training, per-period perplexity in the summary and the card."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from tests.conftest import run_train

from fmlab.config import ConfigError
from fmlab.evaluation.drift_corpus import drift_corpus
from fmlab.lineage import fingerprint

pytestmark = pytest.mark.slow

QUARTERS = ("2023Q1", "2023Q2", "2023Q3", "2023Q4")


@pytest.fixture(scope="module")
def news(tmp_path_factory) -> tuple[Path, list[dict]]:
    """4 quarters x 40 documents with drift, plus 2 undated documents."""
    rows = drift_corpus(periods=4, docs_per_period=40, seed=3)
    rows += [{"id": f"u{i}", "text": r["text"] + " Undated."} for i, r in enumerate(rows[:2])]
    path = tmp_path_factory.mktemp("news") / "news.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, rows


def _release(out: Path, news: Path, *overrides: str) -> dict:
    return run_train(
        out,
        f"data.sources=[{{path: '{news}', date_field: date}}]",
        "data.block_size=64",
        "data.batch_size=8",
        "data.val_fraction=0.15",
        "data.test_fraction=0.1",
        "data.dedup=null",
        "data.decontaminate=null",
        "tokenizer.vocab_size=300",
        "trainer.max_steps=4",
        "trainer.val_check_interval=4",
        "callbacks.checkpoint_last.every_n_train_steps=4",
        "run_test=false",
        *overrides,
    )


def _card(summary: dict) -> dict:
    return json.loads((Path(summary["paths"]["export_dir"]) / "fmlab_card.json").read_text())


@pytest.fixture(scope="module")
def first(tmp_path_factory, news) -> dict:
    out = tmp_path_factory.mktemp("release1")
    return _release(out, news[0], "data=release", "data.until=2023-03-31", "data.periods=null")


def _newer(rows: list[dict], after: str, until: str | None = None) -> int:
    return sum(
        1 for r in rows if "date" in r and r["date"] > after and (not until or r["date"] <= until)
    )


def test_updates_take_exactly_the_newer_records_and_continue_the_chain(first, news, tmp_path):
    path, rows = news
    c1 = _card(first)["data_cutoff"]
    assert c1 == max(r["date"] for r in rows if r.get("date", "9") <= "2023-03-31")
    assert _card(first)["release"]["chain"][0]["window"]["until"] == "2023-03-31"

    update = ["experiment=continual_update", "data.replay=0.25", "callbacks.forgetting.kl=false"]
    r2 = _release(tmp_path / "r2", path, *update, f"init_from={first['paths']['export_dir']}",
                  "data.until=2023-06-30", "data.periods=null")  # fmt: skip
    window = r2["data"]["components"]["new"]["stages"]["filter"]
    assert window["in"] == len(rows)  # every record read, the window applied
    assert window["out"] == _newer(rows, c1, "2023-06-30")  # exactly the newer ones
    assert window["removed"] == {
        "before_window": sum(1 for r in rows if r.get("date", "9") <= c1),
        "after_window": sum(1 for r in rows if r.get("date", "") > "2023-06-30"),
        "undated": 2,
    }
    card2 = _card(r2)
    c2 = card2["data_cutoff"]
    assert c1 < c2 <= "2023-06-30"
    assert card2["release"]["window"] == {"after": c1, "until": "2023-06-30", "undated": "drop"}
    replay = r2["data"]["components"]["replay"]["stages"]["filter"]
    assert replay["out"] == sum(1 for r in rows if r.get("date", "9") <= c1)  # the parent's data
    assert card2["data_mixture"]["shares"] == {"new": 0.75, "replay": 0.25}

    r3 = _release(tmp_path / "r3", path, *update, f"init_from={r2['paths']['export_dir']}")
    card3 = _card(r3)
    assert r3["data"]["components"]["new"]["stages"]["filter"]["out"] == _newer(rows, c2)
    chain = card3["release"]["chain"]
    assert [e["release"] for e in chain] == [1, 2, 3] and card3["release"]["number"] == 3
    assert [e["data_cutoff"] for e in chain] == [c1, c2, card3["data_cutoff"]]
    assert chain[0]["fingerprint"] == fingerprint(first["paths"]["export_dir"])
    assert chain[1]["fingerprint"] == fingerprint(r2["paths"]["export_dir"])
    assert chain[2]["fingerprint"] is None and chain[2]["window"]["after"] == c2
    # replay of release 3 = everything release 2 was trained on: one window up to its cutoff
    assert [(d["after"], d["before"]) for d in card3["release"]["data"]] == [
        (c2, card3["data_cutoff"]),
        (None, c2),
    ]

    # per-period perplexity: during training (metrics.csv), in the summary and in the card
    assert "periods" not in card2  # data.periods=null
    assert sorted(card3["periods"]) == list(QUARTERS)
    for q in QUARTERS:
        assert card3["periods"][q]["ppl"] == pytest.approx(r3[f"val/period/{q}/ppl"])
        assert card3["periods"][q]["held_out_documents"] > 0
    with open(r3["paths"]["metrics_csv"]) as fh:
        logged = [r for r in csv.DictReader(fh) if r.get("val/period/2023Q1/ppl")]
    assert len(logged) == 2  # the validation at step 4, then the evaluated checkpoint
    readme = (Path(r3["paths"]["export_dir"]) / "README.md").read_text()
    assert "## periods" in readme and "| 2023Q4 |" in readme


def test_nothing_newer_than_the_cutoff_is_refused_before_training(first, news, tmp_path):
    rows = news[1]
    old = tmp_path / "old.jsonl"  # the sources as they were at release 1: nothing new since
    old.write_text(
        "".join(json.dumps(r) + "\n" for r in rows if r.get("date", "9") <= "2023-03-31")
    )
    with pytest.raises(ConfigError, match="nothing newer than the parent's data cutoff"):
        _release(tmp_path / "r", old, "experiment=continual_update",
                 f"init_from={first['paths']['export_dir']}")  # fmt: skip
    assert not (tmp_path / "r" / "checkpoints").exists()
