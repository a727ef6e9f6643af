"""Training throughput (``perf/tokens_per_s``, ``perf/mfu``, a sliding window) and peak memory."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Annotated, Any

import lightning as L
import torch
from pydantic import Field

from fmlab.bench.flops import device_peak_flops, flops_counter
from fmlab.bench.measure import PeakMemory
from fmlab.modules.causal_lm import batch_tokens
from fmlab.modules.logsteps import logs_this_step

__all__ = ["Throughput"]

log = logging.getLogger(__name__)


def _matmul_dtype(precision: str) -> torch.dtype:
    """The dtype matmuls run in under a Lightning precision setting."""
    if precision.startswith("bf16"):
        return torch.bfloat16
    return torch.float16 if precision.startswith("16") else torch.float32


def _count(batch: Any) -> torch.Tensor | int:
    """Real tokens of a batch without a host sync: a 0-d device tensor for a padding mask."""
    mask = batch.get("attention_mask") if isinstance(batch, dict) else None
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        return mask.sum()  # (B, T) → () on the batch's device; read at the next logging step
    return batch_tokens(batch)


class Throughput(L.Callback):
    """Measures training tokens/s (excluding validation), MFU and peak memory during training.

    The clock runs from one training batch end to the next, so data loading counts (a starving
    DataLoader shows up as lower throughput) but validation does not. Peak memory is this run's
    own: CUDA allocations since training started on a GPU, else the resident set's high-water
    mark since training started (Linux ``VmHWM``, reset at train start; elsewhere sampled at
    each step), so runs of a sequential sweep in one process do not inherit a peak.

    ``perf/mfu`` is model FLOPs utilisation over the same window: tokens/s × training FLOPs per
    token (PaLM convention, :func:`fmlab.bench.flops.model_flops_per_token`, at the batch's
    sequence length) ÷ (peak FLOP/s × world size). The peak is the datasheet value of known GPUs
    for the run's precision; on a CPU it is an fp32 matmul measured once per process (~0.2 s at
    the start of training), so CPU MFU is a share of what a dense matmul reaches here, not of a
    datasheet peak. ``peak_flops`` or the environment variable ``FMLAB_PEAK_FLOPS`` override it.

    Cost: both metrics are logged only on the steps the loggers write (``log_every_n_steps``;
    the progress bar keeps the last value), and token counts of padded batches stay on the
    device until then, so no per-step host synchronisation or host-to-device copy is added.

    Args:
        window: Number of recent steps in the logged moving average.
        peak_flops: Device peak FLOP/s per process for MFU (None: automatic, see above).
    """

    def __init__(
        self,
        window: Annotated[int, Field(gt=0)] = 20,
        peak_flops: Annotated[float, Field(gt=0)] | None = None,
    ) -> None:
        self.window = window
        self.peak_flops = peak_flops
        self.train_time = 0.0
        self._tokens = 0
        self._unread: torch.Tensor | int = 0  # counted on the device, not yet read
        self._recent: deque[tuple[float, torch.Tensor | int]] = deque(maxlen=window)
        self._mark: float | None = None
        self._cuda: torch.device | None = None
        self._memory = PeakMemory("cpu")
        self._peak: float | None = None  # device peak FLOP/s, resolved at train start
        self._flops: dict[int, float] = {}  # training FLOPs per token, per sequence length
        self._counter: Callable[[int], float] | None = None  # made at train start

    @property
    def tokens(self) -> int:
        """Training tokens counted so far (all ranks)."""
        self._tokens += int(self._unread)
        self._unread = 0
        return self._tokens

    @property
    def tokens_per_s(self) -> float:
        """Average over all training steps of this process's run (0 before the first step)."""
        return self.tokens / self.train_time if self.train_time > 0 else 0.0

    @property
    def peak_rss_mb(self) -> float:
        """Largest resident set size (MiB) since training started."""
        return self._memory.peak_mb() + self._memory.base_mb

    def peak_memory(self) -> dict[str, Any]:
        """``peak_mem_mb`` and what it measures (``cuda_allocated`` or ``cpu_rss``)."""
        if self._cuda is not None:
            mb = torch.cuda.max_memory_allocated(self._cuda) / 2**20
            return {"peak_mem_mb": mb, "peak_mem_kind": "cuda_allocated"}
        return {"peak_mem_mb": self.peak_rss_mb, "peak_mem_kind": "cpu_rss"}

    def _restart_clock(self, *_: Any) -> None:
        self._mark = time.perf_counter()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            self._cuda = pl_module.device
            torch.cuda.reset_peak_memory_stats(self._cuda)
        self._memory.start()
        self._peak = self.peak_flops
        if self._peak is None:
            try:
                dtype = _matmul_dtype(str(trainer.precision))
                self._peak = device_peak_flops(pl_module.device, dtype)
            except ValueError as err:  # an unknown GPU: tokens/s still logged
                log.warning("perf/mfu is not logged: %s", err)
        self._counter, self._flops = None, {}
        if self._peak:
            try:  # walks the model's modules: here, not inside a timed training step
                self._counter = flops_counter(getattr(pl_module, "model", pl_module))
            except (AttributeError, ValueError) as err:  # not a HF-config model
                log.warning("perf/mfu is not logged: %s", err)
        self._restart_clock()

    def _flops_per_token(self, seq_len: int) -> float | None:
        if self._counter is None:
            return None
        if seq_len not in self._flops:
            self._flops[seq_len] = self._counter(seq_len)
        return self._flops[seq_len]

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
        self._memory.sample()
        n = _count(batch) * trainer.world_size
        self.train_time += dt
        self._unread = self._unread + n  # device addition: no sync
        self._recent.append((dt, n))
        if not logs_this_step(trainer):
            return
        window_time = sum(t for t, _ in self._recent)
        if window_time <= 0:
            return
        rate = sum(int(k) for _, k in self._recent) / window_time  # global tokens/s
        # host tensors: a Python number would be copied to the GPU, and a progress-bar value
        # on the GPU is read back (a sync) after every step
        rate_host = torch.tensor(rate, dtype=torch.float64)
        pl_module.log(
            "perf/tokens_per_s", rate_host, on_step=True, prog_bar=True, rank_zero_only=True
        )
        ids = batch.get("input_ids") if isinstance(batch, dict) else None
        if self._peak and ids is not None:
            flops = self._flops_per_token(ids.shape[-1])
            if flops:
                mfu = rate * flops / (self._peak * trainer.world_size)
                mfu_host = torch.tensor(mfu, dtype=torch.float64)
                pl_module.log("perf/mfu", mfu_host, on_step=True, rank_zero_only=True)
