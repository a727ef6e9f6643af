"""Continued pre-training end to end: init_from vs. ckpt_path, a replay mixture, the forgetting
monitor (checked against a separate fmlab-eval of the same checkpoints) and model-card provenance.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from tests.conftest import _sentences, run_train, synthetic_overrides

from fmlab.config import ConfigError, compose_config
from fmlab.continual import resolve_init
from fmlab.eval import evaluate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def code_jsonl(tmp_path_factory) -> Path:
    """A second 'domain': the synthetic sentences with another vocabulary."""
    swap = {"the": "def", "model": "return", "reads": "yield", "tokens": "lambda", "a": "if"}
    docs = [" ".join(swap.get(w, w) for w in d.split()) for d in _sentences(300, seed=5)]
    path = tmp_path_factory.mktemp("code") / "code.jsonl"
    path.write_text("".join(json.dumps({"body": d}) + "\n" for d in docs))
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory, jsonl_corpus) -> dict:
    out = tmp_path_factory.mktemp("base")
    return run_train(
        out, *synthetic_overrides(jsonl_corpus), "trainer.max_steps=30", "run_test=false"
    )


def _mixture(general: Path, code: Path) -> list[str]:
    comp = "data.components"
    return [
        "data=mixture",
        "callbacks=continual",
        f"{comp}.code.sources=[{{path: '{code}', text_field: body}}]",
        f"{comp}.general.sources=[{{path: '{general}', text_field: body}}]",
        *[
            f"{comp}.{c}.{k}"
            for c in ("code", "general")
            for k in ("block_size=64", "val_fraction=0.1", "test_fraction=0.1", "filter=null")
        ],
        "data.batch_size=8",
        "data.replay=0.25",
        "trainer.limit_val_batches=null",
        "callbacks.forgetting.max_batches=null",
    ]


def _rows(path: str, key: str) -> dict[int, float]:
    with open(path) as fh:
        return {int(r["step"]): float(r[key]) for r in csv.DictReader(fh) if r.get(key)}


def test_continue_on_a_mixture_with_the_monitor_matching_separate_evaluations(
    base, jsonl_corpus, code_jsonl, tmp_path
):
    ckpt = base["paths"]["last_ckpt"]
    s = run_train(
        tmp_path / "cont",
        *_mixture(jsonl_corpus, code_jsonl),
        f"init_from={ckpt}",
        "trainer.max_steps=16",
        "trainer.val_check_interval=8",
        "callbacks.checkpoint_last.every_n_train_steps=8",
        "module.kl=0.5",
        "module.l2sp=0.01",
        "data_cutoff=2025-01-31",
        "export.which=last",
    )
    run = Path(s["paths"]["output_dir"])
    assert s["global_step"] == 16  # a new run: steps count from 0
    report = json.loads((run / "forgetting" / "report.json").read_text())
    assert (run / "forgetting" / "report.png").stat().st_size > 10_000
    assert [h["step"] for h in report["history"]] == [0, 8, 16]

    # the start is the base checkpoint's weights: its separate evaluation on the general data
    def general_eval(ckpt_path: str, out: Path) -> dict:
        cfg = compose_config(
            "eval",
            [
                f"ckpt_path={ckpt_path}",
                "data_from_run=false",
                "run_test=false",
                *synthetic_overrides(jsonl_corpus)[:5],
            ],
            output_dir=out,
        )
        return evaluate(cfg)

    start = general_eval(ckpt, tmp_path / "e0")
    assert report["base_ppl"]["general"] == pytest.approx(start["val/ppl"], rel=1e-5)
    end = general_eval(s["paths"]["last_ckpt"], tmp_path / "e1")
    final = report["final"]
    assert final["forget/general/ppl"] == pytest.approx(end["val/ppl"], rel=1e-5)
    assert final["forget/general/ppl_ratio"] == pytest.approx(
        end["val/ppl"] / start["val/ppl"], rel=1e-5
    )
    assert final["forget/general/kl_to_base"] > 0
    # the domain side equals the run's own val/ppl at that step
    assert final["forget/domain/ppl"] == pytest.approx(
        _rows(s["paths"]["metrics_csv"], "val/ppl")[15], rel=1e-5
    )
    assert final["forget/domain/gain"] == pytest.approx(1 - final["forget/domain/ppl_ratio"])
    logged = _rows(s["paths"]["metrics_csv"], "forget/general/ppl_ratio")
    assert logged[16] == pytest.approx(final["forget/general/ppl_ratio"], rel=1e-5)
    assert _rows(s["paths"]["metrics_csv"], "train/kl") and _rows(
        s["paths"]["metrics_csv"], "train/l2sp"
    )

    card = json.loads((run / "export" / "fmlab_card.json").read_text())
    assert card["continued_from"] == ckpt and card["lineage"] == [ckpt]
    assert card["data_cutoff"] == "2025-01-31" and card["data_cutoff_source"].startswith("given")
    seen = {k: v["tokens_seen"] for k, v in card["data_by_source"].items()}
    assert seen == {"code": 16 * 6 * 64, "general": 16 * 2 * 64}  # 25% replay, exactly
    assert card["data_mixture"]["shares"] == {"code": 0.75, "general": 0.25}


def test_init_from_starts_afresh_where_ckpt_path_resumes(base, jsonl_corpus, tmp_path):
    ckpt = base["paths"]["last_ckpt"]
    data = [*synthetic_overrides(jsonl_corpus), "run_test=false", "export.hf=false"]
    # which=last: a resumed copy of another run would otherwise look for that run's pruned best
    data.append("export.which=last")
    resumed = run_train(tmp_path / "r", *data, f"ckpt_path={ckpt}", "trainer.max_steps=34")
    fresh = run_train(tmp_path / "f", *data, f"init_from={ckpt}", "trainer.max_steps=4")
    scratch = run_train(tmp_path / "s", *data, "trainer.max_steps=4")
    csv_of = lambda s: s["paths"]["metrics_csv"]
    # ckpt_path: optimizer, schedule, step and data position continue (steps 30..33)
    assert sorted(_rows(csv_of(resumed), "train/loss")) == [30, 31, 32, 33]
    assert resumed["tokens_seen"] == 34 * 16 * 64
    # init_from: weights only; steps, tokens and LR warmup start again
    assert sorted(_rows(csv_of(fresh), "train/loss")) == [0, 1, 2, 3]
    assert fresh["tokens_seen"] == 4 * 16 * 64
    lr = _rows(csv_of(fresh), "lr-AdamW/pg1")
    assert lr[0] == pytest.approx(3e-3 / 5)  # warmup step 1 of 5 (debug=fast), again
    first = _rows(csv_of(fresh), "train/loss")[0]
    assert first < _rows(csv_of(scratch), "train/loss")[0] - 1.0  # trained weights, not random
    assert math.isfinite(first)
    # the checkpoint itself is untouched by both
    assert torch.load(ckpt, weights_only=True, map_location="cpu")["global_step"] == 30


def test_bad_init_from_fails_before_reading_data(tmp_path):
    with pytest.raises(ConfigError, match="init_from: no model at"):
        resolve_init(str(tmp_path / "missing.ckpt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="init_from: no model at .*empty"):
        resolve_init(str(tmp_path / "empty"))
    cfg = compose_config("train", ["data=mixture", "data.replay=1.5"], output_dir=tmp_path)
    from fmlab.config import validate_config

    with pytest.raises(ConfigError, match=r"data.replay: Input should be less than 1"):
        validate_config(cfg)
