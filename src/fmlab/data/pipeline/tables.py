"""Table locations as Hive, Spark, Glue and Athena write them to S3 (or any filesystem).

What :mod:`fmlab.data.pipeline.read` needs to read such a prefix as those engines do: which files
are not data, the format of files without an extension, and Hive-style partition folders.
"""

from __future__ import annotations

import re
import zlib
from typing import Any
from urllib.parse import unquote

__all__ = ["not_data", "partition_fields", "sniff_format"]

_ATHENA_MANIFEST = re.compile(r"^[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}-manifest\.csv$")
_HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"


def not_data(rel: str) -> bool:
    """Whether a file found under a source directory (``rel``: its path below it) is not data:
    hidden (a part starts with ``_`` or ``.``), an S3 folder marker, or an Athena manifest."""
    parts = rel.strip("/").split("/")
    return (
        any(p.startswith(("_", ".")) for p in parts)
        or parts[-1].endswith("_$folder$")
        or bool(_ATHENA_MANIFEST.match(parts[-1]))
    )


def sniff_format(fs: Any, path: str) -> tuple[str, str | None] | None:
    """(format, compression) of a file without a known extension, from its first bytes."""
    head = fs.cat_file(path, start=0, end=4096)
    if head[:4] == b"PAR1":
        return "parquet", None
    compression = None
    if head[:2] == b"\x1f\x8b":
        head, compression = zlib.decompressobj(wbits=31).decompress(head), "gzip"
    return ("jsonl", compression) if head.lstrip().startswith(b"{") else None


def partition_fields(rel: str) -> dict[str, str | None]:
    """Hive-style ``key=value`` folders of ``rel`` (a file's path below the source root)."""
    found = {}
    for part in rel.strip("/").split("/")[:-1]:
        key, eq, value = part.partition("=")
        if eq and key:
            value = unquote(value)
            found[unquote(key)] = None if value == _HIVE_NULL else value
    return found
