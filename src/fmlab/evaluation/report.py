"""Collecting run summaries into tables (one row per run directory with a ``summary.json``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

__all__ = ["collect_runs", "markdown_table"]


def collect_runs(root: str | Path) -> list[dict[str, Any]]:
    """Every run under ``root``: its summary plus the Hydra overrides that made it.

    Runs are found by their ``summary.json``; overrides come from ``.hydra/overrides.yaml`` when
    present (``overrides`` key, a list of strings).
    """
    rows = []
    for summary in sorted(Path(root).rglob("summary.json")):
        row = json.loads(summary.read_text())
        overrides = summary.parent / ".hydra" / "overrides.yaml"
        row["overrides"] = yaml.safe_load(overrides.read_text()) if overrides.is_file() else []
        row["run_dir"] = str(summary.parent)
        rows.append(row)
    return rows


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A Markdown table of ``columns`` (missing values left blank)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
