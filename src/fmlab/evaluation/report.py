"""Sweep results as tables: collect run summaries, group over seeds, select on validation only.

One run = one directory with a ``summary.json`` (fmlab-train writes it, also for a failed run).
Its configuration is named by the Hydra overrides that vary across the sweep, seeds excluded,
so repeated seeds of one configuration form one group (mean ± std, n).
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "Group",
    "collect_runs",
    "group_runs",
    "higher_is_better",
    "markdown_table",
    "mean_std",
    "select_best",
    "write_csv",
]

# Keys a sweep varies that do not define a configuration.
IGNORED_KEYS = ("seed", "hydra.", "paths.", "print_config", "callbacks.progress_bar")


def _split(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        return {"status": "failed", "error": f"unreadable summary.json: {err}"}


def collect_runs(root: str | Path, ignore: Sequence[str] = IGNORED_KEYS) -> list[dict[str, Any]]:
    """Every run under ``root``: its summary, overrides, seed, status and configuration label.

    Args:
        root: A sweep directory (or any directory holding run directories).
        ignore: Override keys (or key prefixes ending in ``.``) that do not name a configuration.

    Returns:
        One dict per run, sorted by directory; ``config`` is the label of its configuration
        (the overrides that vary across ``root``, minus ``ignore``), ``common`` the others.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    rows = []
    for summary in sorted(root.rglob("summary.json"), key=lambda p: _natural(p.parent, root)):
        if "report" in summary.relative_to(root).parts[:-1]:  # our own test evaluations
            continue
        row = _read_json(summary)
        run = summary.parent
        overrides_file = run / ".hydra" / "overrides.yaml"
        row["overrides"] = (
            yaml.safe_load(overrides_file.read_text()) or [] if overrides_file.is_file() else []
        )
        row["run_dir"] = str(run)
        row["run"] = str(run.relative_to(root)) if run != root else run.name
        row.setdefault("status", "ok")
        row["seed"] = _seed(row, run)
        rows.append(row)
    if not rows:
        raise FileNotFoundError(f"{root}: no run directory with a summary.json below it")
    _label(rows, ignore)
    return rows


def _natural(path: Path, root: Path) -> tuple:
    return tuple(
        (0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.relative_to(root).parts
    )


def _seed(row: dict[str, Any], run: Path) -> int | None:
    for override in row["overrides"]:
        key, value = _split(override)
        if key == "seed":
            return int(value)
    config = run / "config.yaml"
    if config.is_file():
        return (yaml.safe_load(config.read_text()) or {}).get("seed")
    return None


def _ignored(key: str, ignore: Sequence[str]) -> bool:
    return any(key == i or (i.endswith(".") and key.startswith(i)) for i in ignore)


def _label(rows: list[dict[str, Any]], ignore: Sequence[str]) -> None:
    values: dict[str, set[str]] = {}
    for row in rows:
        for key, value in map(_split, row["overrides"]):
            values.setdefault(key, set()).add(value)
    varying = {
        k for k, v in values.items() if not _ignored(k, ignore) and (len(v) > 1 or len(rows) == 1)
    }
    # a key absent from some runs also varies
    varying |= {
        k
        for k in values
        if not _ignored(k, ignore) and any(k not in dict(map(_split, r["overrides"])) for r in rows)
    }
    for row in rows:
        parts = dict(map(_split, row["overrides"]))
        row["config"] = " ".join(f"{k}={parts[k]}" for k in sorted(varying) if k in parts) or "-"
        row["common"] = " ".join(
            f"{k}={v}" for k, v in parts.items() if k not in varying and not _ignored(k, ignore)
        )


def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count; NaNs are left out."""
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not xs:
        return math.nan, math.nan, 0
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0, len(xs)


class Group(dict):
    """One configuration: ``config``, ``runs`` (ok), ``failed``, ``<metric>`` -> (mean, std, n)."""


def group_runs(rows: Sequence[dict[str, Any]], metrics: Sequence[str]) -> list[Group]:
    """Group runs by configuration, in order of first appearance, with statistics of ``metrics``."""
    groups: dict[str, Group] = {}
    for row in rows:
        g = groups.setdefault(row["config"], Group(config=row["config"], runs=[], failed=[]))
        (g["runs"] if row["status"] == "ok" else g["failed"]).append(row)
    for g in groups.values():
        for metric in metrics:
            g[metric] = mean_std(r.get(metric) for r in g["runs"])
    return list(groups.values())


def higher_is_better(metric: str) -> bool:
    """Losses, perplexities and errors are minimised; accuracies, exact match etc. maximised."""
    name = metric.rsplit("/", 1)[-1].lower()
    return not any(w in name for w in ("loss", "ppl", "perplexity", "error", "wer", "cer"))


def select_best(
    groups: Sequence[Group], metric: str, *, maximize: bool | None = None, top: int = 1
) -> list[Group]:
    """The ``top`` groups by the mean of ``metric``, which must be a validation metric.

    Raises:
        ValueError: If ``metric`` is not ``val/...`` or no group has a value for it.
    """
    if not metric.startswith("val/"):
        raise ValueError(f"--metric {metric}: selection uses validation metrics only (val/...)")
    scored = [g for g in groups if g.get(metric) and g[metric][2] > 0]
    if not scored:
        found = sorted({k for g in groups for r in g["runs"] for k in r if k.startswith("val/")})
        raise ValueError(f"--metric {metric}: no successful run reports it (found {found})")
    up = higher_is_better(metric) if maximize is None else maximize
    return sorted(scored, key=lambda g: g[metric][0], reverse=up)[:top]


def fmt(value: Any) -> str:
    """A table cell: floats to 4 significant digits, (mean, std, n) as ``m ± s (n)``."""
    if isinstance(value, tuple) and len(value) == 3:
        m, s, n = value
        return "" if n == 0 else f"{fmt(m)} ± {fmt(s)} (n={n})"
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A Markdown table of ``columns`` (missing values left blank)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_csv(path: str | Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> Path:
    """Write ``columns`` of ``rows`` as CSV; (mean, std, n) cells become three columns."""
    path = Path(path)
    header: list[str] = []
    for c in columns:
        sample = next((r[c] for r in rows if isinstance(r.get(c), tuple)), None)
        header += [f"{c} mean", f"{c} std", f"{c} n"] if sample is not None else [c]
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for r in rows:
            cells: list[Any] = []
            for c in columns:
                v = r.get(c)
                if f"{c} mean" in header:
                    cells += list(v) if isinstance(v, tuple) else ["", "", 0]
                else:
                    cells.append("" if v is None else v)
            writer.writerow(cells)
    return path
