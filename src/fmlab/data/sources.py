"""Reading a text source into a :class:`datasets.Dataset` with a ``text`` column.

A source is a string:

- ``embedded:english`` / ``embedded:code`` — the corpora built from the Python installation;
- a local file or glob (``.txt``, ``.jsonl``, ``.json``, ``.csv``, ``.parquet``), or a directory of
  such files;
- a directory written by :meth:`datasets.Dataset.save_to_disk` (or a ``DatasetDict``);
- an ``s3://`` (or other fsspec) URI of any of these, listed as ``fmlab-prepare`` lists it (hidden
  and Athena side files skipped, extension-less Parquet recognised; see
  :mod:`fmlab.data.pipeline.read`), with credentials from the AWS environment or
  ``storage_options``;
- otherwise a Hugging Face Hub dataset name (needs network or a local HF cache).
"""

from __future__ import annotations

import glob as globlib
import json
from pathlib import Path

import datasets

from fmlab.config.validate import ConfigError
from fmlab.data.embedded import embedded_corpus_path
from fmlab.utils.remote import is_remote

__all__ = ["DataSourceError", "load_text_source"]

_BUILDERS = {
    ".txt": "text",
    ".jsonl": "json",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
}


class DataSourceError(ConfigError):
    """A source that cannot be read, with the source named in the message (a user error: the
    console scripts print it without a traceback)."""


def _files_of(source: str) -> list[str]:
    path = Path(source).expanduser()
    if path.is_file():
        return [str(path)]
    if path.is_dir():
        return sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in _BUILDERS)
    if globlib.has_magic(source):
        return sorted(p for p in globlib.glob(str(path), recursive=True) if Path(p).is_file())
    return []


def _looks_local(source: str) -> bool:
    return (
        Path(source).suffix.lower() in _BUILDERS
        or source.startswith(("/", "./", "../", "~"))
        or globlib.has_magic(source)
        or Path(source).expanduser().exists()
    )


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any(
        (path / name).is_file() for name in ("dataset_info.json", "state.json", "dataset_dict.json")
    )


def _load_remote(
    source: str, txt_sample_by: str, storage_options: dict | None
) -> datasets.Dataset | datasets.DatasetDict:
    """An ``s3://...`` file, prefix, glob or ``save_to_disk`` directory, read by the data
    pipeline's reader (not ``datasets.load_dataset``, which refuses any URL when
    ``HF_HUB_OFFLINE=1``, as on clusters that reach S3 but not the Hub)."""
    from fmlab.data.pipeline import PrepareError, SourceSpec
    from fmlab.data.pipeline.read import iter_rows, resolve_source
    from fmlab.data.pipeline.records import BadRow

    try:
        src = resolve_source(SourceSpec(path=source, txt_sample_by=txt_sample_by), storage_options)
    except PrepareError as err:
        raise DataSourceError(str(err)) from err
    if src.kind == "saved":
        return datasets.load_from_disk(source, storage_options=storage_options)
    if src.kind != "files":
        raise DataSourceError(f"source '{source}': no such file, or no data files there")
    rows = []
    for where, row in iter_rows(src):
        if isinstance(row, BadRow):
            raise DataSourceError(f"source '{source}': {where}: {row.detail}")
        rows.append(row if isinstance(row, dict) else {"text": row})
    if not rows:
        raise DataSourceError(f"source '{source}': the files there hold no rows")
    return datasets.Dataset.from_list(rows)


def _load_files(files: list[str], source: str, txt_sample_by: str, cache_dir: str | None):
    suffixes = {Path(f).suffix.lower() for f in files}
    unknown = suffixes - set(_BUILDERS)
    if unknown:
        raise DataSourceError(
            f"source '{source}': unsupported file type(s) {sorted(unknown)}; "
            f"expected one of {sorted(_BUILDERS)}"
        )
    builders = {_BUILDERS[s] for s in suffixes}
    if len(builders) > 1:
        raise DataSourceError(
            f"source '{source}' mixes file types {sorted(suffixes)}; give one source per type"
        )
    builder = builders.pop()
    kwargs = {"sample_by": txt_sample_by} if builder == "text" else {}
    try:
        return datasets.load_dataset(
            builder, data_files=files, split="train", cache_dir=cache_dir, **kwargs
        )
    except Exception as err:  # the datasets error names neither source nor row clearly
        where = _diagnose_json_lines(files) if builder == "json" else None
        reason = where or f"cannot read {builder} files: {str(err).strip().splitlines()[0]}"
        raise DataSourceError(f"source '{source}': {reason}") from err


