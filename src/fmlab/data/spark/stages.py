"""Clean, filter, split and decontaminate on Spark, with fmlab's own batch functions.

Row-local work is the single-machine code applied per Arrow batch (see :mod:`.frames`). The two
corpus-wide steps are distributed: boilerplate lines are counted per document with a
``groupBy`` and the (small) set of frequent lines is broadcast back; decontamination joins the
training records' n-gram hashes with the distinct held-out n-grams instead of holding them in
one process's memory, and applies the same rule (the first origin, in ``against`` then
benchmark order, with at least ``min_matches`` shared n-grams).
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from fmlab.data.pipeline.clean import Clean, _clean_batch, _drop_lines
from fmlab.data.pipeline.quality import Filter, _filter_batch
from fmlab.data.pipeline.read import ResolvedSource, iter_rows
from fmlab.data.pipeline.records import BadRow, content_fields, content_of
from fmlab.data.pipeline.split import (
    Decontaminate,
    Split,
    _eval_grams,
    _grams,
    _split_batch,
    _strings,
    split_kwargs,
)
from fmlab.data.spark.frames import IDX, SPLIT, SparkRun

__all__ = ["clean_records", "decontaminate_records", "filter_records", "split_records"]


def _sum(stats: list[dict[str, Any]], key: str) -> Counter:
    total: Counter = Counter()
    for s in stats:
        total.update(s.get(key, {}))
    return total


# ---------------------------------------------------------------------------- clean
def _clean_task(batch: pa.RecordBatch, opts: dict[str, Any], fields: tuple[str, ...]):
    out, changed, keys = _clean_batch(batch, opts, fields)
    return out, {"changed": dict(changed)}, None if keys is None else keys.tobytes()


def _drop_task(batch: pa.RecordBatch, boiler: Any, fields: tuple[str, ...], min_chars: int):
    out, counts, examples = _drop_lines(batch, boiler.value, fields, min_chars)
    return out, {"counts": dict(counts), "examples": examples}, None


def _line_keys(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        parts = [np.frombuffer(b, dtype=np.int64) for b in batch.column(0).to_pylist() if b]
        keys = np.concatenate(parts) if parts else np.empty(0, np.int64)
        yield pa.RecordBatch.from_arrays([pa.array(keys, pa.int64())], names=["key"])


def clean_records(run: SparkRun, df: Any, clean: Clean, n_in: int) -> tuple[Any, dict[str, Any]]:
    """The clean stage: ``(records, stats)`` as :meth:`Clean.run` reports them."""
    from pyspark.sql import functions as F

    t0 = time.perf_counter()
    fields = content_fields(run.kind)
    opts = {**clean.params, "pii": tuple(clean.params["pii"])}
    task = functools.partial(_clean_task, opts=opts, fields=fields)
    df, stats, aux, _ = run.map(df, task, split_in=False, split_out=False)
    changed = _sum(stats, "changed")
    out_stats: dict[str, Any] = {"in": n_in}
    removed = {"empty_after_clean": changed.pop("empty_after_clean", 0)}
    out = n_in - removed["empty_after_clean"]
    if opts["boilerplate"]:
        # document frequency of every long line (each document lists a line once)
        keys = aux.mapInArrow(_line_keys, "key long").groupBy("key").count()
        frequent = keys.where(F.col("count") >= opts["boilerplate_min_docs"]).select("key")
        found = [r[0] for r in frequent.collect()]
        boiler = frozenset(np.array(found, dtype=np.int64).view(np.uint64).tolist())
        out_stats["boilerplate_patterns"] = len(boiler)
        shared = run.spark.sparkContext.broadcast(boiler)
        task2 = functools.partial(
            _drop_task, boiler=shared, fields=fields, min_chars=opts["boilerplate_min_chars"]
        )
        df, stats2, _, _ = run.map(df, task2, split_in=False, split_out=False)
        counts = _sum(stats2, "counts")
        removed["empty_after_boilerplate"] = counts.pop("empty_after_boilerplate", 0)
        out -= removed["empty_after_boilerplate"]
        changed.update(counts)
        examples: list[str] = []
        for s in stats2:
            examples.extend(e for e in s["examples"] if e not in examples and len(examples) < 10)
        out_stats["boilerplate_examples"] = [e[:120] for e in examples]
    seconds = round(time.perf_counter() - t0, 3)
    out_stats.update(out=out, removed=removed, changed=dict(changed), seconds=seconds)
    return df, out_stats


# ---------------------------------------------------------------------------- filter, split
def _filter_task(batch: pa.RecordBatch, opts: dict[str, Any], kind: str):
    out, counts = _filter_batch(batch, opts, kind)
    return out, {"removed": dict(counts)}, None


def filter_records(run: SparkRun, df: Any, stage: Filter, n_in: int) -> tuple[Any, dict[str, Any]]:
    """The filter stage (Gopher rules of :func:`~fmlab.data.pipeline.quality.quality_reason`)."""
    task = functools.partial(_filter_task, opts=stage.params, kind=run.kind)
    df, stats, _, seconds = run.map(df, task, split_in=False, split_out=False)
    removed = _sum(stats, "removed")
    out = n_in - sum(removed.values())
    return df, {"in": n_in, "out": out, "removed": dict(removed), "seconds": round(seconds, 3)}


def _split_task(batch: pa.RecordBatch, **kwargs: Any):
    return _split_batch(batch, **kwargs), {}, None


def split_records(
    run: SparkRun, df: Any, split: Split, n_in: int, declared: dict[str, str] | None = None
) -> tuple[Any, dict[str, Any]]:
    """Add the ``split`` column: a source's declared split, else a hash of the content
    (:func:`fmlab.data.splits.split_of`)."""
    task = functools.partial(_split_task, **split_kwargs(split, run.kind, declared))
    df, _, _, seconds = run.map(df, task, split_in=False, split_out=True)
    return df, {"in": n_in, "out": n_in, "removed": {}, "seconds": round(seconds, 3)}


# ---------------------------------------------------------------------------- decontaminate
def _held_grams(batches: Iterator[pa.RecordBatch], kind: str, n: int, origins: tuple[str, ...]):
    for batch in batches:
        grams = _eval_grams(batch, kind, n, origins)
        rank = np.concatenate([np.full(len(grams[o]), r, np.int32) for r, o in enumerate(origins)])
        hashes = np.concatenate([grams[o] for o in origins]).view(np.int64)
        yield pa.RecordBatch.from_arrays([pa.array(rank), pa.array(hashes)], ["origin", "gram"])


def _train_grams(batches: Iterator[pa.RecordBatch], kind: str, n: int):
    for batch in batches:
        cols = batch.to_pydict()
        ids, parts = [], []
        for text, split, idx in zip(content_of(cols, kind), cols[SPLIT], cols[IDX]):
            if split == "train":
                grams = _grams([text], n)  # every occurrence counts, as in _NgramIndex.origin
                parts.append(grams)
                ids.append(np.full(len(grams), idx, np.int64))
        if parts:
            idx_col, gram_col = np.concatenate(ids), np.concatenate(parts).view(np.int64)
            yield pa.RecordBatch.from_arrays([pa.array(idx_col), pa.array(gram_col)], [IDX, "gram"])


def decontaminate_records(
    run: SparkRun,
    df: Any,
    stage: Decontaminate,
    benchmarks: list[ResolvedSource],
    cache_dir: str,
    n_in: int,
) -> tuple[Any, dict[str, Any]]:
    """Drop training records sharing ``ngram``-grams with held-out splits or benchmarks."""
    from pyspark.sql import functions as F

    t0 = time.perf_counter()
    n, min_matches = stage.params["ngram"], stage.params["min_matches"]
    origins = tuple(dict.fromkeys(stage.params["against"]))
    names = list(origins)
    held = df.where(F.col(SPLIT).isin(list(origins)))
    sets = (
        held.mapInArrow(
            functools.partial(_held_grams, kind=run.kind, n=n, origins=origins),
            "origin int, gram long",
        )
        if origins
        else run.spark.createDataFrame([], "origin int, gram long")
    )
    for src in benchmarks:  # read on the driver, as the single-machine stage does
        texts = [
            s
            for _, row in iter_rows(src, cache_dir)
            if not isinstance(row, BadRow)
            for s in _strings(row)
        ]
        grams = np.unique(_grams(texts, n)).view(np.int64)
        rank = np.full(len(grams), len(names), np.int32)
        table = pa.table({"origin": rank, "gram": grams})
        sets = sets.unionByName(run.spark.createDataFrame(table.to_pandas()))  # via Arrow
        names.append(f"benchmark:{src.spec.label}")
    sets = run.persist(sets.distinct())
    sizes = dict(sets.groupBy("origin").count().collect())
    grams = df.mapInArrow(
        functools.partial(_train_grams, kind=run.kind, n=n), f"{IDX} long, gram long"
    )
    matches = grams.join(sets, "gram").groupBy(IDX, "origin").count()
    first = (
        matches.where(F.col("count") >= min_matches)
        .groupBy(IDX)
        .agg(F.min("origin").alias("origin"))
    )
    dropped = run.persist(first)
    reasons = dict(dropped.groupBy("origin").count().collect())
    examples = dropped.join(df.select(IDX, "id"), IDX).orderBy(IDX).select("id", "origin").limit(5)
    kept = run.cut(df.join(dropped, IDX, "left_anti"))
    return kept, {
        "in": n_in,
        "out": kept.count(),
        "removed": {names[r]: int(c) for r, c in sorted(reasons.items())},
        "ngrams": {name: int(sizes.get(r, 0)) for r, name in enumerate(names)},
        "examples": [{"id": i, "overlaps": names[r]} for i, r in examples.collect()],
        "seconds": round(time.perf_counter() - t0, 3),
    }
