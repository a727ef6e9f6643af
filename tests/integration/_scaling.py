"""Shared by the multi-process tests (test_ddp, test_fsdp, test_torchrun): one recipe for a tiny
distributed run, and the single-process reference over the same global batches."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import FAST, ROOT, run_train, synthetic_overrides

STEPS = 8  # optimizer steps per run; checkpoints at 4 and 8
ROWS = 8  # rows per rank and step: 2 ranks x 8 = the reference's 16
TOKENS = 64  # block size of synthetic_overrides

# Every run: constant LR (after warm-up), no test split, and two extra recorders: each rank's
# loss per step (tests.helpers.RankLosses), and a checkpoint kept at every 4th step (step4.ckpt)
# to resume from. The values written to metrics.csv are rank 0's alone.
RECIPE = [
    "scheduler=constant",
    "run_test=false",
    f"trainer.max_steps={STEPS}",
    "callbacks.checkpoint_last.every_n_train_steps=4",
    "callbacks.checkpoint_last.save_top_k=-1",  # keep step4.ckpt beside last.ckpt
    "+callbacks.checkpoint_last.filename='step{step}'",
    "+callbacks.checkpoint_last.auto_insert_metric_name=false",
    "+callbacks.rank_losses._target_=tests.helpers.RankLosses",
    "+callbacks.rank_losses.out_dir=${paths.output_dir}",
]


def overrides(jsonl: Path, *extra: str, rows: int = ROWS) -> list[str]:
    return [*FAST, *synthetic_overrides(jsonl), *RECIPE, f"data.batch_size={rows}", *extra]


def run(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``cmd`` from the repository root; fail the test with its output if it fails."""
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-6000:])
    return proc


def train_process(jsonl: Path, run_dir: Path, *extra: str) -> dict:
    """``python -m fmlab.train`` (Lightning launches the other ranks) into ``run_dir``."""
    run(
        [sys.executable, "-m", "fmlab.train", *overrides(jsonl, *extra), f"hydra.run.dir={run_dir}"]
    )
    return json.loads((run_dir / "summary.json").read_text())


def csv_losses(run_dir: Path) -> dict[int, float]:
    with (run_dir / "csv" / "metrics.csv").open() as fh:
        return {
            int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(fh) if r["train/loss"]
        }


def rank_losses(run_dir: Path, world: int = 2) -> list[dict[int, float]]:
    """Each rank's loss per step, as written by tests.helpers.RankLosses."""
    out = []
    for r in range(world):
        raw = json.loads((run_dir / f"losses_rank{r}.json").read_text())
        out.append({int(k): v for k, v in raw.items()})
    return out


def global_losses(run_dir: Path, world: int = 2) -> dict[int, float]:
    """The loss over the global batch: the mean of the ranks' (equal-sized, unpadded) losses."""
    per_rank = rank_losses(run_dir, world)
    return {s: sum(r[s] for r in per_rank) / world for s in per_rank[0]}


def single_process_reference(tmp_path_factory: pytest.TempPathFactory, jsonl: Path) -> Path:
    """One process, 16 rows per step: the same global batches as 2 ranks x 8 (the samplers give
    rank r every world-th index of one permutation). Trained once per test session, in-process."""
    run_dir = tmp_path_factory.getbasetemp() / "single-process-1x16"
    if not (run_dir / "summary.json").is_file():
        run_train(run_dir, *overrides(jsonl, rows=2 * ROWS)[len(FAST) :])
    return run_dir