def _diagnose_json_lines(files: list[str]) -> str | None:
    """The first line of a JSON-lines file that is not a JSON object, or whose field types
    disagree with earlier lines (what makes Arrow refuse it), as ``file:line: problem``."""
    for name in files:
        types: dict[str, tuple[str, int]] = {}
        try:
            with open(name, encoding="utf-8") as fh:
                for n, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except ValueError as err:
                        return f"{name}:{n}: not valid JSON ({err})"
                    if not isinstance(row, dict):
                        return f"{name}:{n}: expected a JSON object, got {type(row).__name__}"
                    for key, value in row.items():
                        if value is None:
                            continue
                        kind = type(value).__name__
                        first, at = types.setdefault(key, (kind, n))
                        if first != kind and {first, kind} != {"int", "float"}:
                            return (
                                f"{name}:{n}: field '{key}' is {kind} here but {first} on line "
                                f"{at}; one type per field"
                            )
        except UnicodeDecodeError as err:
            return f"{name}: not UTF-8 text ({err})"
    return None


def load_text_source(
    source: str,
    *,
    text_field: str = "text",
    split: str = "train",
    hf_name: str | None = None,
    txt_sample_by: str = "paragraph",
    cache_dir: str | None = None,
    storage_options: dict | None = None,
) -> datasets.Dataset:
    """Load ``source`` as a Dataset whose ``text`` column holds one document per row.

    Args:
        source: See the module docstring.
        text_field: Column holding the text (renamed to ``text``).
        split: Split to take from a ``DatasetDict`` or a Hub dataset.
        hf_name: Hub dataset configuration name.
        txt_sample_by: For ``.txt``: ``paragraph`` (blank-line separated), ``line`` or ``document``.
        cache_dir: fmlab cache directory (embedded corpora, HF datasets cache).
        storage_options: fsspec options for ``s3://`` sources (endpoint_url, ...).

    Raises:
        DataSourceError: When the source is missing, unreadable, or lacks ``text_field``.
    """
    hf_cache = str(Path(cache_dir) / "hf_datasets") if cache_dir else None
    if source.startswith("embedded:"):
        path = embedded_corpus_path(source.split(":", 1)[1], cache_dir or ".")
        ds = datasets.load_dataset(
            "json", data_files=[str(path)], split="train", cache_dir=hf_cache
        )
    elif is_remote(source) or _is_saved_dataset(Path(source).expanduser()):
        if is_remote(source):
            loaded = _load_remote(source, txt_sample_by, storage_options)
        else:
            loaded = datasets.load_from_disk(str(Path(source).expanduser()))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise DataSourceError(
                    f"source '{source}': no split '{split}' (has {sorted(loaded)})"
                )
            loaded = loaded[split]
        ds = loaded
    elif files := _files_of(source):
        ds = _load_files(files, source, txt_sample_by, hf_cache)
    elif _looks_local(source):
        raise DataSourceError(
            f"source '{source}': no such file, or no {sorted(_BUILDERS)} files match there"
        )
    else:
        try:
            ds = datasets.load_dataset(source, hf_name, split=split, cache_dir=hf_cache)
        except Exception as err:
            raise DataSourceError(
                f"source '{source}' is not a local file, glob or directory, and loading it as a "
                f"Hugging Face dataset failed: {err}"
            ) from err
    if text_field not in ds.column_names:
        raise DataSourceError(
            f"source '{source}': no column '{text_field}' (columns: {ds.column_names}); "
            "set text_field"
        )
    if text_field != "text":
        if "text" in ds.column_names:
            ds = ds.remove_columns("text")
        ds = ds.rename_column(text_field, "text")
    return ds
