"""Keeping secrets out of everything fmlab writes: configs, logs, summaries, model and data cards.

Two rules, applied together:

- by name: a value stored under a key that names a credential (``secret``, ``password``, ``token``,
  ``api_key``, ``access_key``, s3fs' ``key``/``secret``, ...) is replaced;
- by value: the value of every environment variable whose name looks like a credential
  (``WANDB_API_KEY``, ``AWS_SECRET_ACCESS_KEY``, ``HF_TOKEN``, ...) is replaced wherever it
  appears in a string (a config that interpolates ``${oc.env:...}`` into an ordinary field, a log
  line), and so is the password part of ``scheme://user:password@host`` URLs.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "REDACTED",
    "RedactingFilter",
    "protect_run_dir",
    "redact",
    "redact_text",
    "scrub_file",
]

REDACTED = "<redacted>"
_SECRET_PARTS = {"secret", "password", "passwd", "credential", "credentials", "apikey"}
_SECRET_KEYS = {"key", "api_key", "access_key", "access_key_id", "private_key", "auth"}
_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][\w+.-]*://[^:/@\s]+):([^@/\s]+)@")
_MIN_SECRET_LEN = 6  # shorter env values ("1", "true") would redact ordinary text


# A key named like these holds a credential. "token" alone is too broad for keys (eos_token,
# flops_per_token): only `token` itself or <auth-ish>_token counts.
_TOKEN_OWNERS = {
    "hf",
    "hub",
    "access",
    "auth",
    "api",
    "bearer",
    "session",
    "refresh",
    "id",
    "github",
    "gh",
    "wandb",
    "oauth",
    "private",
    "secret",
    "slack",
    "bot",
}


def is_secret_key(name: str) -> bool:
    """Whether a config/JSON key names a credential (``secret``, ``password``, ``api_key``,
    s3fs' ``key``/``secret``/``token``, ``hf_token``, ... but not ``eos_token``)."""
    low = str(name).lower()
    parts = re.split(r"[_\-.]", low)
    if low in _SECRET_KEYS or low == "token" or set(parts) & _SECRET_PARTS:
        return True
    if {"api", "key"} <= set(parts) or {"access", "key"} <= set(parts):
        return True
    return len(parts) > 1 and parts[-1] in ("token", "tokens") and parts[-2] in _TOKEN_OWNERS


def is_secret_env(name: str) -> bool:
    """Whether an environment variable looks like a credential (any ``*TOKEN*``, ``*SECRET*``,
    ``*PASSWORD*``, ``*API_KEY*``, ... name): its value is scrubbed wherever it appears."""
    parts = set(re.split(r"[_\-.]", str(name).lower()))
    return is_secret_key(name) or "token" in parts or ("key" in parts and len(parts) > 1)


def secret_values() -> list[str]:
    """Values of credential-looking environment variables, longest first."""
    values = {v for k, v in os.environ.items() if is_secret_env(k) and len(v) >= _MIN_SECRET_LEN}
    return sorted(values, key=len, reverse=True)


# `name: value` / `name=value` inside text (CLI overrides, flow-style YAML, JSON)
_ASSIGNMENT = re.compile(
    r"""(?P<name>["']?[\w.\-]+["']?)(?P<sep>\s*[:=]\s*)"""
    # ''x'': a quoted value inside a single-quoted YAML string (Hydra's overrides.yaml)
    r"""(?P<value>''[^']*''|'[^']*'|"[^"]*"|[^\s,}\]'"]+)"""
)


def _redact_assignment(m: re.Match) -> str:
    name = m.group("name").strip("'\"").rsplit(".", 1)[-1]
    value = m.group("value").strip("'\"")
    if not is_secret_key(name) or value in ("", "null", "None", REDACTED) or "${" in value:
        return m.group(0)
    return f"{m.group('name')}{m.group('sep')}{REDACTED}"


def redact_text(text: str, values: list[str] | None = None) -> str:
    """``text`` with secret environment values, ``secret_name=value`` assignments and URL
    passwords replaced."""
    for value in secret_values() if values is None else values:
        if value in text:
            text = text.replace(value, REDACTED)
    text = _ASSIGNMENT.sub(_redact_assignment, text)
    return _URL_PASSWORD.sub(rf"\1:{REDACTED}@", text)


def redact(obj: Any, values: list[str] | None = None) -> Any:
    """A copy of ``obj`` (dicts, lists, strings, ...) with secrets replaced by ``<redacted>``."""
    values = secret_values() if values is None else values
    if isinstance(obj, Mapping):
        return {
            k: REDACTED
            if is_secret_key(k) and v not in (None, "", REDACTED) and not isinstance(v, Mapping)
            else redact(v, values)
            for k, v in obj.items()
        }
    if isinstance(obj, list | tuple):
        return type(obj)(redact(v, values) for v in obj)
    if isinstance(obj, str):
        return redact_text(obj, values)
    return obj


def scrub_file(path: str | Path) -> None:
    """Rewrite a text file (e.g. Hydra's ``.hydra/overrides.yaml``) with secrets replaced."""
    path = Path(path)
    if not path.is_file():
        return
    text = path.read_text(errors="replace")
    scrubbed = redact_text(text)
    if scrubbed != text:
        path.write_text(scrubbed)


class RedactingFilter(logging.Filter):
    """A logging filter that removes secret values from records before any handler writes them."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


def protect_run_dir(run_dir: str | Path) -> None:
    """Scrub Hydra's copies of the config and overrides in ``run_dir/.hydra`` and make every
    logging handler drop secret values (Hydra's ``<task>.log`` file included)."""
    for name in ("config.yaml", "overrides.yaml", "hydra.yaml"):
        scrub_file(Path(run_dir) / ".hydra" / name)
    loggers = [logging.getLogger()] + [
        lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    for lg in loggers:
        for handler in lg.handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())
