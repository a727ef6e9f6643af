"""Multi-task training end to end: a generative, a classification and a regression task on one
backbone; per-task metrics, export with heads, per-task inference (Python and CLI), exact
resume of the task sampler, adapters (LoRA, ReFT) under heads, config errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import FAST, run_train

from fmlab.config import ConfigError, compose_config
from fmlab.predict import load_multitask
from fmlab.tasks import generate_task

pytestmark = pytest.mark.slow


def _tasks(*names: str, scratch: bool = True) -> list[str]:
    """Multi-task overrides with small splits (fast preparation and evaluation)."""
    sizes = (("train", 400), ("val", 48), ("test", 48))
    return [
        "data=multitask",
        f"task=[{','.join(names)}]",
        *(["tokenizer.vocab_size=300"] if scratch else []),  # a tokenizer trained on the tasks
        *(f"task.{t}.n_{s}={n}" for t in names for s, n in sizes),
        *(["task.logic.exact_match_examples=16"] if "logic" in names else []),
        "trainer.limit_val_batches=1.0",
        "trainer.limit_test_batches=1.0",
    ]


TASKS = _tasks("logic", "topic", "count")


def _losses(run_dir: Path) -> dict[int, dict[str, str]]:
    """Per step: which task's loss was logged and its exact string."""
    out: dict[int, dict[str, str]] = {}
    with (run_dir / "csv" / "metrics.csv").open() as fh:
        for row in csv.DictReader(fh):
            for key, value in row.items():
                if (
                    key.startswith("train/")
                    and key.count("/") == 2
                    and key.endswith("/loss")
                    and value
                ):
                    out.setdefault(int(row["step"]), {})[key] = value
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("mt")
    summary = run_train(out, *TASKS, "trainer.max_steps=60", "trainer.val_check_interval=30")
    return out, summary


def test_per_task_metrics_export_and_predictions_agree(run):
    out, summary = run
    for split in ("val", "test"):
        for key in (
            "logic/loss",
            "logic/ppl",
            "logic/exact_match",
            "topic/accuracy",
            "topic/f1",
            "count/mse",
            "count/pearson",
        ):
            assert f"{split}/{key}" in summary, key
        assert f"{split}/score" in summary and f"{split}/loss" in summary
    losses = [summary[f"val/{t}/loss"] for t in ("logic", "topic", "count")]
    assert summary["val/loss"] == pytest.approx(sum(losses) / 3, rel=1e-5)
    # the sampler trained every task in proportion (equal sizes: a third each, within one batch)
    assert summary["data"]["sampling"]["shares"] == pytest.approx(
        {"logic": 1 / 3, "topic": 1 / 3, "count": 1 / 3}
    )
    per_step = _losses(out)
    assert all(len(v) == 1 for v in per_step.values())  # one task per step
    seen = [next(iter(v)) for _, v in sorted(per_step.items())]
    assert {k: seen.count(k) for k in set(seen)} == {
        "train/logic/loss": 20,
        "train/topic/loss": 20,
        "train/count/loss": 20,
    }
    # learning: the count head beats predicting the mean (mse of the constant = variance)
    assert summary["val/count/pearson"] > 0.3

    # the export (backbone + heads) reproduces the validation metrics of the evaluated checkpoint
    mt = load_multitask(out)
    assert set(mt.tasks) == {"logic", "topic", "count"}
    val = generate_task("classify", n_train=400, n_val=48, n_test=48, seed=1234)["validation"]
    preds = mt.predict("topic", [r["input"] for r in val])
    accuracy = sum(p["index"] == r["label"] for p, r in zip(preds, val)) / len(val)
    assert accuracy == pytest.approx(summary["val/topic/accuracy"], abs=1e-6)
    assert set(preds[0]["probs"]) == {"sports", "science", "food", "music"}
    assert sum(preds[0]["probs"].values()) == pytest.approx(1.0, abs=1e-5)


def test_predict_cli(run, tmp_path):
    out, _ = run
    cmd = [
        sys.executable,
        "-m",
        "fmlab.predict",
        f"model_path={out}",
        "head=count",
        'inputs=["bread soup and spice","the big team"]',
        f"hydra.run.dir={tmp_path}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [r["input"] for r in rows] == ["bread soup and spice", "the big team"]
    assert all(isinstance(r["value"], float) for r in rows)
    from fmlab.predict import predict

    cfg = compose_config(
        "predict", [f"model_path={out}", "head=nope", "inputs=[x]"], output_dir=tmp_path
    )
    with pytest.raises(ConfigError, match=r"head=nope: .* has tasks \['logic', 'topic', 'count'\]"):
        predict(cfg)


def test_resume_restores_the_task_sampler(tmp_path):
    common = [
        *_tasks("topic", "count"),
        "scheduler=constant",  # the first run stops early: its LR must not depend on max_steps
        "data.sampling=weights",
        "task.topic.sampling_weight=3",
        "export.hf=false",
        "run_test=false",
        "trainer.val_check_interval=100",
    ]
    full = tmp_path / "full"
    run_train(full, *common, "trainer.max_steps=16")
    first = tmp_path / "first"
    run_train(
        first, *common, "trainer.max_steps=7", "callbacks.checkpoint_last.every_n_train_steps=7"
    )
    resumed = tmp_path / "resumed"
    run_train(resumed, *common, "trainer.max_steps=16", f"ckpt_path={first}")
    reference, after = _losses(full), _losses(resumed)
    assert sorted(after) == list(range(7, 16))
    assert {s: after[s] for s in after} == {s: reference[s] for s in after}  # same task, same loss
    topic = sum("train/topic/loss" in v for v in reference.values())
    assert topic == 12  # weights 3:1 over 16 steps


@pytest.mark.parametrize("method", ["lora", "loreft"])
def test_heads_train_with_adapters(method, run, tmp_path):
    base = run[0] / "export"  # the multi-task run's backbone, as a pretrained model
    summary = run_train(
        tmp_path,
        *_tasks("topic", "logic", scratch=False),
        f"method={method}",
        "model=pretrained",
        f"model.name_or_path={base}",
        "module.weighting=uncertainty",
        "trainer.max_steps=8",
        "trainer.val_check_interval=8",
        "run_test=false",
    )
    assert summary["params_trainable"] < summary["params_total"]
    heads = tmp_path / "export" / "heads"
    assert (heads / "heads.safetensors").is_file()
    mt = load_multitask(tmp_path)
    kind = {"lora": "PeftModel", "loreft": "ReftModel"}[method]
    assert type(mt.model).__name__.startswith(kind)
    # adapter/interventions + heads reloaded reproduce the evaluated checkpoint's accuracy
    val = generate_task("classify", n_train=400, n_val=48, n_test=48, seed=1234)["validation"]
    preds = mt.predict("topic", [r["input"] for r in val])
    accuracy = sum(p["index"] == r["label"] for p, r in zip(preds, val)) / len(val)
    assert accuracy == pytest.approx(summary["val/topic/accuracy"], abs=1e-6)


def test_bad_task_config_fails_before_training(tmp_path):
    from fmlab.train import train

    cfg = compose_config("train", [*FAST, *TASKS, "+task.topic.lables=[a,b]"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"data\.tasks: topic\.lables: Extra inputs"):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()
