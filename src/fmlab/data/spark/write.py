"""Write the Spark records: Parquet per split in corpus order, then the data card.

Layout (that of ``fmlab-prepare prepare/recipe=records write.format=parquet``)::

    <output_dir>/train/part-00000-<uuid>.snappy.parquet, ...   (corpus order across parts)
    <output_dir>/validation/..., <output_dir>/test/...          (empty splits: no directory)
    <output_dir>/card.json, card.md

Spark writes directly to ``output_dir`` when it is remote and the job runs on a cluster (EMR,
Glue: ``s3://`` is native there); ``card.json`` is removed first and written last, so a reader
that finds it finds a complete dataset. In local mode Spark writes into a local staging
directory that fmlab's :func:`~fmlab.data.pipeline.write.publish` swaps in (local) or uploads
through fsspec (``s3://``: no Hadoop S3 connector needed).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

from fsspec.core import url_to_fs

from fmlab.data.pipeline.card import card_markdown
from fmlab.data.pipeline.records import content_fields, record_schema
from fmlab.data.pipeline.write import Write, _refuse_foreign, _size, is_remote, publish, staging_dir
from fmlab.data.spark.frames import IDX, SPLIT, SparkRun
from fmlab.data.splits import SPLITS

__all__ = ["RecordsWriter", "rewrite_card", "summaries"]


class RecordsWriter:
    """Writes one records dataset to ``uri`` (see the module docstring).

    Args:
        run: The Spark run.
        uri: Output directory or URI.
        work_dir: Staging area for remote outputs written in local mode.
        storage_options: fsspec options of ``uri``.
    """

    def __init__(
        self, run: SparkRun, uri: str, work_dir: str, storage_options: dict[str, Any] | None
    ) -> None:
        self.run, self.uri, self.options = run, uri, storage_options
        self.fs, self.root = url_to_fs(uri, **(storage_options or {}))
        _refuse_foreign(self.fs, self.root, uri)
        local_master = run.spark.sparkContext.master.startswith("local")
        self.direct = is_remote(uri) and not local_master
        self.tmp = None if self.direct else staging_dir(uri, Path(work_dir).expanduser())

    def discard(self) -> None:
        """Remove the staging directory (a failed run leaves nothing behind)."""
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def target(self, part: str) -> str:
        return str(self.tmp / part) if self.tmp is not None else f"{self.uri.rstrip('/')}/{part}"

    def write(self, df: Any, write: Write) -> tuple[dict[str, int], float]:
        """Write every non-empty split; returns records per split and the wall seconds."""
        from pyspark.sql import functions as F

        t0 = time.perf_counter()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp.mkdir(parents=True)
        elif self.fs.isfile(f"{self.root.rstrip('/')}/card.json"):
            self.fs.rm(f"{self.root.rstrip('/')}/card.json")  # incomplete from here on
        kind = self.run.kind
        size = sum(
            (F.coalesce(F.octet_length(f), F.lit(0)) for f in content_fields(kind)), F.lit(64)
        )
        totals = {
            r[0]: (int(r[1]), int(r[2] or 0))
            for r in df.groupBy(SPLIT).agg(F.count("*"), F.sum(size)).collect()
        }
        limit = _size(write.params["max_shard_size"])
        names = record_schema(kind).names
        for split in SPLITS:
            rows, nbytes = totals.get(split, (0, 0))
            if not rows:
                if self.direct and self.fs.exists(f"{self.root.rstrip('/')}/{split}"):
                    self.fs.rm(f"{self.root.rstrip('/')}/{split}", recursive=True)
                continue
            # range partitions are numbered in _idx order: part files keep the corpus order
            parts = max(1, math.ceil(nbytes / limit))
            (
                df.where(F.col(SPLIT) == split)
                .repartitionByRange(parts, IDX)
                .sortWithinPartitions(IDX)
                .select(*names)
                .write.mode("overwrite")
                .parquet(self.target(split))
            )
        return {s: totals.get(s, (0, 0))[0] for s in SPLITS}, time.perf_counter() - t0

    def finish(self, card: dict[str, Any]) -> None:
        """Write the card last and publish the dataset."""
        if self.tmp is None:
            rewrite_card(card, self.uri, self.options)
            return
        try:
            (self.tmp / "card.json").write_text(json.dumps(card, indent=1, default=str))
            (self.tmp / "card.md").write_text(card_markdown(card))
            publish(self.tmp, self.uri, self.options)
        finally:
            self.discard()


def rewrite_card(card: dict[str, Any], uri: str, storage_options: dict[str, Any] | None) -> None:
    """(Re)write ``card.md`` and then ``card.json`` of the dataset at ``uri``."""
    fs, root = url_to_fs(uri, **(storage_options or {}))
    root = root.rstrip("/")
    with fs.open(f"{root}/card.md", "w") as fh:
        fh.write(card_markdown(card))
    with fs.open(f"{root}/card.json", "w") as fh:
        fh.write(json.dumps(card, indent=1, default=str))


def summaries(df: Any) -> dict[str, Any]:
    """Dates and per-domain counts of the final records (the card's ``dates``, ``domains``)."""
    from pyspark.sql import functions as F

    r = df.agg(
        F.count("date").alias("with"),
        (F.count("*") - F.count("date")).alias("without"),
        F.min("date").alias("lo"),
        F.max("date").alias("hi"),
    ).first()
    domains: dict[str, dict[str, dict[str, int]]] = {}
    for dom, split, n in df.groupBy("domain", SPLIT).count().collect():
        domains.setdefault(dom or "unspecified", {})[split] = {"documents": int(n)}
    spans = df.groupBy(SPLIT).agg(F.min("date").alias("lo"), F.max("date").alias("hi")).collect()
    return {
        "dates": {
            "with_date": int(r["with"]),
            "without_date": int(r["without"]),
            "min": r["lo"],
            "max": r["hi"],
            "cutoff": r["hi"],
            # per split, as the single-machine engine's card (fmlab.data.pipeline.run)
            "by_split": {
                row[SPLIT]: {"min": row["lo"], "max": row["hi"]}
                for row in spans
                if row["hi"] is not None
            },
        },
        "domains": domains,
    }
