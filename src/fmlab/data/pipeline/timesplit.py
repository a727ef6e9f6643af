"""``split.by=date``: hold out the latest records, so that evaluation measures the future.

Records dated after ``heldout_after`` (exclusive; default: the day before the latest
``period`` present in the data begins) are held out; the rest are ``train``. The held-out
records are divided between validation and test in time when ``test_after`` is given
(``(heldout_after, test_after]`` → validation, later → test), else by the content hash in the
ratio ``val_fraction : test_fraction`` (both then measure the same future period).

Undated records cannot be from the future: they stay in ``train`` (counted; use
``filter.undated=drop`` or ``error`` to exclude or refuse them instead). Records of a source that
declares its split keep it; the held-out records go to the split(s) no source declares (all to
train when sources declare both), and only undeclared sources set the held-out bound.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from fmlab.data.pipeline.dates import period_bounds, period_of, previous_day
from fmlab.data.pipeline.engine import ArrowSink, Runner
from fmlab.data.pipeline.records import PrepareError, content_of
from fmlab.data.splits import split_of

__all__ = ["date_labels", "heldout_bound", "run_date_split", "write_labelled"]


def heldout_bound(dates: pa.ChunkedArray | pa.Array, period: str, given: str | None) -> str:
    """``heldout_after``: ``given``, else the day before the latest ``period`` of ``dates`` begins.

    Raises:
        PrepareError: No record has a date, or nothing would be left for training.
    """
    valid = pc.drop_null(dates)
    if not len(valid):
        raise PrepareError(
            "split.by=date: no record has a date (set date_field on the sources, or split by "
            "hash with split.by=auto)"
        )
    lo, hi = (pc.min_max(valid).as_py()[k] for k in ("min", "max"))
    bound = given or previous_day(period_bounds(period_of(hi, period))[0])
    if lo > bound:
        raise PrepareError(
            f"split.by=date: every dated record ({lo} .. {hi}) is after the held-out bound "
            f"{bound}, so training would get none; set split.heldout_after to an earlier day or "
            f"use a shorter split.period (now '{period}')"
        )
    return bound


def date_labels(
    dates: list[str | None],
    keys: list[str],
    sources: list[str],
    heldout_after: str,
    test_after: str | None,
    vf: float,
    tf: float,
    salt: str,
    declared: dict[str, str],
) -> list[str]:
    """``train``/``validation``/``test`` of each record by its date (see the module docstring).

    Args:
        dates, keys, sources: Per record: its date, the content hashed, its source label.
        heldout_after, test_after: The bounds (``test_after`` None: divide by hash).
        vf, tf: Validation/test fractions of undeclared sources (0 where a source declares it).
        salt: Salt of the hash.
        declared: Source label → declared split.
    """
    named = set(declared.values())
    held_splits = {"validation", "test"} - named
    test_share = tf / (vf + tf) if vf + tf else float("validation" not in held_splits)
    labels = []
    for date, key, src in zip(dates, keys, sources):
        if src in declared:
            labels.append(declared[src])
        elif date is None or date <= heldout_after or not held_splits:
            labels.append("train")
        elif test_after is not None and held_splits == {"validation", "test"}:
            labels.append("test" if date > test_after else "validation")
        else:  # by the content hash, in the ratio of the fractions
            labels.append(split_of(key, 1.0 - test_share, test_share, salt))
    return labels


def _label_batch(
    batch: pa.RecordBatch, kind: str, by: str, declared: dict[str, str], **bounds: Any
) -> pa.RecordBatch:
    cols = batch.to_pydict()
    keys = cols["prompt"] if kind == "sft" else content_of(cols, kind)
    labels = date_labels(cols["date"], keys, cols["source"], declared=declared, **bounds)
    return pa.RecordBatch.from_arrays(
        [*batch.columns, pa.array(labels, type=pa.string())],
        schema=batch.schema.append(pa.field("split", pa.string())),
    )


def write_labelled(
    runner: Runner, table: pa.Table, out: Path, task: Callable, description: str
) -> int:
    """``task`` (batch → batch + ``split`` column) over ``table`` into ``out/data.arrow``;
    returns the rows written. Shared by the hash and the date split."""
    schema = table.schema.append(pa.field("split", pa.string()))
    with ArrowSink(out / "data.arrow", schema) as sink:
        for batch in runner.map(
            runner.batches(table), task, description=description, total=table.num_rows
        ):
            sink.write(batch)
    return sink.rows


def run_date_split(
    runner: Runner, table: pa.Table, out: Path, params: dict[str, Any], args: dict[str, Any]
) -> dict[str, Any]:
    """The split stage with ``by=date``: adds the ``split`` column; returns the stage stats.

    Args:
        runner, table, out: As every stage's ``run``.
        params: The split stage's settings.
        args: Its per-batch arguments (:func:`fmlab.data.pipeline.split.split_kwargs`: kind,
            fractions after declared splits, salt, declared sources).
    """
    declared = args["declared"]
    undeclared = pc.invert(pc.is_in(table.column("source"), pa.array(list(declared), pa.string())))
    dates = table.filter(undeclared).column("date")
    bound = heldout_bound(dates, params["period"], params["heldout_after"])
    test_after = params["test_after"]
    if test_after is not None and test_after <= bound:
        raise PrepareError(
            f"split.test_after={test_after} must be after split.heldout_after={bound} "
            "(validation is heldout_after < date <= test_after, test is later)"
        )
    task = functools.partial(_label_batch, **args, heldout_after=bound, test_after=test_after)
    return {
        "in": table.num_rows,
        "out": write_labelled(runner, table, out, task, "split by date"),
        "removed": {},
        "dates": {
            "heldout_after": bound,
            "test_after": test_after,
            "undated_in_train": dates.null_count,
        },
    }
