"""File writes that never leave a half-written file behind."""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from fmlab.utils.secrets import redact, redact_text

__all__ = ["atomic_write_text", "write_json"]


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to a temporary file in the same directory, then rename it over ``path``.

    Secret values (credential environment variables, URL passwords) never reach the file.
    """
    text = redact_text(text)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them readable instead of invalid
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item"):
        return _jsonable(value.item())
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    """Atomically write ``data`` as indented, strictly valid JSON (credentials redacted)."""
    data = redact(_jsonable(data))
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


_DISK_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
_DISK_MESSAGES = ("No space left", "File too large", "Disk quota")


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` is a write refused for lack of space (ENOSPC, EFBIG, EDQUOT), also as
    pyarrow/datasets report it (an ``OSError`` that carries only the message)."""
    return isinstance(err, OSError) and (
        err.errno in _DISK_ERRNOS or any(m in str(err) for m in _DISK_MESSAGES)
    )
