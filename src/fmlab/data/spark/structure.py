"""Read + structure on Spark: one task per input file, fmlab's own readers and record checks.

The driver resolves every source with :func:`fmlab.data.pipeline.read.resolve_source` (so the
file list, its order and the errors for a bad path are the single-machine ones) and makes one
unit of work per file (per source for ``save_to_disk`` and Hub sources). Executors read their
file through fsspec with fmlab's row readers (local paths and ``s3://`` alike, no Hadoop S3
connector involved) and map every row with :func:`~fmlab.data.pipeline.records.to_record`.

``_idx = unit << 32 | row`` orders records exactly as the single-machine pipeline reads them.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from fmlab.data.pipeline.read import ResolvedSource, _file_rows, iter_rows
from fmlab.data.pipeline.records import PrepareError
from fmlab.data.pipeline.structure import RowTally, Structure
from fmlab.data.spark.frames import (
    AUX,
    IDX,
    STAT,
    SparkRun,
    arrow_schema,
    spark_schema,
    stat_batch,
    with_stat_columns,
)

__all__ = ["read_records"]

_ROW_BITS = 32  # rows per file < 2**32


def _unit_rows(src: ResolvedSource, path: str | None, cache_dir: str) -> Iterator[tuple]:
    return _file_rows(src, path) if path is not None else iter_rows(src, cache_dir=cache_dir)


def _read_units(
    shared: Any,
    structure: Structure,
    cache_dir: str,
    batch_size: int,
    schema: pa.Schema,
):
    names = [n for n in schema.names if n not in (IDX, STAT, AUX)]

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            units, sources = shared.value
            for unit in batch.column(0).to_pylist():
                src_no, path = units[unit]
                src = sources[src_no]
                tally = RowTally(structure.examples)
                columns: dict[str, list] = {k: [] for k in [*names, IDX]}
                error = None
                try:
                    rows = tally.records(_unit_rows(src, path, cache_dir), src.spec, structure.kind)
                    for rec in rows:
                        for k in names:
                            columns[k].append(rec[k])
                        columns[IDX].append((unit << _ROW_BITS) | (tally.rows - 1))
                        if len(columns[IDX]) >= batch_size:
                            yield with_stat_columns(_batch(columns, schema), schema)
                            columns = {k: [] for k in columns}
                except (PrepareError, OSError) as err:  # reported on the driver, by source
                    error = f"{type(err).__name__}: {err}"
                if columns[IDX]:
                    yield with_stat_columns(_batch(columns, schema), schema)
                stats = {"unit": unit, "source": src_no, "rows": tally.rows, "kept": tally.kept}
                stats.update(bad=dict(tally.bad), examples=tally.examples, error=error, where=path)
                yield stat_batch(stats, None, schema)

    return run


def _batch(columns: dict[str, list], schema: pa.Schema) -> pa.RecordBatch:
    fields = [f for f in schema if f.name not in (STAT, AUX)]
    return pa.RecordBatch.from_arrays(
        [pa.array(columns[f.name], f.type) for f in fields], schema=pa.schema(fields)
    )


def read_records(
    run: SparkRun,
    sources: list[ResolvedSource],
    structure: Structure,
    cache_dir: str,
    batch_size: int,
) -> tuple[Any, dict[str, Any]]:
    """Read and structure every source; return the records DataFrame and the stage stats
    (the single-machine structure stats, with the same checks and error messages)."""
    import json

    from pyspark.sql import functions as F

    t0 = time.perf_counter()
    units: list[tuple[int, str | None]] = []  # (source, file) in reading order
    for src_no, src in enumerate(sources):
        units += [(src_no, p) for p in (src.files if src.kind == "files" else [None])]
    if len(units) >= 2**31:
        raise PrepareError(f"{len(units)} input files: at most 2**31 are supported")
    schema = arrow_schema(structure.kind, stats=True)
    # unit numbers, one per partition (files are read in parallel: a big one does not hold up
    # the others); made in the JVM, no Python worker needed
    table = run.spark.range(0, len(units), numPartitions=max(len(units), 1))
    # the file list goes to each executor once (a million paths would weigh on every task)
    shared = run.spark.sparkContext.broadcast((units, sources))
    task = _read_units(shared, structure, cache_dir, batch_size, schema)
    out = run.persist(table.mapInArrow(task, spark_schema(schema)))
    stats = [json.loads(r[0]) for r in out.where(F.col(STAT).isNotNull()).select(STAT).collect()]
    stats.sort(key=lambda s: s["unit"])
    records = run.cut(out.where(F.col(STAT).isNull()).drop(STAT, AUX))
    return records, _summarize(structure, sources, stats, time.perf_counter() - t0)


def _summarize(
    structure: Structure, sources: list[ResolvedSource], units: list[dict], seconds: float
) -> dict[str, Any]:
    total_bad: Counter = Counter()
    examples: dict[str, list[dict[str, str]]] = {}
    per_source = []
    for src_no, src in enumerate(sources):
        mine = [u for u in units if u["source"] == src_no]
        failed = next((u for u in mine if u["error"]), None)
        if failed is not None:
            where = f" ({failed['where']})" if failed["where"] else ""
            raise PrepareError(f"source '{src.spec.label}'{where}: {failed['error']}")
        bad: Counter = Counter()
        src_examples: dict[str, list[dict[str, str]]] = {}
        for u in mine:  # in file order: the first examples are the single-machine ones
            bad.update(u["bad"])
            for reason, items in u["examples"].items():
                listed = src_examples.setdefault(reason, [])
                listed.extend(items[: max(structure.examples - len(listed), 0)])
        rows, kept = sum(u["rows"] for u in mine), sum(u["kept"] for u in mine)
        per_source.append(
            structure.account(src, rows, kept, bad, src_examples, total_bad, examples)
        )
    rows = sum(s["rows"] for s in per_source)
    return {
        "in": rows,
        "out": sum(s["kept"] for s in per_source),
        "removed": dict(total_bad),
        "examples": examples,
        "sources": per_source,
        "bytes": sum(s["bytes"] for s in per_source),
        "seconds": round(seconds, 3),
    }
