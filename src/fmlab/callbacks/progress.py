"""Progress toward ``max_steps`` (not per epoch), and warnings about what a run will never do.

On a terminal, one live line on stderr, redrawn at most every ``refresh_s``::

    step 120/600 ━━━━━━───────────────── 20% 0:01:02<0:04:10 loss 3.214 12.3k tok/s

and a permanent line after each validation (``step 200: val/loss 3.102 ...``). Without a
terminal (a file, a pipe, a SLURM log) the same progress text is logged every ``log_every_s``
instead, so logs do not fill with carriage returns. ``train.log`` always gets the periodic lines.

Per-step cost: one clock read and a comparison; everything else happens at a refresh.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Annotated

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, ProgressBar
from pydantic import Field

from fmlab.utils.printing import live

__all__ = ["StepProgress", "schedule_warnings"]

log = logging.getLogger("fmlab.progress")


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _rate(tokens_per_s: float) -> str:
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if tokens_per_s >= scale:
            return f"{tokens_per_s / scale:.1f}{unit} tok/s"
    return f"{tokens_per_s:.0f} tok/s"


def _bar(fraction: float, width: int = 24) -> str:
    full = int(fraction * width)
    return "━" * full + "─" * (width - full)


def _metric(trainer: L.Trainer, name: str) -> float | None:
    value = trainer.callback_metrics.get(name)
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


class StepProgress(ProgressBar):
    """Optimizer steps toward ``trainer.max_steps`` with ETA, loss and tokens/s.

    Args:
        refresh_s: Least time between two redraws of the live line.
        log_every_s: Time between two logged progress lines (``train.log``; also the console
            when it is not a terminal).
    """

    def __init__(
        self,
        refresh_s: Annotated[float, Field(gt=0)] = 0.5,
        log_every_s: Annotated[float, Field(gt=0)] = 60.0,
    ) -> None:
        super().__init__()
        self.refresh_s, self.log_every_s = refresh_s, log_every_s
        self._enabled = True
        self._next_draw = self._next_log = 0.0
        self._t0 = 0.0
        self._step0 = self._tokens0 = 0
        self._last: tuple[float, int] = (0.0, 0)  # (time, tokens) at the previous refresh
        self._tok_s: float | None = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _total(self, trainer: L.Trainer) -> float:
        if trainer.max_steps and trainer.max_steps > 0:
            return float(trainer.max_steps)
        total = trainer.estimated_stepping_batches
        return float(total) if total and math.isfinite(total) else math.inf

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        now = time.monotonic()
        self._t0, self._next_draw, self._next_log = now, now, now + self.log_every_s
        self._step0 = trainer.global_step
        self._tokens0 = int(getattr(pl_module, "tokens_seen", 0) or 0)
        self._last = (now, self._tokens0)

    def text(self, trainer: L.Trainer, pl_module: L.LightningModule) -> str:
        """The progress line as of now."""
        now = time.monotonic()
        step, total = trainer.global_step, self._total(trainer)
        done = step - self._step0
        elapsed = now - self._t0
        eta = (total - step) * elapsed / done if done > 0 else math.inf
        parts = [f"step {step}/{int(total) if math.isfinite(total) else '?'}"]
        if math.isfinite(total):
            parts.append(f"{_bar(min(step / total, 1.0))} {100 * step / total:3.0f}%")
        parts.append(f"{_duration(elapsed)}<{_duration(eta)}")
        if (loss := _metric(trainer, "train/loss")) is not None:
            parts.append(f"loss {loss:.4g}")
        tokens = getattr(pl_module, "tokens_seen", None)
        if tokens is not None and now > self._last[0]:
            rate = (int(tokens) - self._last[1]) / (now - self._last[0])
            self._tok_s = rate if self._tok_s is None else 0.5 * self._tok_s + 0.5 * rate
            self._last = (now, int(tokens))
        if self._tok_s:
            parts.append(_rate(self._tok_s))
        if (val := _metric(trainer, "val/loss")) is not None:
            parts.append(f"val/loss {val:.4g}")
        return " ".join(parts)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.monotonic()
        if not self._enabled or now < self._next_draw or not trainer.is_global_zero:
            return
        self._next_draw = now + self.refresh_s
        text = self.text(trainer, pl_module)
        live.show(text)
        if now >= self._next_log:
            self._next_log = now + self.log_every_s
            log.info("%s", text, extra={"fmlab_shown": live.active})

    def _show_eval(self, trainer: L.Trainer, what: str, batch_idx: int) -> None:
        now = time.monotonic()
        if self._enabled and now >= self._next_draw and trainer.is_global_zero:
            self._next_draw = now + self.refresh_s
            live.show(f"step {trainer.global_step}: {what} batch {batch_idx + 1}")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *_) -> None:
        self._show_eval(trainer, "validating", batch_idx)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *_) -> None:
        self._show_eval(trainer, "testing", batch_idx)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._enabled or trainer.sanity_checking or not trainer.is_global_zero:
            return
        live.clear()
        if trainer.state.fn != "fit":
            return
        shown = {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith("val/") and getattr(v, "numel", lambda: 1)() == 1
        }
        values = " ".join(f"{k} {v:.4g}" for k, v in sorted(shown.items()))
        log.info("step %d: %s", trainer.global_step, values or "validated")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        live.clear()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        live.clear()
        if self._enabled and trainer.is_global_zero:
            elapsed = time.monotonic() - self._t0
            steps = trainer.global_step - self._step0
            log.info("trained %d steps in %s", steps, _duration(elapsed))

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        live.clear()


def schedule_warnings(trainer: L.Trainer) -> list[str]:
    """What this trainer's schedule will never do: validate during training, keep a best
    checkpoint, stop early, or run callbacks that only act at validation (those that say what is
    lost in a ``without_validation`` attribute, e.g. the forgetting monitor). Logged."""
    max_steps, every = trainer.max_steps, trainer.val_check_interval
    limit = trainer.limit_val_batches
    never = None
    if limit == 0:
        never = "trainer.limit_val_batches=0"
    elif (
        isinstance(every, int) and trainer.check_val_every_n_epoch is None and 0 < max_steps < every
    ):
        never = f"trainer.max_steps={max_steps} < trainer.val_check_interval={every}"
    if never is None:
        return []
    skipped = []
    for cb in trainer.callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.monitor:
            skipped.append(f"no best checkpoint by {cb.monitor} (the last one is used)")
        elif isinstance(cb, EarlyStopping):
            skipped.append(f"no early stopping on {cb.monitor}")
        elif what := getattr(cb, "without_validation", None):  # e.g. the forgetting monitor
            skipped.append(str(what))
    message = f"this run will never validate during training ({never})"
    if skipped:
        message += ": " + "; ".join(dict.fromkeys(skipped))
    message += "; lower trainer.val_check_interval or raise trainer.max_steps"
    log.warning("%s", message)
    return [message]
