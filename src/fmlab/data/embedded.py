"""The embedded default corpora, built from text every Python installation carries.

- ``english``: the interactive-help topics of ``pydoc_data`` plus the longer docstrings of the
  standard library (parsed with :mod:`ast`, nothing is imported), cut into paragraph-aligned
  documents of about ``target_chars`` characters. General technical English.
- ``code``: the standard library's own Python source, one document per chunk of a file. A second
  domain for domain adaptation.

Both are deterministic for a given Python installation (files are walked in sorted order) and are
cached as JSONL under the fmlab cache directory.
"""

from __future__ import annotations

import ast
import hashlib
import json
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

__all__ = ["CORPORA", "embedded_corpus_path", "iter_embedded"]

CORPORA = ("english", "code")
_SKIP_TOP = {
    "site-packages",
    "dist-packages",
    "test",
    "idlelib",
    "lib2to3",
    "turtledemo",
    "ensurepip",
}
_MIN_DOCSTRING = 200
_VERSION = 2  # bump when the recipe changes, so caches rebuild


def _stdlib_files() -> list[tuple[str, Path]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] in _SKIP_TOP or "tests" in rel.parts:
            continue
        out.append((rel.as_posix(), path))
    return out


def _chunks(text: str, target_chars: int) -> Iterator[str]:
    """Split ``text`` at blank lines into pieces of about ``target_chars`` (never mid-paragraph)."""
    buf: list[str] = []
    size = 0
    for para in text.split("\n\n"):
        if size and size + len(para) > target_chars:
            yield "\n\n".join(buf).strip()
            buf, size = [], 0
        buf.append(para)
        size += len(para) + 2
    if buf and (joined := "\n\n".join(buf).strip()):
        yield joined


def _english(target_chars: int) -> Iterator[dict]:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        for i, chunk in enumerate(_chunks(topics[name], target_chars)):
            yield {"text": chunk, "source": f"pydoc:{name}", "id": f"pydoc:{name}:{i}"}
    for rel, path in _stdlib_files():
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(
                node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
            ):
                continue
            doc = ast.get_docstring(node)
            if doc and len(doc) >= _MIN_DOCSTRING:
                name = f"{getattr(node, 'name', '<module>')}@{getattr(node, 'lineno', 0)}"
                for i, chunk in enumerate(_chunks(doc, target_chars)):
                    yield {"text": chunk, "source": f"doc:{rel}", "id": f"doc:{rel}:{name}:{i}"}


def _code(target_chars: int) -> Iterator[dict]:
    for rel, path in _stdlib_files():
        try:
            src = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, ValueError):
            continue
        for i, chunk in enumerate(_chunks(src, target_chars)):
            yield {"text": chunk, "source": f"src:{rel}", "id": f"src:{rel}:{i}"}


def iter_embedded(name: str, target_chars: int = 2000) -> Iterator[dict]:
    """Yield the records (``text``, ``source``, ``id``) of an embedded corpus, without caching."""
    if name == "english":
        yield from _english(target_chars)
    elif name == "code":
        yield from _code(target_chars)
    else:
        raise ValueError(f"unknown embedded corpus '{name}'; expected one of {CORPORA}")


def embedded_corpus_path(name: str, cache_dir: str | Path, target_chars: int = 2000) -> Path:
    """Build (once) and return the JSONL file of an embedded corpus.

    The file name carries a key of the Python version and recipe, so another interpreter or a new
    recipe builds its own file. Writes go through a temporary file and an atomic rename.
    """
    if name not in CORPORA:
        raise ValueError(f"unknown embedded corpus '{name}'; expected one of {CORPORA}")
    stdlib = sysconfig.get_paths()["stdlib"]
    key = hashlib.sha1(
        f"{_VERSION}|{name}|{target_chars}|{sys.version}|{stdlib}".encode()
    ).hexdigest()[:12]
    out = Path(cache_dir) / "embedded" / f"{name}-{key}.jsonl"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".tmp{id(out)}")
    with tmp.open("w", encoding="utf-8") as fh:
        for rec in iter_embedded(name, target_chars):
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    tmp.replace(out)
    return out
