"""Exact and near (MinHash LSH) deduplication on Spark, with the single-machine kept set.

The single-machine stage (:mod:`fmlab.data.pipeline.dedup`) decides documents one by one in
corpus order: an exact copy of an earlier document is removed; otherwise the document is removed
when an earlier *kept* document shares an LSH band with it and has an estimated Jaccard
similarity at or above the threshold (it then points at the most similar such document), and is
indexed otherwise. That rule is sequential, but a document's decision only involves documents it
shares a band with, so it can be made independently per connected component of the "shares a
band" graph:

1. signatures: fmlab's ``_signatures`` (same normalization, shingles, permutations and seed);
2. exact: the first ``_idx`` per normalized-text hash is kept, later copies point at it;
3. bands: the band keys ``datasketch.MinHashLSH`` would use (same ``b`` and ``r``: taken from a
   ``MinHashLSH`` built with the same threshold and ``num_perm``); each bucket with several
   documents gives star edges to its smallest member (linear in the bucket size, no pairs);
4. connected components of those edges (large-star/small-star, Kiveris et al. 2014);
5. per component, in ``_idx`` order, the single-machine decision itself (``Dedup._near`` with a
   ``MinHashLSH`` of the component's documents): whatever ``lsh.query`` returns for a document
   lies in its component, so every decision is the one the single-machine run makes.

A component is processed by one task: a huge cluster of near-copies costs one executor what it
costs the single-machine stage.
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import Any

import numpy as np
import pyarrow as pa

from fmlab.data.pipeline.dedup import Dedup, _signatures
from fmlab.data.pipeline.records import content_fields
from fmlab.data.spark.frames import IDX, SparkRun

__all__ = ["connected_components", "dedup_records"]

log = logging.getLogger("fmlab.prepare")


def _signature_task(batches: Any, kind: str, p: dict[str, Any]) -> Any:
    for batch in batches:
        exact, sigs, sizes = _signatures(
            batch, kind, p["ngram"], p["num_perm"], p["seed"], p["near"]
        )
        # (num_perm,) uint32 per document, as bytes: an LSH band is a byte slice of it
        sig = (
            pa.array([row.tobytes() for row in sigs], pa.binary())
            if sigs is not None
            else pa.nulls(len(exact), pa.binary())
        )
        yield pa.RecordBatch.from_arrays(
            [batch.column(IDX), pa.array(exact.view(np.int64)), pa.array(sizes), sig],
            names=[IDX, "exact", "size", "sig"],
        )


def _decide(ids: np.ndarray, sigs: np.ndarray, stage: Dedup) -> pa.RecordBatch:
    """The single-machine decisions for one component (``ids`` ascending, ``sigs`` theirs)."""
    from datasketch import MinHashLSH

    p = stage.params
    rep, similarity = np.arange(len(ids)), {}
    lsh = MinHashLSH(threshold=p["threshold"], num_perm=p["num_perm"])
    for i in range(len(ids)):  # local positions keep the corpus order (ties: smallest wins)
        stage._near(lsh, sigs, i, rep, similarity)
    gone = np.flatnonzero(rep != np.arange(len(ids)))
    return pa.RecordBatch.from_arrays(
        [
            pa.array(ids[gone], pa.int64()),
            pa.array(ids[rep[gone]], pa.int64()),
            pa.array([similarity[int(i)] for i in gone], pa.float64()),
        ],
        names=[IDX, "rep", "sim"],
    )


def _components(batches: Any, stage: Dedup) -> Any:
    """Decide every component of a partition sorted by ``(comp, _idx)``; a component may
    continue from one Arrow batch into the next."""
    num_perm = stage.params["num_perm"]
    pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def flush() -> pa.RecordBatch:
        ids = np.concatenate([q[1] for q in pending])
        sigs = np.concatenate([q[2] for q in pending])
        pending.clear()
        return _decide(ids, sigs, stage)

    for batch in batches:
        comp = batch.column("comp").to_numpy()
        ids = batch.column(IDX).to_numpy()
        raw = b"".join(bytes(x) for x in batch.column("sig").to_pylist())
        sigs = np.frombuffer(raw, dtype=np.uint32).reshape(len(ids), num_perm)
        cuts = [0, *(np.flatnonzero(comp[1:] != comp[:-1]) + 1).tolist(), len(comp)]
        for a, b in itertools.pairwise(cuts):
            if a == b:
                continue
            if pending and pending[-1][0][0] != comp[a]:
                yield flush()
            pending.append((comp[a:b], ids[a:b], sigs[a:b]))
    if pending:
        yield flush()


def connected_components(run: SparkRun, edges: Any) -> Any:
    """``(node, comp)`` for every node of ``edges`` (columns ``u``, ``v``; longs), ``comp`` being
    the smallest node of its component (alternating large-star and small-star steps)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    def pairs(*cols: tuple[Any, Any]) -> Any:  # several (u, v) columns → rows
        return F.explode(F.array(*[F.struct(a.alias("u"), b.alias("v")) for a, b in cols]))

    u, v = F.col("u"), F.col("v")
    # every round is cut (checkpointed): the rounds would otherwise nest one query plan
    e = run.cut(edges.select(F.greatest(u, v).alias("u"), F.least(u, v).alias("v")).distinct())
    rounds = 0
    while True:
        rounds += 1
        # large star: every larger neighbour of x attaches to the smallest of x's neighbourhood
        both = e.select(pairs((u, v), (v, u)).alias("p")).select(
            F.col("p.u").alias("x"), F.col("p.v").alias("y")
        )
        low = F.least(F.min("y").over(Window.partitionBy("x")), F.col("x"))
        large = (
            both.withColumn("m", low)
            .where(F.col("y") > F.col("x"))
            .select(F.col("y").alias("u"), F.col("m").alias("v"))
            .distinct()
        )
        # small star: every node and its smaller neighbours attach to the smallest of them
        m = F.col("m")
        small = (
            large.withColumn("m", F.min("v").over(Window.partitionBy("u")))
            .select(pairs((v, m), (u, m)).alias("p"))
            .select("p.u", "p.v")
            .where(u != v)
            .distinct()
        )
        e = run.cut(small)
        # done when the edges are stars: no node has two edges up or is both centre and leaf
        ends = e.select(pairs((u, F.lit(1)), (v, F.lit(0))).alias("p")).select("p.u", "p.v")
        bad = ends.groupBy("u").agg(F.sum("v").alias("up"), F.min("v").alias("low"))
        if bad.where((F.col("up") > 1) | ((F.col("up") == 1) & (F.col("low") == 0))).isEmpty():
            break
    log.info("dedup: connected components in %d large/small-star rounds", rounds)
    roots = e.select(F.col("v").alias("node"), F.col("v").alias("comp")).distinct()
    return e.select(F.col("u").alias("node"), F.col("v").alias("comp")).unionByName(roots)


