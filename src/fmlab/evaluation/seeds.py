"""Repeated runs over seeds: mean ± std per condition, and whether two conditions differ.

The studies (``scripts/*_study.py``) run every condition with several seeds and report
``mean ± std`` (sample standard deviation). A difference between two conditions counts as larger
than the seed spread when their ``mean ± std`` intervals do not overlap
(``|m_a − m_b| > s_a + s_b``) — a deliberately plain rule for three seeds, not a significance test.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fmlab.evaluation.report import mean_std

__all__ = ["Stat", "aggregate", "band", "fmt", "separated"]

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
