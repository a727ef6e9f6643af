"""DataFrames of records, and fmlab's batch functions applied to them through Arrow.

Records travel as a DataFrame with the record columns of their kind (``id``, ``source``,
``text`` ..., all strings), ``_idx`` (a long that orders records as the single-machine pipeline
reads them: the corpus order that decides which duplicate is "first") and, from the split stage
on, ``split``. A stage is one of fmlab's own Arrow batch functions (``_clean_batch``,
``_filter_batch``, ``_split_batch``, ...) run with ``mapInArrow``, so every record goes through
exactly the code the single-machine engine runs.

A batch function also returns statistics (counters, examples). They come back in-band: after each
output batch the task emits one extra row whose ``_stat`` column holds them as JSON (and ``_aux``
optional bytes) and whose other columns are null. The stage output is persisted, the stat rows
are collected (this materializes the stage, so its wall time is real) and the records are the
rows without ``_stat``. Unlike accumulators, this counts every batch exactly once even when Spark
re-runs a task.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa

from fmlab.data.pipeline.records import record_schema

__all__ = [
    "AUX",
    "IDX",
    "SPLIT",
    "STAT",
    "SparkRun",
    "arrow_schema",
    "spark_schema",
    "stat_batch",
    "with_stat_columns",
]

IDX, SPLIT, STAT, AUX = "_idx", "split", "_stat", "_aux"
BatchTask = Callable[[pa.RecordBatch], tuple[pa.RecordBatch, dict[str, Any], bytes | None]]


def arrow_schema(kind: str, *, split: bool = False, stats: bool = False) -> pa.Schema:
    """Arrow schema of records of ``kind`` with ``_idx`` (+ ``split``, + the stat columns)."""
    schema = record_schema(kind).append(pa.field(IDX, pa.int64()))
    if split:
        schema = schema.append(pa.field(SPLIT, pa.string()))
    if stats:
        schema = schema.append(pa.field(STAT, pa.string())).append(pa.field(AUX, pa.binary()))
    return schema


def spark_schema(schema: pa.Schema) -> Any:
    """The Spark StructType of an Arrow schema of strings, longs, doubles and binaries."""
    from pyspark.sql import types as T

    kinds = {
        pa.string(): T.StringType(),
        pa.int64(): T.LongType(),
        pa.int32(): T.IntegerType(),
        pa.float64(): T.DoubleType(),
        pa.binary(): T.BinaryType(),
    }
    return T.StructType([T.StructField(f.name, kinds[f.type], True) for f in schema])


def stat_batch(stats: dict[str, Any], aux: bytes | None, schema: pa.Schema) -> pa.RecordBatch:
    values = {f.name: pa.nulls(1, f.type) for f in schema}
    values[STAT] = pa.array([json.dumps(stats)], pa.string())
    values[AUX] = pa.array([aux], pa.binary())
    return pa.RecordBatch.from_arrays([values[f.name] for f in schema], schema=schema)


def with_stat_columns(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    n = batch.num_rows
    cols = [
        batch.column(f.name) if f.name not in (STAT, AUX) else pa.nulls(n, f.type) for f in schema
    ]
    return pa.RecordBatch.from_arrays(cols, schema=schema)


def _apply(task: BatchTask, schema: pa.Schema) -> Callable[[Iterator], Iterator]:
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            out, stats, aux = task(batch)
            # which batch came first in corpus order (examples keep the single-machine order)
            stats = {"first": batch.column(IDX)[0].as_py(), "rows": batch.num_rows, **stats}
            if out.num_rows:
                yield with_stat_columns(out, schema)
            yield stat_batch(stats, aux, schema)

    return run


class SparkRun:
    """One pipeline run on a Spark session: stage application, persistence, lineage cuts.

    Every stage ends with :meth:`cut`: its output becomes a checkpoint, a fresh leaf for the
    next stage. Without it each stage's query plan would contain every earlier one (several
    times over, as stages reuse their input): planning time and plan strings grow until the
    driver runs out of memory.

    Args:
        spark: The SparkSession.
        kind: Record kind (``text``, ``sft``, ``classification``).
        reliable: Reliable checkpoints (``SparkContext.setCheckpointDir`` set: they survive
            the loss of an executor) instead of local ones (executor storage).
    """

    def __init__(self, spark: Any, kind: str, reliable: bool = False) -> None:
        self.spark, self.kind, self.reliable = spark, kind, reliable
        self._persisted: list[Any] = []

    def persist(self, df: Any) -> Any:
        """Persist ``df`` until the next :meth:`release`."""
        from pyspark import StorageLevel

        df = df.persist(StorageLevel.MEMORY_AND_DISK)
        self._persisted.append(df)
        return df

    def cut(self, df: Any) -> Any:
        """Materialize ``df`` as a checkpoint; the result's plan is a single leaf."""
        return df.checkpoint(eager=True) if self.reliable else df.localCheckpoint(eager=True)

    def release(self) -> None:
        """Unpersist the intermediate frames of the stage that just ended."""
        while self._persisted:
            self._persisted.pop().unpersist()

    def map(
        self, df: Any, task: BatchTask, *, split_in: bool, split_out: bool
    ) -> tuple[Any, list[dict[str, Any]], Any, float]:
        """Run ``task`` on every Arrow batch of ``df``.

        Returns:
            The output records (cut), the stats of every batch in corpus order, the stat rows
            (a DataFrame with the ``_aux`` bytes of every batch, valid until :meth:`release`,
            for work that stays distributed) and the wall seconds of the stage.
        """
        from pyspark.sql import functions as F

        t0 = time.perf_counter()
        schema = arrow_schema(self.kind, split=split_out, stats=True)
        inputs = df.select(*arrow_schema(self.kind, split=split_in).names)
        out = self.persist(inputs.mapInArrow(_apply(task, schema), spark_schema(schema)))
        rows = out.where(F.col(STAT).isNotNull()).select(STAT).collect()
        stats = sorted((json.loads(r[0]) for r in rows), key=lambda s: s["first"])
        records = self.cut(out.where(F.col(STAT).isNull()).drop(STAT, AUX))
        aux = out.where(F.col(STAT).isNotNull()).select(AUX)
        return records, stats, aux, time.perf_counter() - t0