def _near_removed(run: SparkRun, unique: Any, stage: Dedup) -> Any:
    from datasketch import MinHashLSH
    from pyspark.sql import functions as F

    p = stage.params
    ranges = MinHashLSH(threshold=p["threshold"], num_perm=p["num_perm"]).hashranges
    part = unique.where(F.col("size") > 0).select(IDX, "sig")  # empty shingle sets match all
    bands = part.select(
        IDX,
        F.explode(
            F.array(
                *[
                    F.struct(
                        F.lit(b).alias("band"),
                        F.substring("sig", 4 * start + 1, 4 * (end - start)).alias("key"),
                    )
                    for b, (start, end) in enumerate(ranges)
                ]
            )
        ).alias("bk"),
    ).select(IDX, "bk.band", "bk.key")
    buckets = (
        bands.groupBy("band", "key")
        .agg(F.min(IDX).alias("hub"), F.count("*").alias("n"))
        .where(F.col("n") > 1)
    )
    edges = (
        bands.join(buckets, ["band", "key"])
        .where(F.col(IDX) != F.col("hub"))
        .select(F.col(IDX).alias("u"), F.col("hub").alias("v"))
    )
    labels = connected_components(run, edges)
    members = labels.join(part, labels["node"] == part[IDX]).select("comp", IDX, "sig")
    # one component per task slot at a time, its documents in corpus order
    ordered = members.repartition("comp").sortWithinPartitions("comp", IDX)
    return ordered.mapInArrow(
        lambda batches: _components(batches, stage), f"{IDX} long, rep long, sim double"
    )


