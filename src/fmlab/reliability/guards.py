"""Callbacks that keep a run from losing work: preemption checkpoints and a non-finite guard."""

from __future__ import annotations

import fcntl
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from pydantic import Field

__all__ = [
    "NonFiniteError",
    "NonFiniteGuard",
    "Preempted",
    "PreemptionCheckpoint",
    "RunDirInUse",
    "run_dir_lock",
]

log = logging.getLogger(__name__)


class Preempted(SystemExit):
    """Raised by ``train`` after a SIGTERM: the checkpoint is written, the process exits 143.

    A ``SystemExit`` so that schedulers see ``128 + SIGTERM`` (Lightning alone exits 0, which a
    scheduler reads as success) and so that code catching ``Exception`` does not swallow it.
    """

    def __init__(self, checkpoint: str | None) -> None:
        super().__init__(143)
        self.checkpoint = checkpoint


class NonFiniteError(RuntimeError):
    """The loss or the gradients became NaN/Inf and the policy says stop."""


def last_checkpoint_path(trainer: L.Trainer) -> Path:
    """The ``save_last`` callback's ``last.ckpt``: where ``ckpt_path=last`` looks."""
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.save_last and cb.dirpath:
            return Path(cb.dirpath) / f"{cb.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}"
    return Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"


class PreemptionCheckpoint(L.Callback):
    """On SIGTERM (preemption, ``scancel``, a SLURM time limit) or Ctrl-C (SIGINT), write
    ``last.ckpt`` and stop (Ctrl-C: :mod:`fmlab.reliability.interrupts`).

    Lightning's handler only sets ``trainer.received_sigterm`` and raises ``SIGTERMException`` at
    the end of the step in flight (then exits 0). This callback saves ``last.ckpt`` at the end of
    that step, at the same point as the periodic checkpoints (so resume is exact), and ``train``
    exits with 143. SLURM's requeue signal (SIGUSR1, ``auto_requeue``) stays Lightning's: it writes
    ``hpc_ckpt_<n>.ckpt`` and runs ``scontrol requeue``; on restart ``resume=auto`` takes the
    newest valid checkpoint of either kind, never an older one.
    """

    def __init__(self) -> None:
        from fmlab.reliability.interrupts import SigintHandler

        self.saved: str | None = None
        self._saved_step = -1
        self.sigint = SigintHandler()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.sigint.install(trainer)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.sigint.restore()

    def _save(self, trainer: L.Trainer) -> None:
        if trainer.global_step == 0 or self._saved_step == trainer.global_step:
            return
        path = last_checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        self.saved, self._saved_step = str(path), trainer.global_step
        log.info(
            "%s: saved %s at step %d",
            "Ctrl-C" if self.sigint.received else "SIGTERM",
            path,
            trainer.global_step,
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if getattr(trainer, "received_sigterm", False):
            self._save(trainer)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        # the signal came after this step's on_train_batch_end (e.g. during validation)
        if isinstance(exception, SIGTERMException):
            self._save(trainer)


class NonFiniteGuard(L.Callback):
    """Detects a NaN/Inf loss or gradient at the step it happens, before the weights change.

    Loss and gradients are checked together right before the optimizer step, with one host
    synchronisation per step.

    Args:
        policy: ``stop`` raises at once (no update is applied, so ``last.ckpt`` and the weights
            stay good); ``skip`` drops the update of that step and goes on, up to ``max_skips``
            steps in the whole run, then stops.
        max_skips: How many bad steps ``skip`` tolerates.
        check_grads: Also check the gradients; a finite loss with overflowing gradients is
            caught too. With fmlab's modules this reads the global gradient norm the module
            computes once per step for clipping (no second pass over the gradients).
    """

    def __init__(
        self,
        policy: Literal["stop", "skip"] = "stop",
        max_skips: Annotated[int, Field(ge=0)] = 10,
        check_grads: bool = True,
    ) -> None:
        self.policy = policy
        self.max_skips = max_skips
        self.check_grads = check_grads
        self.skipped = 0
        self._bad: str | None = None
        self._losses: list[torch.Tensor] = []  # this optimizer step's (micro-batch) losses
        self._batch: Any = None

    def on_train_batch_start(self, trainer, pl_module, batch: Any, batch_idx: int) -> None:
        self._batch = batch

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        # kept on the device and checked with the gradients before the update: one host sync
        # per step, after backward (a sync here would stall a GPU between forward and backward)
        self._losses.append(loss.detach())

    def _find_bad(self, pl_module: L.LightningModule, optimizer: Any) -> str | None:
        losses, self._losses = self._losses, []
        values = [loss.float() for loss in losses]  # () each
        if self.check_grads:
            norm = _grad_norm(pl_module, optimizer).float()
            values.append(norm.to(values[0].device) if values else norm)
        finite = torch.isfinite(torch.stack(values)).tolist() if values else []  # the host sync
        for loss, ok in zip(losses, finite, strict=False):
            if not ok:
                bad = f"train/loss is {float(loss)}"
                labels = self._batch.get("labels") if isinstance(self._batch, dict) else None
                if labels is not None and bool((labels[:, 1:] == -100).all()):
                    bad += " (the batch has no target tokens: every label is -100)"
                return bad
        if not all(finite):
            return "a gradient is NaN/Inf (the loss was finite)"
        return None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self._bad = self._find_bad(pl_module, optimizer)
        # Several ranks take one decision: each sees only its own rows' loss and, under FSDP, its
        # own shard of the gradients. A rank stopping alone leaves the others waiting in the
        # next collective forever; a rank skipping alone lets the replicas diverge.
        if trainer.world_size > 1 and trainer.strategy.reduce_boolean_decision(
            self._bad is not None, all=False
        ):
            self._bad = self._bad or "a NaN/Inf loss or gradient on another rank"
        if self._bad is None:
            return
        if self.policy == "stop":
            self._stop(trainer)
        self.skipped += 1
        if self.skipped > self.max_skips:
            self._stop(trainer, f"; {self.skipped} bad steps exceed max_skips={self.max_skips}")
        log.warning(
            "step %d: %s; update skipped (%d so far)", trainer.global_step, self._bad, self.skipped
        )
        for p in pl_module.parameters():  # optimizers leave parameters without a grad untouched
            p.grad = None
        pl_module.log("train/skipped_steps", float(self.skipped), on_step=True)

    def _stop(self, trainer: L.Trainer, extra: str = "") -> None:
        last = last_checkpoint_path(trainer)
        # (exists: a sharded FSDP checkpoint is a directory)
        keep = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint yet"
        raise NonFiniteError(
            f"step {trainer.global_step} (epoch {trainer.current_epoch}): {self._bad}{extra}. "
            f"No update was applied; {keep}. Lower optim.lr, check the data, or set "
            "callbacks.nan_guard.policy=skip to drop such steps."
        )

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))


