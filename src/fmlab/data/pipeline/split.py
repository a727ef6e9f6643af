"""Split and decontaminate stages.

Split: train/validation/test by a hash of each record's content
(:func:`fmlab.data.splits.split_of`), so a document keeps its split however the corpus grows or is
re-ordered; or, with ``by=date``, by time (:mod:`fmlab.data.pipeline.timesplit`). Records of a
source that declares its split (``SourceSpec.split``) keep that split; undeclared sources are
split into the splits no source declares.

Decontaminate: drop training records that share a long word n-gram (13 by default, as GPT-3) with
the validation/test splits or with benchmark files. Text is normalized first (lowercase, no
punctuation), so formatting differences do not hide an overlap.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from fmlab.data.pipeline.dates import Unit, iso
from fmlab.data.pipeline.engine import ArrowSink, Runner, Stage
from fmlab.data.pipeline.hashing import ngram_hashes, normalized_words, word_hashes
from fmlab.data.pipeline.read import ResolvedSource, iter_rows
from fmlab.data.pipeline.records import BadRow, SourceSpec, content_of
from fmlab.data.pipeline.timesplit import run_date_split, write_labelled
from fmlab.data.splits import SPLITS, hash_fractions, split_of

__all__ = ["Decontaminate", "Split", "split_kwargs"]

Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]


def _split_batch(
    batch: pa.RecordBatch,
    kind: str,
    by: str,
    vf: float,
    tf: float,
    salt: str,
    declared: dict[str, str] | None = None,
) -> pa.RecordBatch:
    cols = batch.to_pydict()
    if by == "id":
        keys = cols["id"]
    elif by == "prompt" or (by == "auto" and kind in ("sft", "preference")):
        keys = cols["prompt"]
    else:
        keys = content_of(cols, kind)
    declared = declared or {}
    labels = pa.array(
        [declared.get(src) or split_of(k, vf, tf, salt) for k, src in zip(keys, cols["source"])],
        type=pa.string(),
    )
    return pa.RecordBatch.from_arrays(
        [*batch.columns, labels], schema=batch.schema.append(pa.field("split", pa.string()))
    )


class Split(Stage):
    """Assign each record to train/validation/test by a hash of its content, or by its date.

    Args:
        enabled: Run this stage (off: every record is ``train``).
        val_fraction: Expected share of records in validation (``by=date``: with
            ``test_fraction``, the ratio in which held-out records are divided).
        test_fraction: Expected share in test.
        salt: Changes the (equally deterministic) assignment.
        by: What is hashed: ``auto`` (the prompt for SFT and preference records, so variants
            of one prompt never straddle splits; the text otherwise), ``text``, ``prompt`` or
            ``id``; or ``date``: the latest records are held out (see
            :mod:`fmlab.data.pipeline.timesplit`).
        period: ``by=date``: without ``heldout_after``, the latest ``month``/``quarter``/
            ``year`` of the data is held out.
        heldout_after: ``by=date``: records dated after this day (exclusive) are held out.
        test_after: ``by=date``: held-out records dated after this day go to test, the earlier
            ones to validation (default: divided by hash).
    """

    name = "split"
    version = 1

    def __init__(
        self,
        enabled: bool = True,
        val_fraction: Fraction = 0.05,
        test_fraction: Fraction = 0.05,
        salt: str = "",
        by: Literal["auto", "text", "prompt", "id", "date"] = "auto",
        period: Unit = "quarter",
        heldout_after: dt.date | None = None,
        test_after: dt.date | None = None,
    ) -> None:
        if val_fraction + test_fraction >= 1 and by != "date":  # by=date: only their ratio
            raise ValueError("split.val_fraction + split.test_fraction must be < 1")
        dated = {
            "period": period,
            "heldout_after": iso(heldout_after),
            "test_after": iso(test_after),
        }
        if by != "date" and (heldout_after or test_after):
            raise ValueError("split.heldout_after/test_after need split.by=date")
        super().__init__(
            enabled,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            salt=salt,
            by=by,
            **(dated if by == "date" else {}),  # other splits keep their fingerprints
        )

    def run(
        self,
        runner: Runner,
        table: pa.Table,
        out: Path,
        kind: str,
        declared: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        args = split_kwargs(self, kind, declared)
        if self.params["by"] == "date" and self.enabled:
            return run_date_split(runner, table, out, self.params, args)
        task = functools.partial(_split_batch, **args)
        rows = write_labelled(runner, table, out, task, "split")
        return {"in": table.num_rows, "out": rows, "removed": {}}


def split_kwargs(split: Split, kind: str, declared: dict[str, str] | None) -> dict[str, Any]:
    """Arguments of the per-batch split labelling (local and Spark engines).

    Args:
        split: The stage.
        kind: Record kind.
        declared: Source label -> declared split (sources whose rows all go to one split).
    """
    p = split.params
    vf, tf = (p["val_fraction"], p["test_fraction"]) if split.enabled else (0.0, 0.0)
    vf, tf = hash_fractions(vf, tf, (declared or {}).values())
    return dict(kind=kind, by=p["by"], vf=vf, tf=tf, salt=p["salt"], declared=declared or {})


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _grams(texts: list[str], n: int) -> np.ndarray:
    parts = [ngram_hashes(word_hashes(normalized_words(t)), n) for t in texts]
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.uint64)


def _eval_grams(batch: pa.RecordBatch, kind: str, n: int, origins: tuple[str, ...]):
    cols = batch.to_pydict()
    texts = content_of(cols, kind)
    return {o: _grams([t for t, s in zip(texts, cols["split"]) if s == o], n) for o in origins}


class _NgramIndex:
    """Membership of n-gram hashes in several sorted sets (one per origin).

    Binary search in a large sorted array costs a cache miss per step; a bitmap of the union,
    indexed by the top hash bits, answers almost every lookup with one access and leaves only
    the few candidates for the exact search.
    """

    def __init__(self, sets: dict[str, np.ndarray]) -> None:
        self.sets = sets
        total = sum(len(s) for s in sets.values())
        self.bits = int(min(max(np.ceil(np.log2(max(total, 1) * 16)), 16), 34))
        self.shift = np.uint64(64 - self.bits)
        self.bitmap = np.zeros(2**self.bits // 8, dtype=np.uint8)
        for s in sets.values():
            idx = s >> self.shift
            np.bitwise_or.at(
                self.bitmap, idx >> np.uint64(3), (1 << (idx & np.uint64(7))).astype(np.uint8)
            )

    def origin(self, grams: np.ndarray, min_matches: int) -> str | None:
        """The first origin sharing at least ``min_matches`` of ``grams``, or None."""
        if len(grams) == 0:
            return None
        idx = grams >> self.shift
        maybe = (self.bitmap[idx >> np.uint64(3)] >> (idx & np.uint64(7)).astype(np.uint8)) & 1
        candidates = grams[maybe.astype(bool)]
        if len(candidates) < min_matches:
            return None
        for name, s in self.sets.items():
            if len(s):
                pos = np.minimum(np.searchsorted(s, candidates), len(s) - 1)
                if np.count_nonzero(s[pos] == candidates) >= min_matches:
                    return name
        return None


def _check_batch(batch: pa.RecordBatch, kind: str, n: int, index: _NgramIndex, min_matches: int):
    cols = batch.to_pydict()
    reasons: list[str | None] = []
    for text, split in zip(content_of(cols, kind), cols["split"]):
        reasons.append(index.origin(_grams([text], n), min_matches) if split == "train" else None)
    dropped = [(i, r) for i, r in zip(cols["id"], reasons) if r]
    keep = pa.array([r is None for r in reasons])
    return batch.filter(keep), Counter(r for _, r in dropped), dropped[:5]


class Decontaminate(Stage):
    """Drop training records that share a word n-gram with held-out data or benchmarks.

    Args:
        enabled: Run this stage.
        ngram: Words per n-gram (13: GPT-3's decontamination).
        against: Held-out splits whose n-grams training records must not contain.
        benchmarks: Benchmark files/datasets (any source, see ``SourceSpec``); every string
            field of every row is used.
        min_matches: Shared n-grams needed to drop a record.
    """

    name = "decontaminate"
    version = 1

    def __init__(
        self,
        enabled: bool = True,
        ngram: Annotated[int, Field(ge=3)] = 13,
        against: list[Literal["validation", "test"]] | None = None,
        benchmarks: list[str | SourceSpec] | None = None,
        min_matches: Annotated[int, Field(ge=1)] = 1,
    ) -> None:
        specs = [
            SourceSpec(path=b) if isinstance(b, str) else SourceSpec(**dict(b))
            for b in benchmarks or []
        ]
        self.benchmarks = specs
        super().__init__(
            enabled,
            ngram=ngram,
            against=list(("validation", "test") if against is None else against),
            benchmarks=[s.model_dump(exclude_defaults=True) for s in specs],
            min_matches=min_matches,
        )

    def run(
        self,
        runner: Runner,
        table: pa.Table,
        out: Path,
        kind: str,
        benchmarks: list[ResolvedSource],
        cache_dir: str,
    ) -> dict[str, Any]:
        n, origins = self.params["ngram"], tuple(self.params["against"])
        sets: dict[str, np.ndarray] = {}
        wanted = pa.array(list(origins), type=pa.string())

        def held_out() -> Iterator[pa.RecordBatch]:  # batch by batch: memory stays bounded
            for batch in runner.batches(table):
                part = batch.filter(pc.is_in(batch.column("split"), wanted))
                if part.num_rows:
                    yield part

        total = int(pc.sum(pc.is_in(table.column("split"), wanted)).as_py() or 0)
        parts: dict[str, list[np.ndarray]] = {o: [] for o in origins}
        task = functools.partial(_eval_grams, kind=kind, n=n, origins=origins)
        for grams in runner.map(held_out(), task, description="decontam: held-out", total=total):
            for o, g in grams.items():
                parts[o].append(g)
        for o in origins:
            sets[o] = np.unique(np.concatenate(parts[o])) if parts[o] else np.empty(0, np.uint64)
        del parts
        for src in benchmarks:
            texts = [
                s
                for _, row in iter_rows(src, cache_dir)
                if not isinstance(row, BadRow)
                for s in _strings(row)
            ]
            sets[f"benchmark:{src.spec.label}"] = np.unique(_grams(texts, n))
        task = functools.partial(
            _check_batch,
            kind=kind,
            n=n,
            index=_NgramIndex(sets),
            min_matches=self.params["min_matches"],
        )
        removed: Counter = Counter()
        examples: list[dict[str, str]] = []
        with ArrowSink(out / "data.arrow", table.schema) as sink:
            for batch, counts, dropped in runner.map(
                runner.batches(table), task, description="decontaminate", total=table.num_rows
            ):
                sink.write(batch)
                removed.update(counts)
                examples.extend({"id": i, "overlaps": r} for i, r in dropped[: 5 - len(examples)])
        return {
            "in": table.num_rows,
            "out": sink.rows,
            "removed": dict(removed),
            "ngrams": {o: len(s) for o, s in sets.items()},
            "examples": examples,
        }


def split_counts(table: pa.Table) -> dict[str, int]:
    """Records per split."""
    counts = Counter(table.column("split").to_pylist()) if table.num_rows else Counter()
    return {s: int(counts.get(s, 0)) for s in SPLITS}
