"""Training throughput: tokens/s over a sliding window, logged as ``perf/tokens_per_s``."""

from __future__ import annotations

import time
from collections import deque
from typing import Annotated, Any

import lightning as L
from pydantic import Field

from fmlab.modules.causal_lm import batch_tokens

__all__ = ["Throughput"]


class Throughput(L.Callback):
    """Measures training tokens/s, excluding time spent in validation.

    The clock runs from one training batch end to the next, so data loading counts (a starving
    DataLoader shows up as lower throughput) but validation does not.

    Args:
        window: Number of recent steps in the logged moving average.
    """

    def __init__(self, window: Annotated[int, Field(gt=0)] = 20) -> None:
        self.window = window
        self.train_time = 0.0
        self.tokens = 0
        self._recent: deque[tuple[float, int]] = deque(maxlen=window)
        self._mark: float | None = None

    @property
    def tokens_per_s(self) -> float:
        """Average over all training steps of this process's run (0 before the first step)."""
        return self.tokens / self.train_time if self.train_time > 0 else 0.0

    def _restart_clock(self, *_: Any) -> None:
        self._mark = time.perf_counter()

    on_train_start = _restart_clock
    on_validation_end = _restart_clock

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        now = time.perf_counter()
        if self._mark is None:
            self._mark = now
            return
        dt, self._mark = now - self._mark, now
        n = batch_tokens(batch) * trainer.world_size
        self.train_time += dt
        self.tokens += n
        self._recent.append((dt, n))
        window_time = sum(t for t, _ in self._recent)
        if window_time > 0:
            rate = sum(k for _, k in self._recent) / window_time
            pl_module.log(
                "perf/tokens_per_s", rate, on_step=True, prog_bar=True, rank_zero_only=True
            )
