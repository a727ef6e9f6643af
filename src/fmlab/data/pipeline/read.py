"""Read stage: resolve sources to files (local or any fsspec URL such as ``s3://``) and stream
their rows with the position of each (``file:line`` or ``file[row]``).

Rows that cannot be parsed (bad JSON or CSV, undecodable bytes) are yielded as
:class:`~fmlab.data.pipeline.records.BadRow` at their position instead of stopping the read, so the
structure stage can count them. Files are read one row at a time: memory stays bounded.

A directory (or S3 prefix) is read the way Hive, Spark, Glue and Athena read a table location, so
their outputs can be given as they are: files and folders whose name starts with ``_`` or ``.``
(``_SUCCESS``, ``_temporary/``, ``.crc``, ``*_$folder$``) and Athena's side files (``.metadata``,
``<query id>-manifest.csv``) are not data; files without an extension (Athena UNLOAD/CTAS) are
recognised by content (Parquet, or JSON lines, optionally gzip); ``key=value`` folders (Hive-style
partitions, ``dt=2024-01-01/``) become fields of each row, unless the row has that field itself.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from fsspec.core import url_to_fs

from fmlab.data.pipeline.records import BadRow, PrepareError, SourceSpec
from fmlab.data.pipeline.tables import not_data, partition_fields, sniff_format
from fmlab.utils.optional import require_filesystem

__all__ = ["FORMATS", "ResolvedSource", "iter_rows", "resolve_source"]

FORMATS = {".txt": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv"}
FORMATS[".parquet"] = "parquet"
_COMPRESSED = (".gz", ".bz2", ".zst", ".xz")
_SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
csv.field_size_limit(2**31 - 1)  # documents are longer than csv's 128 KiB default field limit


def _bare(path: str) -> bool:
    """Whether a file name has no extension but compression (Athena UNLOAD/CTAS output)."""
    suffixes = [s.lower() for s in PurePosixPath(path).suffixes]
    return all(s in _COMPRESSED for s in suffixes)


def _format_of(path: str) -> str | None:
    suffixes = [s.lower() for s in PurePosixPath(path).suffixes]
    if suffixes and suffixes[-1] in _COMPRESSED:
        suffixes = suffixes[:-1]
    return FORMATS.get(suffixes[-1]) if suffixes else None


@dataclass
class ResolvedSource:
    """A source after resolution: what to read and how to recognise a change."""

    spec: SourceSpec
    kind: str  # files | saved | hub
    files: list[str] = field(default_factory=list)
    identity: list[Any] = field(default_factory=list)
    fs: Any = None
    nbytes: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    alias: str | None = None  # how positions name the file (embedded corpora)
    # per file: (format, compression) found by content (no extension), Hive partition fields
    formats: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    partitions: dict[str, dict[str, str | None]] = field(default_factory=dict)


def _identity(fs: Any, path: str) -> tuple[Any, ...]:
    info = fs.info(path)
    stamp = info.get("ETag") or info.get("mtime") or info.get("LastModified") or info.get("created")
    return (path, info.get("size"), str(stamp))


def _is_saved(fs: Any, root: str) -> bool:
    return fs.isdir(root) and any(fs.isfile(f"{root.rstrip('/')}/{m}") for m in _SAVED_MARKERS)


def _looks_like_path(path: str) -> bool:
    return (
        "://" in path
        or path.startswith(("/", "./", "../", "~"))
        or any(c in path for c in "*?[")
        or _format_of(path) is not None
    )


def resolve_source(
    spec: SourceSpec, storage_options: dict[str, Any] | None = None, cache_dir: str = "."
) -> ResolvedSource:
    """Find the files of ``spec`` (without reading them).

    Raises:
        PrepareError: When nothing matches, or files have an unsupported type.
    """
    path = spec.path
    if path.startswith("embedded:"):
        from fmlab.data.embedded import embedded_corpus_path

        try:
            local = str(embedded_corpus_path(path.split(":", 1)[1], cache_dir))
        except ValueError as err:
            raise PrepareError(f"source '{path}': {err}") from err
        spec = spec.model_copy(update={"name": spec.name or path})
        path = local
    options = {**(storage_options or {}), **(spec.storage_options or {})}
    require_filesystem(path, f"source '{spec.path}'")  # s3:// without fmlab[s3]
    try:
        fs, root = url_to_fs(path, **options)
    except Exception as err:  # unknown protocol, missing optional dependency
        raise PrepareError(f"source '{spec.path}': cannot open {path}: {err}") from err
    # fsspec reuses filesystem objects with their listing cache: a second run in the same
    # process (a notebook) must see files added since, or the fingerprint would not change
    fs.invalidate_cache()
    try:
        if _is_saved(fs, root):
            files = sorted(f for f in fs.find(root) if fs.isfile(f))
            idents = [_identity(fs, f) for f in files]
            return ResolvedSource(spec, "saved", [path], idents, fs, options=options)
        base, skipped, is_dir = root, [], False
        if fs.isfile(root):
            files = [root]
            base = root.rsplit("/", 1)[0]
        elif is_dir := fs.isdir(root):  # a table location: hidden and side files are not data
            found = sorted(fs.find(root))
            skipped = [f for f in found if not_data(f[len(root) :])]
            files = [f for f in found if f not in set(skipped)]
        else:
            base = re.split(r"[*?\[]", root, maxsplit=1)[0].rsplit("/", 1)[0]
            found = sorted(f for f in fs.glob(root) if fs.isfile(f))
            files = [f for f in found if not not_data(f.rsplit("/", 1)[-1])]
        formats = {f: sniff_format(fs, f) for f in files if _bare(f) and fs.size(f)}
        if is_dir:  # other formats in a directory are skipped (README.md, *.metadata)
            skipped += [f for f in files if _format_of(f) is None and not formats.get(f)]
            files = [f for f in files if _format_of(f) or formats.get(f)]
    except PrepareError:
        raise
    except Exception as err:  # network, permissions, missing bucket
        raise PrepareError(f"source '{spec.path}': cannot list {path}: {err}") from err
    if not files:
        if _looks_like_path(spec.path):
            ignored = ""
            if skipped:
                names = ", ".join(f.rsplit("/", 1)[-1] for f in skipped[:3])
                more = ", ..." if len(skipped) > 3 else ""
                ignored = f" ({len(skipped)} other files ignored: {names}{more})"
            raise PrepareError(
                f"source '{spec.path}': no such file, or no {sorted(FORMATS)} files match "
                f"there{ignored}"
            )
        return ResolvedSource(
            spec, "hub", [spec.path], [(spec.path, spec.hf_name, spec.read_split)]
        )
    unknown = sorted({f for f in files if _format_of(f) is None and not formats.get(f)})
    if unknown:
        raise PrepareError(
            f"source '{spec.path}': unsupported file type: {unknown[0]} "
            f"(expected {sorted(FORMATS)}, optionally compressed {list(_COMPRESSED)})"
        )
    parts = {f: p for f in files if (p := partition_fields(f[len(base) :]))}
    formats = {f: v for f, v in formats.items() if v}
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol not in ("file", "local"):
        parts = {fs.unstrip_protocol(f): p for f, p in parts.items()}
        formats = {fs.unstrip_protocol(f): v for f, v in formats.items()}
        files = [fs.unstrip_protocol(f) for f in files]
    idents = [_identity(fs, f) for f in files]
    nbytes = sum(int(i[1] or 0) for i in idents)
    alias = None
    if spec.path.startswith("embedded:"):
        alias = spec.label
        # built deterministically; its name carries the recipe and Python version: the same
        # corpus in another cache directory (or rebuilt later) is the same input
        idents = [(Path(f).name, size) for f, size, _ in idents]
    return ResolvedSource(spec, "files", files, idents, fs, nbytes, options, alias, formats, parts)


# ---------------------------------------------------------------------------- row iterators
Row = tuple[str, Any]  # (where, parsed row or BadRow)


def _jsonl_lines(lines: Iterator[bytes], name: str, first: int = 1) -> Iterator[Row]:
    for lineno, raw in enumerate(lines, first):
        raw = raw.rstrip(b"\r\n")
        if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # UTF-8 byte order mark
        if not raw.strip():
            continue
        where = f"{name}:{lineno}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            yield where, BadRow("invalid_utf8", f"byte {err.start}: {err.reason}")
            continue
        try:
            yield where, json.loads(text)
        except json.JSONDecodeError as err:
            yield where, BadRow("unparsable", f"invalid JSON: {err.msg} (column {err.colno})")


def _json_file(raw: bytes, name: str) -> Iterator[Row]:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        yield f"{name}:{line}", BadRow("invalid_utf8", f"byte {err.start}: {err.reason}")
        return
    decoder = json.JSONDecoder()
    body = text.lstrip()
    offset = len(text) - len(body)
    if not body.startswith("["):
        try:
            obj = json.loads(body)
        except json.JSONDecodeError as err:
            if err.msg == "Extra data":  # several values: JSON Lines in a .json file
                yield from _jsonl_lines(iter(raw.splitlines()), name)
                return
            yield f"{name}:{err.lineno}", BadRow("unparsable", f"invalid JSON: {err.msg}")
            return
        lists = [v for v in obj.values() if isinstance(v, list)] if isinstance(obj, dict) else []
        if len(lists) == 1 and len(obj) == 1:  # {"data": [...]}
            for i, item in enumerate(lists[0]):
                yield f"{name}[{i}]", item
        else:
            yield f"{name}:1", obj
        return
    # a top-level array: decode element by element to know the line of each (and of an error)
    pos, line, last = offset + 1, 1 + text.count("\n", 0, offset), offset
    n = len(text)
    while True:
        while pos < n and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= n or text[pos] == "]":
            return
        line += text.count("\n", last, pos)
        last = pos
        try:
            item, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            yield f"{name}:{err.lineno}", BadRow("unparsable", f"invalid JSON: {err.msg}")
            return  # the rest of an array cannot be resynchronised
        yield f"{name}:{line}", item


def _csv_rows(fh: Any, name: str) -> Iterator[Row]:
    text = io.TextIOWrapper(fh, encoding="utf-8-sig", errors="surrogateescape", newline="")
    reader = csv.reader(text)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as err:
        yield f"{name}:1", BadRow("unparsable", f"CSV header: {err}")
        return
    start = reader.line_num + 1
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            yield f"{name}:{start}", BadRow("unparsable", f"CSV: {err}")
            start = reader.line_num + 1
            continue
        where, start = f"{name}:{start}", reader.line_num + 1
        if not values:
            continue
        if len(values) != len(header):
            detail = f"{len(values)} fields where the header has {len(header)}"
            yield where, BadRow("unparsable", detail)
            continue
        yield where, dict(zip(header, values))


def _txt_rows(fh: Any, name: str, sample_by: str) -> Iterator[Row]:
    def lines() -> Iterator[tuple[int, str]]:
        for lineno, raw in enumerate(fh, 1):
            yield lineno, raw.decode("utf-8", errors="surrogateescape").rstrip("\r\n")

    if sample_by == "document":
        text = fh.read().decode("utf-8", errors="surrogateescape")
        yield f"{name}:1", text
        return
    if sample_by == "line":
        for lineno, line in lines():
            if line.strip():
                yield f"{name}:{lineno}", line
        return
    para: list[str] = []
    first = 0
    for lineno, line in lines():
        if line.strip():
            if not para:
                first = lineno
            para.append(line)
        elif para:
            yield f"{name}:{first}", "\n".join(para)
            para = []
    if para:
        yield f"{name}:{first}", "\n".join(para)


def _parquet_rows(fh: Any, name: str) -> Iterator[Row]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(fh)
    except Exception as err:
        yield f"{name}[0]", BadRow("unparsable", f"not a Parquet file: {err}")
        return
    i = 0
    for batch in pf.iter_batches(batch_size=1000):
        for row in batch.to_pylist():
            yield f"{name}[{i}]", row
            i += 1


def _with_partitions(rows: Iterator[Row], fields: dict[str, str | None]) -> Iterator[Row]:
    for where, row in rows:
        if isinstance(row, dict):
            for key, value in fields.items():
                row.setdefault(key, value)
        yield where, row


def _file_rows(src: ResolvedSource, path: str) -> Iterator[Row]:
    if path in src.partitions:
        yield from _with_partitions(_plain_file_rows(src, path), src.partitions[path])
    else:
        yield from _plain_file_rows(src, path)


def _plain_file_rows(src: ResolvedSource, path: str) -> Iterator[Row]:
    fmt, compression = src.formats.get(path) or (_format_of(path), "infer")
    name = src.alias or path
    with src.fs.open(path, "rb", compression=compression) as fh:
        if fmt == "jsonl":
            yield from _jsonl_lines(iter(fh), name)
        elif fmt == "json":
            yield from _json_file(fh.read(), name)
        elif fmt == "csv":
            yield from _csv_rows(fh, name)
        elif fmt == "txt":
            yield from _txt_rows(fh, name, src.spec.txt_sample_by)
        else:
            yield from _parquet_rows(fh, name)


def _dataset_rows(ds: Any, name: str) -> Iterator[Row]:
    i = 0
    for batch in ds.iter(batch_size=1000):
        keys = list(batch)
        for values in zip(*(batch[k] for k in keys)):
            yield f"{name}[{i}]", dict(zip(keys, values))
            i += 1


def iter_rows(src: ResolvedSource, cache_dir: str | None = None) -> Iterator[Row]:
    """Yield ``(where, row)`` for every row of a resolved source, in a deterministic order."""
    import datasets

    spec = src.spec
    if src.kind == "files":
        for path in src.files:
            yield from _file_rows(src, path)
        return
    if src.kind == "saved":
        try:
            loaded = datasets.load_from_disk(spec.path, storage_options=src.options or None)
        except Exception as err:
            raise PrepareError(
                f"source '{spec.path}': cannot load the saved dataset: {err}"
            ) from err
        if isinstance(loaded, datasets.DatasetDict):
            if spec.read_split not in loaded:
                raise PrepareError(
                    f"source '{spec.path}': no split '{spec.read_split}' (has {sorted(loaded)})"
                )
            loaded = loaded[spec.read_split]
        yield from _dataset_rows(loaded, spec.label)
        return
    try:  # a Hub dataset, streamed so that memory stays bounded
        ds = datasets.load_dataset(
            spec.path, spec.hf_name, split=spec.read_split, streaming=True, cache_dir=cache_dir
        )
        rows = iter(ds)
        first = next(rows, None)
    except Exception as err:
        raise PrepareError(
            f"source '{spec.path}' is not a local file, glob, directory or URL, and loading it as "
            f"a Hugging Face dataset failed: {err}"
        ) from err
    if first is None:
        return
    yield f"{spec.label}[0]", first
    for i, row in enumerate(rows, 1):
        yield f"{spec.label}[{i}]", row