def _grad_norm(pl_module: L.LightningModule, optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """The global gradient norm: the one the module also clips with (``CausalLMModule.grad_norm``,
    computed once per step), else computed here.

    It is finite exactly when every gradient is, except when the sum of squares leaves float
    range (a norm above ~1e19): then clipping would turn the update into zero anyway.
    """
    shared = getattr(pl_module, "grad_norm", None)
    if callable(shared):
        return shared()
    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    return torch.nn.utils.get_total_norm(grads)  # tensor(0.) without gradients


class RunDirInUse(RuntimeError):
    """Another live fmlab process is writing into this run directory."""


@contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` for the whole run.

    Two runs (or sweeps) pointed at one directory would overwrite each other's checkpoints and
    logs; the second one stops at once with a clear error instead. The lock is ``flock`` on
    ``<run_dir>/.fmlab.lock``: the kernel releases it when the process dies, even by SIGKILL, so
    a killed run never leaves a stale lock. Ranks other than 0 of a distributed job share the
    directory and do not lock.
    """
    ranks = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")
    if any(os.environ.get(v, "0") not in ("", "0") for v in ranks):
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    fh = open(run_dir / ".fmlab.lock", "a+")  # noqa: SIM115 (held for the run's lifetime)
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        owner = fh.read().strip() or "unknown"
        fh.close()
        raise RunDirInUse(
            f"{run_dir} is in use by another fmlab run ({owner}); give this run its own "
            "hydra.run.dir (the default is unique per start), or wait for that run to end"
        ) from None
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        fh.flush()
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()
