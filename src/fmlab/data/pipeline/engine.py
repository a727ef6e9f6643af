"""How stages run: fingerprints, cached stage directories, Arrow files, parallel batch maps.

Every stage writes its output as an Arrow IPC stream (read back memory-mapped, so a corpus larger
than RAM is fine) plus ``stats.json`` into ``<work_dir>/stages/<name>-<fingerprint>/``. The
fingerprint chains the previous stage's fingerprint with this stage's settings and code version, so
changing one stage reruns it and everything after it, and an unchanged pipeline is a no-op. A
stage directory appears by an atomic rename only when complete.

Row-local work runs in ``num_proc`` forked worker processes over batches of ``batch_size`` rows,
with a bounded number of batches in flight; results come back in order.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import resource
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from fmlab.utils import write_json

__all__ = ["ArrowSink", "Runner", "Stage", "cpu_seconds", "fingerprint", "read_table"]

PIPELINE_VERSION = 1


def fingerprint(*parts: Any) -> str:
    """Stable 16-hex-digit hash of JSON-able parts."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()[:16]


class Stage:
    """A pipeline stage: its settings (the fingerprint and the card show them) and an on/off
    switch. Subclasses define ``name``, bump ``version`` when their output changes, and
    implement ``run``."""

    name: ClassVar[str] = "stage"
    version: ClassVar[int] = 1

    def __init__(self, enabled: bool = True, **params: Any) -> None:
        self.enabled = enabled
        self.params = params

    def fingerprint(self, previous: str, *extra: Any) -> str:
        """Fingerprint of this stage's output given the previous stage's."""
        if not self.enabled:
            return previous
        return fingerprint(PIPELINE_VERSION, previous, self.name, self.version, self.params, extra)

    def describe(self) -> dict[str, Any]:
        return {"enabled": self.enabled, **self.params}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.describe().items())
        return f"{type(self).__name__}({args})"


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (worker pools end with each map).

    Unlike wall time it does not grow when other jobs share the machine, so stage costs stay
    comparable between runs.
    """
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


# ---------------------------------------------------------------------------- Arrow files
def read_table(path: str | Path) -> pa.Table:
    """Memory-mapped Arrow table of an IPC stream file (no copy into RAM)."""
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_stream(source).read_all()


class ArrowSink:
    """Append record batches to an Arrow IPC stream file (the format ``datasets`` uses)."""

    def __init__(self, path: str | Path, schema: pa.Schema) -> None:
        self.path, self.schema = Path(path), schema
        self._file = pa.OSFile(str(self.path), "wb")
        self._writer = pa.ipc.new_stream(self._file, schema)
        self.rows = 0

    def write(self, batch: pa.RecordBatch | pa.Table | dict[str, list]) -> None:
        if isinstance(batch, dict):
            batch = pa.RecordBatch.from_pydict(batch, schema=self.schema)
        if batch.num_rows:
            self._writer.write(batch)
            self.rows += batch.num_rows

    def close(self) -> None:
        self._writer.close()
        self._file.close()

    def __enter__(self) -> ArrowSink:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _to_bytes(batch: pa.RecordBatch) -> bytes:
    # pickling a sliced batch ships the whole parent buffers; IPC serialises just the slice
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def _from_bytes(blob: bytes) -> pa.RecordBatch:
    return pa.ipc.open_stream(blob).read_next_batch()


_TASK: Callable[[pa.RecordBatch], Any] | None = None


def _init_worker(task: Callable[[pa.RecordBatch], Any]) -> None:
    global _TASK
    _TASK = task


def _run_task(blob: bytes) -> Any:
    assert _TASK is not None
    return _TASK(_from_bytes(blob))


# ---------------------------------------------------------------------------- the runner
class Runner:
    """Shared machinery of one pipeline run: work directory, processes, progress display.

    Args:
        work_dir: Where stage outputs are cached.
        num_proc: Worker processes for row-local work (1: in this process).
        batch_size: Rows per unit of work.
        progress: Show a rich progress bar per stage.
    """

    def __init__(
        self, work_dir: str | Path, num_proc: int = 1, batch_size: int = 1000, progress: bool = True
    ) -> None:
        self.work_dir = Path(work_dir).expanduser()
        self.num_proc, self.batch_size = num_proc, batch_size
        self.show_progress = progress
        self._progress: Progress | None = None
        self.timings: dict[str, float] = {}

    @contextmanager
    def session(self) -> Iterator[Runner]:
        """Keep one progress display open for the whole run."""
        if not self.show_progress:
            yield self
            return
        self._progress = Progress(
            TextColumn("[bold]{task.description:<22}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            transient=False,
        )
        with self._progress:
            yield self
        self._progress = None

    def note(self, message: str) -> None:
        """Print a line above the progress bars (or log it when there are none)."""
        if self._progress is not None:
            self._progress.console.print(message)
        else:
            import logging

            logging.getLogger("fmlab.prepare").info(message)

    def bar(self, description: str, total: int | None, unit: str = "docs") -> Callable[..., None]:
        """A progress bar; returns ``advance(n, done=False)`` (``done`` freezes an open bar)."""
        progress = self._progress
        if progress is None:
            return lambda n, done=False: None
        task = progress.add_task(description, total=total, unit=unit)

        def advance(n: int, done: bool = False) -> None:
            progress.advance(task, n)
            if done:
                progress.update(task, total=progress.tasks[task].completed)
                progress.stop_task(task)

        return advance

    # ------------------------------------------------------------------ cached stage dirs
    def stage_dir(self, name: str, fp: str) -> Path:
        return self.work_dir / "stages" / f"{name}-{fp}"

    def cached_stats(self, name: str, fp: str) -> dict[str, Any] | None:
        """The stats of a complete cached stage output, or None."""
        path = self.stage_dir(name, fp) / "stats.json"
        return json.loads(path.read_text()) if path.is_file() else None

    @contextmanager
    def stage(self, name: str, fp: str) -> Iterator[tuple[Path, dict[str, Any]]]:
        """A temporary directory and a stats dict; both are published atomically on success."""
        final = self.stage_dir(name, fp)
        tmp = final.with_name(f"{final.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        stats: dict[str, Any] = {}
        t0, cpu0 = time.perf_counter(), cpu_seconds()
        try:
            yield tmp, stats
            stats["seconds"] = round(time.perf_counter() - t0, 3)
            stats["cpu_seconds"] = round(cpu_seconds() - cpu0, 3)
            write_json(tmp / "stats.json", stats)
            shutil.rmtree(final, ignore_errors=True)
            tmp.replace(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # ------------------------------------------------------------------ parallel maps
    def batches(self, table: pa.Table) -> Iterator[pa.RecordBatch]:
        return iter(table.to_batches(max_chunksize=self.batch_size))

    def map(
        self,
        batches: Iterable[pa.RecordBatch],
        task: Callable[[pa.RecordBatch], Any],
        *,
        description: str,
        total: int | None,
        unit: str = "docs",
    ) -> Iterator[Any]:
        """Apply ``task`` to every batch, in ``num_proc`` processes; yield results in order.

        ``task`` must be a picklable callable (a module-level function or a ``functools.partial``
        of one); with the fork start method its bound data is inherited, not copied.
        """
        advance = self.bar(description, total, unit)
        if self.num_proc <= 1:
            for batch in batches:
                yield task(batch)
                advance(batch.num_rows)
            return
        # HF tokenizers print a warning in every forked child once the parent used its thread
        # pool; workers are single-threaded by design here.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        pending: deque = deque()
        with ProcessPoolExecutor(
            self.num_proc,
            mp_context=mp.get_context(method),
            initializer=_init_worker,
            initargs=(task,),
        ) as pool:
            for batch in batches:
                pending.append((pool.submit(_run_task, _to_bytes(batch)), batch.num_rows))
                if len(pending) >= 2 * self.num_proc:  # bounded: memory stays flat
                    future, n = pending.popleft()
                    yield future.result()
                    advance(n)
            while pending:
                future, n = pending.popleft()
                yield future.result()
                advance(n)
