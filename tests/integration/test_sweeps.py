"""Sweeps through the real console scripts: grid multirun with a failing run, fmlab-report
(selection on validation, test only for the winner), Optuna search + resume, submitit launcher,
and the multirun + DDP refusal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from tests.conftest import synthetic_overrides

from fmlab.report import main as report_main
from fmlab.report import report

pytestmark = pytest.mark.slow

QUICK = ["debug=fast", "callbacks.progress_bar=null", "export.hf=false"]


def _train_m(jsonl: Path, sweep_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("fmlab-train")
    args = [
        str(exe),
        "-m",
        *synthetic_overrides(jsonl),
        *QUICK,
        *overrides,
        f"hydra.sweep.dir={sweep_dir}",
    ]
    return subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=400,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _summaries(sweep_dir: Path) -> dict[str, dict]:
    return {
        p.parent.name: json.loads(p.read_text())
        for p in sweep_dir.glob("*/summary.json")
        if p.parent.name.isdigit()
    }


@pytest.fixture(scope="module")
def grid(jsonl_corpus, tmp_path_factory) -> Path:
    """2 learning rates x 2 seeds, plus an invalid learning rate that fails in both seeds."""
    sweep = tmp_path_factory.mktemp("grid")
    proc = _train_m(jsonl_corpus, sweep, "run_test=false", "optim.lr=1e-4,3e-3,-1", "seed=1,2")
    assert proc.returncode == 0, proc.stderr[-3000:]  # failing jobs do not stop the sweep
    return sweep


def test_failing_run_is_recorded_and_the_sweep_completes(grid):
    runs = _summaries(grid)
    assert sorted(runs) == [str(i) for i in range(6)]
    failed = {k: s for k, s in runs.items() if s["status"] == "failed"}
    assert sorted(failed) == ["4", "5"]  # optim.lr=-1, seeds 1 and 2 (the last jobs)
    for s in failed.values():
        assert s["error_type"] == "ConfigError"
        assert "optim.lr: Input should be greater than 0" in s["error"]
    for s in (s for k, s in runs.items() if k not in failed):
        assert s["status"] == "ok" and s["global_step"] == 20
        assert not [k for k in s if k.startswith("test/")]  # run_test=false: no test numbers


def test_report_selects_on_validation_and_tests_only_the_selected(grid, capsys):
    runs = _summaries(grid)
    by_lr: dict[str, list[float]] = {}
    for name, s in runs.items():
        overrides = yaml.safe_load((grid / name / ".hydra" / "overrides.yaml").read_text())
        lr = next(o for o in overrides if o.startswith("optim.lr="))
        if s["status"] == "ok":
            by_lr.setdefault(lr, []).append(s["val/loss"])
    best = min(by_lr, key=lambda k: sum(by_lr[k]) / len(by_lr[k]))

    # validation limited as in the sweep (debug=fast), so fmlab-eval's val/loss is comparable
    report_main([str(grid), "--eval-override=+trainer.limit_val_batches=4"])
    printed = capsys.readouterr().out
    result = json.loads((grid / "report" / "report.json").read_text())
    assert result["metric"] == "val/loss" and result["selected"] == [best]
    assert result["n_runs"] == 6 and result["n_failed"] == 2
    winners = next(g for g in result["groups"] if g["config"] == best)["runs"]
    assert sorted(t["run"] for t in result["test"]) == sorted(winners)  # the selected runs only
    assert {p.name for p in (grid / "report" / "test").iterdir()} == set(winners)
    for t in result["test"]:
        assert t["test/loss"] > 0
        # the checkpoint fmlab-eval loaded is the one the sweep selected on
        assert t["evaluated"] == runs[t["run"]]["evaluated_checkpoint"]
        assert t["val/loss"] == pytest.approx(runs[t["run"]]["val/loss"], rel=1e-5)
    assert "## Validation (every configuration; the only numbers used for selection)" in printed
    assert "## Test (selected configuration only" in printed
    assert "optim.lr=-1" in printed and "Input should be greater than 0" in printed
    for name in ("runs.csv", "configs.csv", "test.csv", "report.md"):
        assert (grid / "report" / name).stat().st_size > 0
    for name in ("val_by_config.png", "learning_curves.png"):
        assert (grid / "report" / name).read_bytes()[:4] == b"\x89PNG"
    configs = (grid / "report" / "configs.csv").read_text()
    assert "val/loss mean" in configs and "test/" not in configs
    with pytest.raises(ValueError, match="validation metrics only"):
        report(grid, metric="test/loss", run_test=False)


def test_optuna_search_optimises_validation_and_resumes(jsonl_corpus, tmp_path):
    study = "test_search"
    search = [
        "hparams_search=pretrain_lr",
        f"hydra.sweeper.study_name={study}",
        f"hydra.sweeper.storage={tmp_path / 'optuna.db'}",
    ]
    sweep = tmp_path / "search"
    proc = _train_m(jsonl_corpus, sweep, *search, "hydra.sweeper.n_trials=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = _summaries(sweep)
    assert sorted(runs) == ["0", "1", "2"]
    assert all(s["status"] == "ok" and "test/loss" not in s for s in runs.values())
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(min(s["val/loss"] for s in runs.values()))

    # resume: the same study, one more trial, numbered after the stored ones
    proc = _train_m(jsonl_corpus, sweep, *search, "hydra.sweeper.n_trials=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = _summaries(sweep)
    assert sorted(runs) == ["0", "1", "2", "3"]
    stored = optuna.load_study(study_name=study, storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert len(stored.trials) == 4
    for trial in stored.trials:  # each trial's value is the validation loss of its job
        assert trial.value == pytest.approx(runs[str(trial.number)]["val/loss"])
        cfg = yaml.safe_load((sweep / str(trial.number) / "config.yaml").read_text())
        assert cfg["optim"]["lr"] == pytest.approx(trial.params["optim.lr"])


def test_submitit_local_launcher_runs_a_two_job_sweep(grid, jsonl_corpus, tmp_path):
    sweep = tmp_path / "submitit"
    proc = _train_m(
        jsonl_corpus,
        sweep,
        "launcher=submitit_local",
        "run_test=false",
        "optim.lr=3e-3",
        "seed=1,2",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = _summaries(sweep)
    assert sorted(runs) == ["0", "1"] and all(s["status"] == "ok" for s in runs.values())
    assert list((sweep / ".submitit").iterdir())  # the jobs went through submitit
    # same configurations as the in-process grid (lr 3e-3, seeds 1, 2): the same numbers
    reference = {s["val/loss"] for s in _summaries(grid).values() if s["status"] == "ok"}
    for s in runs.values():
        assert any(abs(s["val/loss"] - r) < 1e-5 for r in reference), (s["val/loss"], reference)


def test_multirun_with_self_launched_ddp_is_refused(tmp_path):
    sweep = tmp_path / "ddp"
    exe = Path(sys.executable).with_name("fmlab-train")
    proc = subprocess.run(
        [str(exe), "-m", "trainer=ddp_cpu", "seed=1,2", f"hydra.sweep.dir={sweep}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "inside a Hydra multirun (-m) is refused" in proc.stderr
    assert "launcher=slurm" in proc.stderr
    assert not list(sweep.glob("*/summary.json")) and not list(sweep.glob("*/checkpoints"))
