"""Test-only callbacks, referenced from configs as ``tests.helpers.<Name>``."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import time
from pathlib import Path

import lightning as L
import torch

from fmlab.callbacks.checkpoint_io import AtomicCheckpointIO


class GradNormRecorder(L.Callback):
    """Writes the global gradient norm seen right before each optimizer step returns."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.norms: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        grads = [p.grad.detach().flatten() for p in pl_module.parameters() if p.grad is not None]
        self.norms.append(float(torch.cat(grads).norm()))
        self.path.write_text(json.dumps(self.norms))


class SlowCheckpointIO(AtomicCheckpointIO):
    """A disk that stalls mid-write from step ``FMLAB_TEST_SLOW_CKPT_STEP`` on: writes half of the
    checkpoint, touches ``<run>/slow-write-started``, then sleeps (the test kills it there)."""

    def _write(self, checkpoint, fh) -> None:
        slow_from = int(os.environ.get("FMLAB_TEST_SLOW_CKPT_STEP", "-1"))
        if slow_from < 0 or checkpoint["global_step"] < slow_from:
            return super()._write(checkpoint, fh)
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        data = buf.getvalue()
        fh.write(data[: len(data) // 2])
        fh.flush()
        Path(fh.name).parent.parent.joinpath("slow-write-started").touch()
        time.sleep(120)
        fh.write(data[len(data) // 2 :])


class PoisonAt(L.Callback):
    """Injects non-finite values for real: at the given optimizer steps, every label of the batch is
    masked (the loss is NaN: 0/0), or one gradient is set to inf after backward."""

    def __init__(
        self, labels_at: list[int] = (), grads_at: list[int] = (), rank: int | None = None
    ) -> None:
        self.labels_at, self.grads_at = set(labels_at), set(grads_at)
        self.rank = rank  # only this rank's batch (None: every rank)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.rank is not None and trainer.global_rank != self.rank:
            return
        if trainer.global_step in self.labels_at:
            batch["labels"] = torch.full_like(batch["input_ids"], -100)

    def on_after_backward(self, trainer, pl_module) -> None:
        if self.rank is not None and trainer.global_rank != self.rank:
            return
        if trainer.global_step in self.grads_at:
            p = next(p for p in pl_module.parameters() if p.grad is not None)
            p.grad.view(-1)[0] = float("inf")


class SlowSteps(L.Callback):
    """Makes each step last at least ``seconds`` and writes the current step to ``progress_file``,
    so a test can send signals at known points of a run."""

    def __init__(self, seconds: float, progress_file: str) -> None:
        self.seconds, self.progress_file = seconds, Path(progress_file)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.progress_file.write_text(str(trainer.global_step))
        time.sleep(self.seconds)  # a signal lands mid-step, as it would during forward/backward


class RankLosses(L.Callback):
    """Writes this rank's training loss per optimizer step to ``<out_dir>/losses_rank<r>.json``
    (``train/loss`` in metrics.csv is rank 0's alone): a distributed run's global-batch loss is
    the mean over ranks, comparable with a single process over the same rows."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.losses: dict[int, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses[trainer.global_step - 1] = float(outputs["loss"])
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"losses_rank{trainer.global_rank}.json"
        path.write_text(json.dumps(self.losses))


def dir_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` now (files deleted while walking are skipped)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.path.getsize(os.path.join(root, name))
    return total


class StreamProbe(L.Callback):
    """For streaming data: the size of ``cache_dir`` before and after every training step (its
    largest value so far) and a digest of every training row, per step, written to
    ``<out_dir>/probe_rank<r>.json``."""

    def __init__(self, cache_dir: str, out_dir: str) -> None:
        self.cache_dir, self.out_dir = Path(cache_dir), Path(out_dir)
        self.largest, self.samples, self.rows = 0, 0, {}

    def _sample(self) -> None:
        self.largest = max(self.largest, dir_bytes(self.cache_dir))
        self.samples += 1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._sample()
        ids = batch["input_ids"].cpu().numpy()
        self.rows[trainer.global_step] = [hashlib.sha1(r.tobytes()).hexdigest() for r in ids]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._sample()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        probe = {"largest": self.largest, "samples": self.samples, "rows": self.rows}
        (self.out_dir / f"probe_rank{trainer.global_rank}.json").write_text(json.dumps(probe))
