"""Training throughput (``perf/tokens_per_s``, a sliding window) and peak memory per run."""

from __future__ import annotations

import time
from collections import deque
from typing import Annotated, Any

import lightning as L
import psutil
import torch
from pydantic import Field

from fmlab.modules.causal_lm import batch_tokens

__all__ = ["Throughput"]


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


class Throughput(L.Callback):
    """Measures training tokens/s (excluding validation) and peak memory during training.

    The clock runs from one training batch end to the next, so data loading counts (a starving
    DataLoader shows up as lower throughput) but validation does not. Peak memory is this run's
    own: CUDA allocations since training started on a GPU, else the largest resident set size
    sampled at each step (so runs of a sequential sweep in one process do not inherit a peak).

    Args:
        window: Number of recent steps in the logged moving average.
    """

    def __init__(self, window: Annotated[int, Field(gt=0)] = 20) -> None:
        self.window = window
        self.train_time = 0.0
        self.tokens = 0
        self._recent: deque[tuple[float, int]] = deque(maxlen=window)
        self._mark: float | None = None
        self._cuda: torch.device | None = None
        self.peak_rss_mb = 0.0

    @property
    def tokens_per_s(self) -> float:
        """Average over all training steps of this process's run (0 before the first step)."""
        return self.tokens / self.train_time if self.train_time > 0 else 0.0

    def peak_memory(self) -> dict[str, Any]:
        """``peak_mem_mb`` and what it measures (``cuda_allocated`` or ``cpu_rss``)."""
        if self._cuda is not None:
            mb = torch.cuda.max_memory_allocated(self._cuda) / 2**20
            return {"peak_mem_mb": mb, "peak_mem_kind": "cuda_allocated"}
        return {"peak_mem_mb": self.peak_rss_mb, "peak_mem_kind": "cpu_rss"}

    def _restart_clock(self, *_: Any) -> None:
        self._mark = time.perf_counter()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restart_clock()
        if pl_module.device.type == "cuda":
            self._cuda = pl_module.device
            torch.cuda.reset_peak_memory_stats(self._cuda)
        self.peak_rss_mb = _rss_mb()

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
        if self._cuda is None:
            self.peak_rss_mb = max(self.peak_rss_mb, _rss_mb())
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
