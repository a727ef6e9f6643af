"""Exact resume after SIGKILL: the resumed run's per-step losses equal an uninterrupted run's."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tests.conftest import FAST, synthetic_overrides

pytestmark = pytest.mark.slow
MAX_STEPS = 36


def _overrides(jsonl: Path, run_dir: Path) -> list[str]:
    return [
        *FAST,
        *synthetic_overrides(jsonl),
        f"trainer.max_steps={MAX_STEPS}",
        "trainer.val_check_interval=12",
        # small corpus: epochs of ~10 steps, checkpoints every 7: the kill lands mid-epoch and
        # the resumed run crosses epoch boundaries (a new shuffle each epoch)
        "callbacks.checkpoint_last.every_n_train_steps=7",
        "data.batch_size=8",
        "data.val_fraction=0.2",
        "data.test_fraction=0.2",
        # dropout on: the resumed run must also restore the global RNG, not just the data order
        "+model.attention_dropout=0.1",
        "export.hf=false",
        "run_test=false",
        f"hydra.run.dir={run_dir}",
    ]


def _train_cmd(jsonl: Path, run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fmlab.train", *_overrides(jsonl, run_dir), *extra]


def _step_losses(run_dir: Path) -> dict[int, str]:
    """train/loss per step, as the exact strings Lightning wrote (no float rounding)."""
    with (run_dir / "csv" / "metrics.csv").open() as fh:
        return {int(r["step"]): r["train/loss"] for r in csv.DictReader(fh) if r["train/loss"]}


def _ckpt_step(path: Path) -> int | None:
    try:
        return int(torch.load(path, weights_only=True, map_location="cpu")["global_step"])
    except Exception:  # not written yet
        return None


def test_sigkill_mid_epoch_then_resume_is_bitwise_identical(small_jsonl, tmp_path):
    env = {**os.environ}
    full = tmp_path / "full"
    proc = subprocess.run(
        _train_cmd(small_jsonl, full), env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference = _step_losses(full)
    assert sorted(reference) == list(range(MAX_STEPS))

    killed = tmp_path / "killed"
    victim = subprocess.Popen(
        _train_cmd(small_jsonl, killed),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while time.time() < deadline and (_ckpt_step(last) or 0) < 14:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    step = _ckpt_step(last)
    assert step is not None and 14 <= step < MAX_STEPS - 10 and step % 10, step  # mid-epoch

    resumed = tmp_path / "resumed"
    proc = subprocess.run(
        _train_cmd(small_jsonl, resumed, f"ckpt_path={killed}"),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = _step_losses(resumed)
    assert sorted(after) == list(range(step, MAX_STEPS))
    assert {s: reference[s] for s in after} == after  # bitwise: identical float strings
