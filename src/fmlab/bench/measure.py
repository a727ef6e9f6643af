"""What both training paths measure the same way: step clock, data wait, peak memory."""

from __future__ import annotations

import resource
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import psutil
import torch

__all__ = ["PeakMemory", "StepClock", "timed"]


def timed(iterable: Iterable[Any], clock: StepClock) -> Iterator[Any]:
    """Yield from ``iterable``, adding the time blocked in each ``next`` to ``clock``'s data wait.

    With worker processes this is the time the main process waited, not the loading time.
    """
    it = iter(iterable)
    while True:
        t0 = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            return
        clock.add_wait(time.perf_counter() - t0)
        yield item


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class StepClock:
    """Wall time of steps ``warmup+1 … warmup+steps``, marked once at the end of every step.

    The device is synchronised only at the two window edges (never per step, which would stall a
    GPU's queue), so the window is exact and per-step times are host-side marks.

    Over the same window it also counts the CPU time of the calling (main) thread and the
    process's minor page faults. On a shared machine other processes stretch wall time, but
    hardly the CPU time this thread itself spends: with one torch thread that is the whole step
    (framework overhead included), the least load-sensitive measure of host cost short of
    instruction counts.

    Args:
        warmup: Steps excluded (compilation, allocator growth, first-batch effects).
        steps: Measured steps.
        device: Synchronised at the edges when it is a CUDA device.
    """

    def __init__(self, warmup: int, steps: int, device: torch.device | str = "cpu") -> None:
        if warmup < 1 or steps < 1:
            raise ValueError("StepClock needs warmup >= 1 and steps >= 1")
        self.warmup, self.steps = warmup, steps
        self.cuda = torch.device(device).type == "cuda"
        self.done = 0
        self.marks: list[float] = []
        self.wait = 0.0  # data wait inside the window
        self.cpu_s = 0.0  # main-thread CPU time inside the window
        self.faults = 0  # minor page faults inside the window
        self._cpu_at_start = 0.0
        self._faults_at_start = 0
        self._wait_total = 0.0
        self._wait_at_start = 0.0

    def add_wait(self, seconds: float) -> None:
        self._wait_total += seconds

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def step_end(self) -> None:
        """Call once at the end of every optimizer step."""
        self.done += 1
        if self.done == self.warmup:
            self._sync()
            self.marks = [time.perf_counter()]
            self._wait_at_start = self._wait_total
            self._cpu_at_start, self._faults_at_start = time.thread_time(), _minor_faults()
        elif self.warmup < self.done <= self.warmup + self.steps:
            if self.done == self.warmup + self.steps:
                self._sync()
                self.cpu_s = time.thread_time() - self._cpu_at_start
                self.faults = _minor_faults() - self._faults_at_start
            self.marks.append(time.perf_counter())
            self.wait = self._wait_total - self._wait_at_start

    @property
    def finished(self) -> bool:
        return self.done >= self.warmup + self.steps

    @property
    def window_s(self) -> float:
        return self.marks[-1] - self.marks[0] if len(self.marks) > 1 else 0.0

    @property
    def step_times(self) -> list[float]:
        return [b - a for a, b in zip(self.marks, self.marks[1:], strict=False)]


class PeakMemory:
    """Peak memory of a stretch of code: CUDA allocations, or the CPU resident set's high-water.

    On Linux the kernel's high-water mark ``VmHWM`` is reset by writing ``5`` to
    ``/proc/self/clear_refs``, so the CPU peak is exact and costs nothing per step; elsewhere
    (or without permission) :meth:`sample` is taken at each step and the peak is the largest
    sample. Reported as the delta over the resident set at :meth:`start`, in MiB.
    """

    _CLEAR = Path("/proc/self/clear_refs")
    _STATUS = Path("/proc/self/status")

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.kind = "cuda_allocated" if self.device.type == "cuda" else "cpu_rss_delta"
        self._base = self._peak = 0.0
        self._hwm = False

    @staticmethod
    def _rss() -> float:
        return psutil.Process().memory_info().rss / 2**20

    def _vm_hwm(self) -> float:
        for line in self._STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024  # kB → MiB
        raise OSError("no VmHWM")

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device) / 2**20
            return
        self._base = self._peak = self._rss()
        try:
            self._CLEAR.write_text("5")
            self._vm_hwm()
            self._hwm = True
        except OSError:
            self._hwm = False

    def sample(self) -> None:
        """Needed only where the kernel keeps no resettable high-water mark."""
        if self.device.type != "cuda" and not self._hwm:
            self._peak = max(self._peak, self._rss())

    @property
    def base_mb(self) -> float:
        """Resident set (CPU) or allocated memory (CUDA) at :meth:`start`, MiB."""
        return self._base

    def peak_mb(self) -> float:
        """Peak memory since :meth:`start`: absolute on CUDA, the RSS growth on CPU."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        peak = self._vm_hwm() if self._hwm else self._peak
        return max(peak - self._base, 0.0)
