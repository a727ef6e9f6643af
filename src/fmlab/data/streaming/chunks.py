"""Writing token blocks in litdata's chunk format (what ``litdata.optimize`` writes).

A split directory holds ``chunk-<part>-<n>.bin`` files and one ``index.json`` listing them in
order, with the serialization config. Every row is one item: a dict of 1-D NumPy arrays, the
columns of a packed split (``input_ids`` in the dataset's token dtype; ``seq_ids`` and
``position_ids`` with ``document_mask``; ``labels``/``attention_mask`` for sliding-window
evaluation splits). Items are written by litdata's own ``BinaryWriter``; a split written in
parts (one per Spark partition) is several writers with distinct ``part`` numbers whose indexes
are concatenated in part order, as ``litdata.merge_datasets`` does, so the rows keep the corpus
order of a single-machine write.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from fmlab.data.streaming.storage import INDEX

__all__ = ["merge_indexes", "save_index", "table_rows", "write_chunks", "write_split"]


def table_rows(batches: Iterable[pa.RecordBatch]) -> Iterator[dict[str, np.ndarray]]:
    """Rows of fixed-size-list columns (a packed split) as dicts of 1-D arrays."""
    for batch in batches:
        n = batch.num_rows
        if not n:
            continue
        cols = {
            name: batch.column(name).flatten().to_numpy(zero_copy_only=False).reshape(n, -1)
            for name in batch.schema.names
        }
        for i in range(n):
            yield {name: m[i] for name, m in cols.items()}


def write_chunks(
    rows: Iterable[dict[str, np.ndarray]], out_dir: str | Path, chunk_bytes: int, part: int = 0
) -> dict[str, Any]:
    """Write ``rows`` as chunks into ``out_dir``; return this part's index (no rows: ``{}``).

    Args:
        rows: Items in order.
        out_dir: Local directory (created).
        chunk_bytes: Largest chunk.
        part: Number in the chunk file names; parts of one split must differ.
    """
    from litdata.streaming.writer import BinaryWriter

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = BinaryWriter(str(out_dir), chunk_bytes=chunk_bytes)
    # The writer numbers its files by its rank (a worker of litdata.optimize); a Spark task or
    # the single-machine writer is "rank" `part`, so parts of one split never share a name.
    writer._rank = part
    n = 0
    for n, row in enumerate(rows, 1):
        writer.add_item(n - 1, row)
    if not n:
        return {}
    writer.done()
    index_file = out_dir / f"{part}.{INDEX}"
    index = json.loads(index_file.read_text())
    index_file.unlink()
    return index


def merge_indexes(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One split's ``index.json`` from its parts' indexes (in part order; empty parts skipped).

    ``updated_at`` marks this write: litdata keys its local cache by it, so readers of a
    rewritten dataset never mix old and new chunks.
    """
    parts = [p for p in parts if p]
    if not parts:
        raise ValueError("merge_indexes: no part has rows")
    config = parts[0]["config"]
    for p in parts[1:]:
        for key in ("data_format", "data_spec", "compression", "item_loader"):
            if p["config"].get(key) != config.get(key):
                raise ValueError(f"merge_indexes: parts differ in {key}: {p['config'].get(key)}")
    chunks = [c for p in parts for c in p["chunks"]]
    return {"chunks": chunks, "config": config, "updated_at": str(time.time())}


def save_index(index: dict[str, Any], out_dir: str | Path) -> None:
    """Write ``index.json`` into a local split directory."""
    Path(out_dir, INDEX).write_text(json.dumps(index, sort_keys=True))


def write_split(table: pa.Table, out_dir: str | Path, chunk_bytes: int) -> None:
    """A whole split (a packed Arrow table) as chunks + ``index.json`` in ``out_dir``."""
    index = write_chunks(table_rows(table.to_batches(max_chunksize=10_000)), out_dir, chunk_bytes)
    save_index(merge_indexes([index]), out_dir)
