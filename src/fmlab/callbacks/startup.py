"""Start-up time: seconds from the process start to the first training step (``startup_s``)."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import psutil

__all__ = ["StartupTime", "process_start_time"]

# Fits already measured in this process: a later fit (the next job of a sequential sweep, a
# second run in a notebook) did not start with the process, so it gets no start-up figure.
_measured_in_process = False


def process_start_time() -> float:
    """When the operating system started this process (seconds since the epoch).

    From the kernel's record (``/proc/<pid>/stat`` on Linux, via psutil), not a timestamp taken
    by Python code: interpreter start-up and every import count.
    """
    return psutil.Process().create_time()


class StartupTime(L.Callback):
    """Measures how long a command took to reach its first training step.

    The clock starts when the process started (:func:`process_start_time`) and stops when the
    first training batch of this process begins (``on_train_batch_start``, before its forward
    pass); the process's CPU time up to that point is kept beside it. Interpreter start,
    imports, config composition and validation, data preparation (or its cache lookup), model
    building, Lightning's set-up and the sanity validation all count. A resumed run counts up
    to its first step after the resume. Each rank measures its own process; ``summary.json``
    holds rank 0's. Only the first fit of a process is measured: a second fit in the same
    process (sweep jobs run one after another, a notebook) did not start with the process, and
    reports nothing.
    """

    def __init__(self) -> None:
        self.startup_s: float | None = None
        self.cpu_s: float | None = None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        global _measured_in_process
        if self.startup_s is not None or _measured_in_process:
            return
        _measured_in_process = True
        self.startup_s = time.time() - process_start_time()
        cpu = psutil.Process().cpu_times()
        self.cpu_s = cpu.user + cpu.system

    def summary(self) -> dict[str, float]:
        """``startup_s`` (wall) and ``startup_cpu_s`` (this process's CPU time until then, which
        swings less with the machine's load) for summary.json; empty when nothing was measured."""
        if self.startup_s is None or self.cpu_s is None:
            return {}
        return {"startup_s": round(self.startup_s, 3), "startup_cpu_s": round(self.cpu_s, 3)}
