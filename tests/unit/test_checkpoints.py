"""Checkpoint inspection and the resume policy: corrupt, truncated, empty, missing, pickled code."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest
import torch

from fmlab.callbacks.checkpoint_io import AtomicCheckpointIO, CheckpointWriteError
from fmlab.reliability import CheckpointError, inspect_checkpoint, resolve_resume


def _ckpt(path: Path, step: int) -> Path:
    """A minimal Lightning-shaped training checkpoint (what resume needs to find in it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": {"w": torch.ones(64, 64) * step},
            "loops": {"fit_loop": {}},
            "optimizer_states": [],
            "global_step": step,
            "epoch": 0,
        },
        path,
    )
    return path


class _Evil:
    """Unpickling this runs code: a checkpoint must never be loaded with pickle's full power."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_inspect_names_what_is_wrong(tmp_path):
    good = _ckpt(tmp_path / "good.ckpt", 7)
    info = inspect_checkpoint(good)
    assert info.ok and info.global_step == 7

    assert inspect_checkpoint(tmp_path / "nope.ckpt").problem == "does not exist"
    (tmp_path / "empty.ckpt").touch()
    assert inspect_checkpoint(tmp_path / "empty.ckpt").problem == "is empty (0 bytes)"
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert "truncated or corrupt" in inspect_checkpoint(truncated).problem
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(os.urandom(4096))
    assert "truncated or corrupt" in inspect_checkpoint(garbage).problem
    torch.save({"state_dict": {}}, tmp_path / "weights.ckpt")
    assert (
        "not a Lightning training checkpoint"
        in inspect_checkpoint(tmp_path / "weights.ckpt").problem
    )
    assert inspect_checkpoint(tmp_path).problem == "is not a file"


def test_pickled_code_is_reported_never_run(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"global_step": 1, "payload": _Evil(marker)}, evil)
    info = inspect_checkpoint(evil)
    assert not info.ok and "never unpickles" in info.problem
    with pytest.raises(Exception, match="Weights only load failed"):
        AtomicCheckpointIO().load_checkpoint(evil, weights_only=False)  # forced back to True
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="evil.ckpt holds pickled objects"):
        resolve_resume(str(evil), "auto", tmp_path / "run")
    assert not marker.exists()


def test_auto_falls_back_to_newest_valid_and_says_so(tmp_path, caplog):
    run = tmp_path / "run"
    _ckpt(run / "checkpoints" / "best-step10.ckpt", 10)
    older = _ckpt(run / "checkpoints" / "best-step20.ckpt", 20)
    last = _ckpt(run / "checkpoints" / "last.ckpt", 30)
    last.write_bytes(last.read_bytes()[:100])  # a torn write from an unprotected writer
    (run / "checkpoints" / "last.ckpt.tmp").write_bytes(b"partial")
    with caplog.at_level(logging.INFO, logger="fmlab"):
        chosen = resolve_resume(None, "auto", run)
    assert chosen == str(older)
    assert "skipping" in caplog.text and "last.ckpt" in caplog.text and "truncated" in caplog.text
    assert "resuming from" in caplog.text and "(step 20)" in caplog.text
    assert not (run / "checkpoints" / "last.ckpt.tmp").exists()  # the interrupted write is gone

    # naming the corrupt file explicitly: auto falls back, off refuses with the reason
    assert resolve_resume(str(last), "auto", run) == str(older)
    with pytest.raises(CheckpointError, match=r"last\.ckpt is truncated or corrupt"):
        resolve_resume(str(last), "off", run)
    assert resolve_resume("last", "auto", run) == str(older)


def test_newest_wins_across_hpc_and_last(tmp_path):
    run = tmp_path / "run"
    hpc = _ckpt(run / "hpc_ckpt_1.ckpt", 12)
    last = _ckpt(run / "checkpoints" / "last.ckpt", 15)
    assert resolve_resume(None, "auto", run) == str(last)
    assert resolve_resume(str(run), "auto", tmp_path / "new_run") == str(last)  # another run's
    time.sleep(0.01)
    _ckpt(hpc, 18)  # a later requeue checkpoint
    assert resolve_resume(None, "auto", run) == str(hpc)


def test_must_and_fresh_start(tmp_path):
    run = tmp_path / "run"
    assert resolve_resume(None, "auto", run) is None  # nothing there: a fresh start
    assert resolve_resume(None, "off", run) is None
    with pytest.raises(CheckpointError, match="resume=must: no valid checkpoint"):
        resolve_resume(None, "must", run)
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").touch()
    assert resolve_resume(None, "auto", run) is None
    with pytest.raises(CheckpointError, match=r"last\.ckpt is empty \(0 bytes\)"):
        resolve_resume(None, "must", run)
    with pytest.raises(CheckpointError, match="ckpt_path=.*no valid checkpoint"):
        resolve_resume(str(tmp_path / "elsewhere"), "auto", run)


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    target = _ckpt(tmp_path / "checkpoints" / "last.ckpt", 5)
    before = target.read_bytes()
    io = AtomicCheckpointIO()

    def full_disk(checkpoint, fh):
        fh.write(b"x" * 1000)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io, "_write", full_disk)
    with pytest.raises(CheckpointWriteError, match=r"last\.ckpt: \[ENOSPC\] No space left"):
        io.save_checkpoint({"global_step": 6}, target)
    assert target.read_bytes() == before
    assert not list(tmp_path.rglob("*.tmp"))


def test_run_directory_is_stable_inside_a_slurm_job(monkeypatch):
    from fmlab.config.compose import _run_id

    for var in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(var, raising=False)
    assert _run_id("%Y") == time.strftime("%Y")  # outside SLURM: the start time
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert _run_id("%Y") == "slurm-4242"  # a requeued job comes back to the same directory
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert _run_id("%Y") == "slurm-77_3"