def dedup_records(run: SparkRun, df: Any, stage: Dedup, n_in: int) -> tuple[Any, dict[str, Any]]:
    """The dedup stage: ``(kept records, stats)`` as :meth:`Dedup.run` reports them."""
    from pyspark.sql import functions as F

    t0 = time.perf_counter()
    p = stage.params
    cols = [*content_fields(run.kind), IDX]
    kind = run.kind
    sigs = run.persist(
        df.select(*cols).mapInArrow(
            lambda batches: _signature_task(batches, kind, p),
            f"{IDX} long, exact long, size long, sig binary",
        )
    )
    empty = run.spark.createDataFrame([], f"{IDX} long, rep long, sim double")
    if p["exact"]:
        first = sigs.groupBy("exact").agg(F.min(IDX).alias("first"))
        with_first = sigs.join(first, "exact")
        exact = run.persist(with_first.where(F.col(IDX) != F.col("first")).select(IDX, "first"))
        unique = with_first.where(F.col(IDX) == F.col("first")).drop("first")
    else:
        exact = run.spark.createDataFrame([], f"{IDX} long, first long")
        unique = sigs
    near = run.persist(_near_removed(run, unique, stage) if p["near"] else empty)
    n_near = near.count()
    # an exact copy shares the representative of its first occurrence (itself near-removed?)
    reps = near.select(F.col(IDX).alias("first"), F.col("rep").alias("near_rep"))
    resolved = exact.join(reps, "first", "left").select(
        IDX, F.coalesce("near_rep", "first").alias("rep"), F.lit(None).cast("double").alias("sim")
    )
    removed = run.persist(near.unionByName(resolved))
    n_exact = exact.count()
    kept = run.cut(df.join(removed.select(IDX), IDX, "left_anti"))
    stats = {
        "in": n_in,
        "out": kept.count(),
        "removed": {"exact": n_exact, "near": n_near},
        "clusters": _clusters(df, removed, stage.clusters, run.kind),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return kept, stats


def _clusters(df: Any, removed: Any, top: int, kind: str) -> dict[str, Any]:
    """The card's duplicate clusters, as ``Dedup._clusters`` lists them."""
    from pyspark.sql import functions as F

    groups = removed.groupBy("rep").agg(
        (F.count("*") + 1).alias("size"),
        F.count("sim").alias("near"),
        F.min("sim").alias("min_jaccard"),
        F.slice(F.sort_array(F.collect_list(IDX)), 1, 10).alias("first"),
    )
    bucket = (
        F.when(F.col("size") == 2, "2")
        .when(F.col("size") <= 5, "3-5")
        .when(F.col("size") <= 10, "6-10")
        .otherwise(">10")
    )
    counts = dict(groups.groupBy(bucket.alias("b")).count().collect())
    hist = {k: int(counts.get(k, 0)) for k in ("2", "3-5", "6-10", ">10")}
    largest = groups.orderBy(F.desc("size"), "rep").limit(top).collect() if top else []
    wanted = sorted({r["rep"] for r in largest} | {i for r in largest for i in r["first"]})
    text = "prompt" if kind == "sft" else "text"
    rows = df.where(F.col(IDX).isin(wanted)).select(IDX, "id", text).collect() if wanted else []
    by_idx = {r[0]: (r[1], r[2]) for r in rows}
    listed = [
        {
            "kept": by_idx[r["rep"]][0],
            "size": int(r["size"]),
            "removed": [by_idx[i][0] for i in r["first"]],
            "exact": int(r["size"] - 1 - r["near"]),
            "near": int(r["near"]),
            "min_jaccard": round(r["min_jaccard"] if r["min_jaccard"] is not None else 1.0, 3),
            "snippet": " ".join(by_idx[r["rep"]][1].split())[:160],
        }
        for r in largest
    ]
    return {"count": sum(hist.values()), "size_histogram": hist, "largest": listed}
