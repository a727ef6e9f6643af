"""Dates of records: time periods, date windows and the undated-record policy.

Records carry ``date`` as an ISO ``YYYY-MM-DD`` string (or null), so dates compare as strings.
A *window* is ``(after, before]``: ``after`` is exclusive and ``before`` inclusive, so a release
with data cutoff ``C`` (the last date it holds) is followed by the window ``(C, ...]`` and no day
is counted twice or skipped. Periods are labelled ``2024-07`` (month), ``2024Q3`` (quarter) and
``2024`` (year); labels of one unit sort in time order.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc

from fmlab.data.pipeline.records import PrepareError

__all__ = [
    "PERIODS",
    "Undated",
    "Unit",
    "iso",
    "period_bounds",
    "period_of",
    "previous_day",
    "undated_error",
    "window_batch",
]

Unit = Literal["month", "quarter", "year"]
Undated = Literal["keep", "drop", "error"]
PERIODS: tuple[str, ...] = ("month", "quarter", "year")


def iso(value: dt.date | str | None) -> str | None:
    """``YYYY-MM-DD`` of a date (or ISO string), None for None."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        value = value.date()
    if isinstance(value, str):
        value = dt.date.fromisoformat(value.strip()[:10])
    return value.isoformat()


def previous_day(value: dt.date | str) -> str:
    """The day before ``value`` (the exclusive ``after`` bound of a window starting there)."""
    return (dt.date.fromisoformat(iso(value)) - dt.timedelta(days=1)).isoformat()


def period_of(date: str, unit: Unit) -> str:
    """The label of the period of ``unit`` holding ``date`` (``YYYY-MM-DD``)."""
    year, month = date[:4], int(date[5:7])
    if unit == "year":
        return year
    if unit == "quarter":
        return f"{year}Q{(month - 1) // 3 + 1}"
    if unit == "month":
        return f"{year}-{month:02d}"
    raise ValueError(f"unknown period unit {unit!r}; expected one of {PERIODS}")


def period_bounds(label: str) -> tuple[str, str]:
    """First and last day (both inclusive) of a period label of :func:`period_of`."""
    if "Q" in label:
        year, q = int(label[:4]), int(label[5:])
        first, last_month = dt.date(year, 3 * q - 2, 1), 3 * q
    elif "-" in label:
        year, month = int(label[:4]), int(label[5:7])
        first, last_month = dt.date(year, month, 1), month
    else:
        year = int(label)
        first, last_month = dt.date(year, 1, 1), 12
    after_last = dt.date(year + last_month // 12, last_month % 12 + 1, 1)
    return first.isoformat(), (after_last - dt.timedelta(days=1)).isoformat()


def undated_error(n: int, examples: list[str], where: str) -> PrepareError:
    """The error of ``undated=error``: how many, which, and the fix."""
    shown = ", ".join(examples[:3])
    return PrepareError(
        f"{where}.undated=error: {n} record(s) have no date (e.g. {shown}); give their source a "
        f"date_field, or set {where}.undated=keep (keep them) or drop (drop them)"
    )


def window_batch(
    batch: pa.RecordBatch, after: str | None, before: str | None, undated: Undated
) -> tuple[pa.RecordBatch, Counter]:
    """Records of ``batch`` dated in ``(after, before]``, and the removal reasons counted.

    Reasons: ``before_window`` (dated on or before ``after``), ``after_window`` (dated after
    ``before``) and ``undated`` (no date, with ``undated=drop``). Undated records pass with
    ``keep``; ``error`` raises :class:`PrepareError` naming them.
    """
    dates = batch.column("date")
    missing = pc.is_null(dates)
    n_missing = int(pc.sum(missing).as_py() or 0)
    if n_missing and undated == "error":
        ids = batch.filter(missing).column("id").to_pylist()
        raise undated_error(n_missing, ids, "filter")
    everything = pa.array([True] * batch.num_rows, type=pa.bool_())
    keep = pc.invert(missing) if undated == "drop" else everything
    counts: Counter = Counter()
    if undated == "drop" and n_missing:
        counts["undated"] = n_missing
    early = pc.fill_null(pc.less_equal(dates, after), False) if after else None
    late = pc.fill_null(pc.greater(dates, before), False) if before else None
    for reason, mask in (("before_window", early), ("after_window", late)):
        if mask is not None:
            counts[reason] = int(pc.sum(mask).as_py() or 0)
            keep = pc.and_(keep, pc.invert(mask))
    return batch.filter(keep), +counts
