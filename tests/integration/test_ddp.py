"""A real 2-process DDP run on CPU (gloo): trains, checkpoints, resumes exactly."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import FAST, synthetic_overrides

pytestmark = pytest.mark.slow


def _run(jsonl: Path, run_dir: Path, *extra: str) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "fmlab.train",
        *FAST,
        *synthetic_overrides(jsonl),
        "trainer=ddp_cpu",
        "scheduler=constant",
        "callbacks.checkpoint_last.every_n_train_steps=4",
        "run_test=false",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((run_dir / "summary.json").read_text())


def _losses(run_dir: Path) -> dict[int, str]:
    with (run_dir / "csv" / "metrics.csv").open() as fh:
        return {int(r["step"]): r["train/loss"] for r in csv.DictReader(fh) if r["train/loss"]}


def test_ddp_two_processes_train_checkpoint_and_resume(jsonl_corpus, tmp_path):
    full = _run(jsonl_corpus, tmp_path / "full", "trainer.max_steps=12")
    assert full["global_step"] == 12
    # both ranks trained: the global token count is 2 x the per-rank batches
    assert full["tokens_seen"] == 12 * 2 * 16 * 64
    assert Path(full["paths"]["export_dir"], "model.safetensors").is_file()
    assert (tmp_path / "full" / "train_ddp_process_1.log").exists()  # rank 1 ran in the same dir

    first = _run(jsonl_corpus, tmp_path / "first", "trainer.max_steps=8", "export.hf=false")
    assert Path(first["paths"]["last_ckpt"]).is_file()
    resumed = _run(
        jsonl_corpus,
        tmp_path / "resumed",
        "trainer.max_steps=12",
        f"ckpt_path={tmp_path / 'first'}",
    )
    assert resumed["global_step"] == 12
    reference, after = _losses(tmp_path / "full"), _losses(tmp_path / "resumed")
    assert sorted(after) == [8, 9, 10, 11]
    assert {s: reference[s] for s in after} == after
    assert resumed["val/loss"] == pytest.approx(full["val/loss"], abs=1e-6)
