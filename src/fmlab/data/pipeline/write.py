"""Write stage: the prepared dataset as Arrow (``save_to_disk``), Parquet shards or litdata
chunks (streaming), published without ever exposing a half-written directory.

Layout of a prepared dataset::

    <output_dir>/
      dataset_dict.json, train/, validation/, test/    (arrow: datasets.load_from_disk(dir))
      train/part-00000.parquet, ...                     (parquet)
      train/index.json, train/chunk-0-0.bin, ...        (streaming: data=streaming reads it)
      tokenizer/                                        (when segmented)
      card.json, card.md, plots/length_*.png

Local outputs are assembled next to ``output_dir`` and swapped in by rename; a previous prepared
dataset there is replaced only after the new one is complete, and a directory that is not an fmlab
dataset is never overwritten. Remote outputs (``s3://...``) are uploaded with ``card.json`` last,
so a reader that finds ``card.json`` finds a complete dataset.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Annotated, Any, Literal

import pyarrow.parquet as pq
from fsspec.core import url_to_fs
from pydantic import Field

from fmlab.data.pipeline.engine import Stage, read_table
from fmlab.data.pipeline.records import PrepareError
from fmlab.utils.optional import require_filesystem

__all__ = ["Write", "is_remote", "load_card", "publish"]

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20}
_UNITS |= {"GIB": 2**30, "TB": 10**12, "TIB": 2**40}


def _size(text: str | int, key: str = "write.max_shard_size") -> int:
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).upper() not in _UNITS:
        raise ValueError(f"{key}: expected a size like '500MB', got {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


_SIZE = r"^\s*\d+(\.\d+)?\s*[A-Za-z]*\s*$"


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


class Write(Stage):
    """Write the splits, the tokenizer and the data card.

    Args:
        format: ``arrow`` (``datasets.save_to_disk``; ``load_from_disk`` reads it), ``parquet``,
            or ``streaming`` (token blocks as litdata chunks: :mod:`fmlab.data.streaming`).
        max_shard_size: Largest shard, e.g. ``500MB`` (arrow, parquet).
        plots: Draw length histograms (PNG) for the card.
        chunk_bytes: Largest chunk of a streaming dataset: the unit of download and of the
            local cache (litdata's usual: ``64MB``). Only kept with ``format=streaming``.
    """

    name = "write"
    version = 1

    def __init__(
        self,
        format: Literal["arrow", "parquet", "streaming"] = "arrow",
        max_shard_size: Annotated[str, Field(pattern=_SIZE)] = "500MB",
        plots: bool = True,
        chunk_bytes: Annotated[str, Field(pattern=_SIZE)] = "64MB",
    ) -> None:
        _size(max_shard_size)
        _size(chunk_bytes, "write.chunk_bytes")
        # chunk_bytes joins the settings (and the fingerprint) only where it matters
        streaming = {"chunk_bytes": chunk_bytes} if format == "streaming" else {}
        super().__init__(format=format, max_shard_size=max_shard_size, plots=plots, **streaming)

    def assemble(self, splits: dict[str, Path], tmp: Path) -> dict[str, int]:
        """Write each non-empty split from its Arrow file into ``tmp``; returns rows per split."""
        import datasets

        limit = _size(self.params["max_shard_size"])
        rows = {s: read_table(p).num_rows for s, p in splits.items()}
        present = {
            s: p for s, p in splits.items() if rows[s]
        }  # datasets cannot reload empty splits
        if self.params["format"] == "streaming":
            from fmlab.data.streaming.chunks import write_split

            for split, path in present.items():
                write_split(read_table(path), tmp / split, _size(self.params["chunk_bytes"]))
            return rows
        if self.params["format"] == "arrow":
            was_off = datasets.utils.are_progress_bars_disabled()
            datasets.disable_progress_bars()
            try:
                dd = datasets.DatasetDict(
                    {s: datasets.Dataset.from_file(str(p)) for s, p in present.items()}
                )
                dd.save_to_disk(str(tmp), max_shard_size=limit)
            finally:
                if not was_off:
                    datasets.enable_progress_bars()
            return rows
        for split, path in present.items():
            table = read_table(path)
            (tmp / split).mkdir(parents=True)
            shard, written, writer = 0, 0, None
            for batch in table.to_batches(max_chunksize=10_000):
                if writer is None or written >= limit:
                    if writer is not None:
                        writer.close()
                    writer = pq.ParquetWriter(
                        str(tmp / split / f"part-{shard:05d}.parquet"), table.schema
                    )
                    shard, written = shard + 1, 0
                writer.write_batch(batch)
                written += batch.nbytes
            if writer is not None:
                writer.close()
        return rows


def load_card(uri: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The ``card.json`` of a prepared dataset, or None if there is none."""
    require_filesystem(uri, f"dataset {uri}")  # s3:// without fmlab[s3]
    fs, root = url_to_fs(uri, **(storage_options or {}))
    fs.invalidate_cache()  # a cached listing may predate the last write
    path = f"{root.rstrip('/')}/card.json"
    if not fs.isfile(path):
        return None
    with fs.open(path, "r") as fh:
        return json.load(fh)


def _refuse_foreign(fs: Any, root: str, uri: str) -> None:
    if fs.isdir(root) and fs.ls(root) and not fs.isfile(f"{root.rstrip('/')}/card.json"):
        raise PrepareError(
            f"output_dir={uri} exists, is not empty and is not an fmlab prepared dataset (no "
            "card.json); refusing to overwrite it. Choose another output_dir or empty it."
        )


def staging_dir(uri: str, work_dir: Path) -> Path:
    """Where to assemble the output before publishing (next to it when local: same disk)."""
    if is_remote(uri):
        return work_dir / "publish" / f"{os.getpid()}"
    path = Path(uri.removeprefix("file://")).expanduser().resolve()
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def publish(tmp: Path, uri: str, storage_options: dict[str, Any] | None = None) -> None:
    """Move the assembled dataset ``tmp`` to ``uri`` (see the module docstring)."""
    require_filesystem(uri, f"output_dir={uri}")
    fs, root = url_to_fs(uri, **(storage_options or {}))
    _refuse_foreign(fs, root, uri)
    if not is_remote(uri):
        final = Path(root)
        old = final.with_name(f".{final.name}.old{os.getpid()}")
        if final.exists():
            final.replace(old)
        tmp.replace(final)
        shutil.rmtree(old, ignore_errors=True)
        return
    card = f"{root.rstrip('/')}/card.json"
    if fs.exists(root):
        if fs.isfile(card):
            fs.rm(card)  # from here on readers see "incomplete" until the new card lands
        fs.rm(root, recursive=True)
    files = sorted(p for p in tmp.rglob("*") if p.is_file() and p.name != "card.json")
    targets = [f"{root.rstrip('/')}/{p.relative_to(tmp).as_posix()}" for p in files]
    fs.put([str(p) for p in files], targets)  # one call: s3fs uploads them concurrently
    fs.put_file(str(tmp / "card.json"), card)
    shutil.rmtree(tmp, ignore_errors=True)
