"""Repeated runs over seeds: mean ± std per condition, and whether two conditions differ.

The studies (``scripts/*_study.py``) run every condition with several seeds and report
``mean ± std`` (sample standard deviation). A difference between two conditions counts as larger
than the seed spread when their ``mean ± std`` intervals do not overlap
(``|m_a − m_b| > s_a + s_b``) — a deliberately plain rule for three seeds, not a significance test.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fmlab.evaluation.report import mean_std

__all__ = ["Stat", "aggregate", "band", "default_base", "fmt", "separated", "train_once"]

Stat = tuple[float, float, int]  # (mean, sample std, n)


def aggregate(runs: Sequence[Mapping[str, Any]], keys: Iterable[str]) -> dict[str, Stat]:
    """``key -> (mean, std, n)`` over ``runs`` (one mapping per seed; missing values left out)."""
    return {k: mean_std(r.get(k) for r in runs) for k in keys}


def fmt(stat: Stat, digits: int = 3, *, sign: bool = False, suffix: str = "") -> str:
    """``"0.930 ± 0.012"`` (``sign``: ``"+31.3 ± 2.1"``); ``n`` is stated once per table."""
    mean, std, n = stat
    if n == 0 or math.isnan(mean):
        return "–"
    head = f"{mean:+.{digits}f}" if sign else f"{mean:.{digits}f}"
    return f"{head}{suffix} ± {std:.{digits}f}{suffix}"


def separated(a: Stat, b: Stat) -> bool:
    """Whether ``a`` and ``b`` differ by more than their seed spreads (intervals do not overlap)."""
    return abs(a[0] - b[0]) > a[1] + b[1]


def band(curves: Sequence[tuple[Sequence[int], Sequence[float]]]) -> tuple[list, list, list]:
    """Mean and std of several ``(steps, values)`` curves at the steps they all share.

    Returns:
        ``(steps, means, stds)`` over the common steps, in order.
    """
    common = sorted(set.intersection(*(set(s) for s, _ in curves))) if curves else []
    lookup = [dict(zip(s, v, strict=True)) for s, v in curves]
    stats = [mean_std(d[step] for d in lookup) for step in common]
    return common, [m for m, _, _ in stats], [s for _, s, _ in stats]


def train_once(run_dir: Path, overrides: Sequence[str]) -> dict[str, Any]:
    """``fmlab-train`` in this process into ``run_dir``, unless a finished run is already there.

    A study re-run with more seeds (or after an interruption) reuses every finished run: one
    whose ``summary.json`` says ``ok``.
    """
    done = Path(run_dir) / "summary.json"
    if done.is_file() and json.loads(done.read_text()).get("status", "ok") == "ok":
        return json.loads(done.read_text())
    from fmlab.config import compose_config
    from fmlab.train import train

    quiet = ["print_config=false", "callbacks.progress_bar=null"]
    return train(compose_config("train", [*quiet, *overrides], output_dir=run_dir))


def default_base(runs: Path) -> str:
    """The default pre-trained model (``fmlab-train`` with no arguments) in ``runs/base``;
    returns its export directory."""
    train_once(Path(runs) / "base", ["run_test=false"])
    return str(Path(runs) / "base" / "export")
