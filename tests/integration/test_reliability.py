"""Faults injected for real, in subprocesses: kills (twice, right after an epoch-end checkpoint,
mid checkpoint write), SIGTERM, SLURM requeue, disk full. Each resumed run must equal an
uninterrupted one step for step: loss, learning rate and epoch."""

from __future__ import annotations

import csv
import os
import resource
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.conftest import FAST, synthetic_overrides

from fmlab.reliability import inspect_checkpoint

pytestmark = pytest.mark.slow
MAX_STEPS = 36
EPOCH = 11  # steps per epoch of the small corpus at these settings (checked below)


def _cmd(jsonl: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "fmlab.train",
        *FAST,
        *synthetic_overrides(jsonl),
        f"trainer.max_steps={MAX_STEPS}",
        "trainer.val_check_interval=12",
        "data.batch_size=8",
        "data.val_fraction=0.2",
        "data.test_fraction=0.2",
        "+model.attention_dropout=0.1",  # the global RNG must be restored too
        "export.hf=false",
        "run_test=false",
        "+trainer.plugins=[{_target_: tests.helpers.SlowCheckpointIO}]",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


def _rows(run_dir: Path) -> dict[int, tuple[str, str, str]]:
    """Per step: (train/loss, learning rate, epoch) exactly as written."""
    with (run_dir / "csv" / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    losses = [r for r in rows if r["train/loss"]]
    lrs = {int(r["step"]): r["lr-AdamW/pg1"] for r in rows if r["lr-AdamW/pg1"]}
    out = {int(r["step"]): (r["train/loss"], lrs.get(int(r["step"])), r["epoch"]) for r in losses}
    assert len(out) == len(losses), "a step was logged twice"
    return out


def _wait_for(cond, what: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended (rc {proc.returncode}) before {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _step_of(path: Path) -> int:
    info = inspect_checkpoint(path)
    return info.global_step if info.ok else -1


@pytest.fixture(scope="module")
def reference(small_jsonl, tmp_path_factory) -> dict[int, tuple[str, str, str]]:
    run = tmp_path_factory.mktemp("reference")
    proc = subprocess.run(_cmd(small_jsonl, run), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _rows(run)
    assert sorted(rows) == list(range(MAX_STEPS))
    assert [rows[s][2] for s in (EPOCH - 1, EPOCH)] == ["0", "1"], "epoch length changed"
    return rows


def test_killed_twice_incl_epoch_end_and_mid_write_resumes_exactly(
    small_jsonl, tmp_path, reference
):
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    # Kill 1: right after the checkpoint written on the last batch of epoch 0 (step 11).
    victim = subprocess.Popen(
        _cmd(small_jsonl, run, f"callbacks.checkpoint_last.every_n_train_steps={EPOCH}"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_for(lambda: _step_of(last) == EPOCH, "the epoch-end checkpoint", victim)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)

    # Kill 2: the restarted run (same directory, resume=auto) stalls while writing the step-24
    # checkpoint; the previous last.ckpt (step 20) must survive and no stray file may appear.
    marker = run / "slow-write-started"
    victim = subprocess.Popen(
        _cmd(small_jsonl, run, "callbacks.checkpoint_last.every_n_train_steps=4"),
        env={**os.environ, "FMLAB_TEST_SLOW_CKPT_STEP": "24"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_for(marker.exists, "the stalled checkpoint write", victim)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    assert _step_of(last) == 20
    partial = sorted(p.name for p in (run / "checkpoints").glob("*.tmp"))
    assert partial, "the kill was meant to land mid-write"
    outside = [p for p in run.rglob("*.tmp") if p.parent != run / "checkpoints"]
    assert not outside

    proc = subprocess.run(_cmd(small_jsonl, run), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from" in proc.stdout + proc.stderr
    assert "last.ckpt (step 20)" in proc.stdout + proc.stderr
    assert not list(run.rglob("*.tmp")), "the stale temporary file was not cleaned up"
    assert _rows(run) == reference  # every step: same loss, LR and epoch, bitwise


def _fake_slurm(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    return {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_JOB_ID": "4242",
        "SLURM_NTASKS": "1",
        "SLURM_JOB_NAME": "fmlab-train",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
    }


def test_slurm_requeue_then_sigterm_resumes_from_the_newest_checkpoint(
    small_jsonl, tmp_path, reference
):
    env = _fake_slurm(tmp_path)
    run = tmp_path / "run"
    hpc = run / "hpc_ckpt_1.ckpt"
    last = run / "checkpoints" / "last.ckpt"
    progress = tmp_path / "step"
    job = subprocess.Popen(
        _cmd(
            small_jsonl,
            run,
            "callbacks.checkpoint_last.every_n_train_steps=100",
            "+callbacks.slow._target_=tests.helpers.SlowSteps",
            "+callbacks.slow.seconds=0.1",
            f"+callbacks.slow.progress_file={progress}",
        ),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def step() -> int:
        return int(progress.read_text() or 0) if progress.exists() else 0

    _wait_for(lambda: step() >= 5, "step 5", job)
    job.send_signal(signal.SIGUSR1)  # SLURM's warning before the time limit: requeue
    _wait_for(lambda: _step_of(hpc) > 0, "the requeue checkpoint", job)
    hpc_step = _step_of(hpc)
    _wait_for(lambda: step() >= hpc_step + 5, "more steps", job)
    job.send_signal(signal.SIGTERM)
    _, err = job.communicate(timeout=120)
    assert job.returncode == 143, err[-3000:]  # not 0: a scheduler must see the preemption
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    term_step = _step_of(last)
    assert MAX_STEPS > term_step > hpc_step, (hpc_step, term_step)

    # The requeued job: same command, same directory; Lightning alone would take hpc_ckpt_1
    # (older); fmlab takes the newest valid checkpoint.
    proc = subprocess.run(
        _cmd(small_jsonl, run), env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"last.ckpt (step {term_step})" in proc.stdout + proc.stderr
    assert _rows(run) == reference


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_disk_full_during_checkpoint_write_keeps_the_previous_one(small_jsonl, tmp_path):
    run = tmp_path / "run"
    short = ["trainer.max_steps=12", "callbacks.checkpoint_last.every_n_train_steps=6"]
    proc = subprocess.run(
        _cmd(small_jsonl, run, *short), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = run / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    # The next checkpoint does not fit on the "disk" (a file-size limit: the kernel refuses the
    # write exactly as on a full disk, with an OSError).
    proc = subprocess.run(
        _cmd(
            small_jsonl,
            run,
            "trainer.max_steps=24",
            "callbacks.checkpoint_last.every_n_train_steps=6",
        ),
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=_limit_file_size(len(before) // 2),
    )
    assert proc.returncode != 0
    assert f"could not write checkpoint {run / 'checkpoints'}" in proc.stderr
    assert "the previous" in proc.stderr and "is intact" in proc.stderr
    assert last.read_bytes() == before and _step_of(last) == 12
    assert not list(run.rglob("*.tmp"))


def test_disk_full_while_preparing_data_keeps_the_previous_dataset(jsonl_corpus, tmp_path):
    exe = Path(sys.executable).with_name("fmlab-prepare")
    args = [
        f"sources=[{{path: '{jsonl_corpus}', text_field: body}}]",
        f"output_dir={tmp_path / 'ds'}",
        "segment.block_size=64",
        "tokenizer.vocab_size=300",
        "print_config=false",
    ]
    env = {**os.environ, "FMLAB_CACHE_DIR": str(tmp_path / "cache")}
    first = subprocess.run(
        [str(exe), *args, f"hydra.run.dir={tmp_path / 'r1'}"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    card = (tmp_path / "ds" / "card.json").read_bytes()
    # new split settings: the pipeline writes new shards, on a "disk" with 64 KB per file
    second = subprocess.run(
        [str(exe), *args, "split.val_fraction=0.2", f"hydra.run.dir={tmp_path / 'r2'}"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        preexec_fn=_limit_file_size(64 * 1024),
    )
    assert second.returncode != 0
    assert "data preparation could not write" in second.stderr, second.stderr[-3000:]
    assert "File too large (disk full or a size quota?)" in second.stderr
    assert f"the dataset already at {tmp_path / 'ds'} is intact" in second.stderr
    assert (tmp_path / "ds" / "card.json").read_bytes() == card
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ds.")]
