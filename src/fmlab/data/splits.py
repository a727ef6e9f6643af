"""Deterministic document-level train/validation/test splits by content hash, and sources
with their own declared split.

A document's split depends only on its (whitespace-normalised) text, so the same document lands in
the same split whatever the order, sharding or number of workers, and exact duplicates never
straddle splits.

A source may declare its split (``{path: test.jsonl, split: test}``, in every source list): its
rows all go there. Only undeclared sources are hash-split, and only into the splits no source
declares (:func:`hash_fractions`): with your own validation and test files, undeclared sources
are all training data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Literal

__all__ = [
    "SPLITS",
    "SplitName",
    "empty_split_cause",
    "hash_fractions",
    "split_of",
    "split_sources",
]

SPLITS = ("train", "validation", "test")
SplitName = Literal["train", "validation", "test"]


def _unit_interval(text: str, salt: str) -> float:
    digest = hashlib.blake2b((salt + " ".join(text.split())).encode("utf-8"), digest_size=8)
    return int.from_bytes(digest.digest(), "big") / 2**64


def split_of(text: str, val_fraction: float, test_fraction: float, salt: str = "") -> str:
    """Return ``"train"``, ``"validation"`` or ``"test"`` for a document.

    Args:
        text: The document text.
        val_fraction: Expected share of documents in the validation split.
        test_fraction: Expected share in the test split.
        salt: Changes the assignment (a different but equally deterministic split).
    """
    u = _unit_interval(text, salt)
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "validation"
    return "train"


def hash_fractions(
    val_fraction: float, test_fraction: float, declared: Iterable[str | None]
) -> tuple[float, float]:
    """Fractions for the hash split of undeclared sources: 0 for a split some source declares."""
    named = set(declared)
    return (
        0.0 if "validation" in named else val_fraction,
        0.0 if "test" in named else test_fraction,
    )


def split_sources(
    declared: Mapping[str, str | None], counts: Mapping[str, Mapping[str, int]]
) -> dict[str, dict[str, object]]:
    """Which splits came from which source, for data cards and summaries.

    Args:
        declared: Source label -> its declared split (None: hash-split).
        counts: Source label -> rows per split.

    Returns:
        Source label -> ``{"declared": split or None, "train": n, "validation": n, "test": n}``.
    """
    return {
        label: {"declared": split, **{s: int(counts.get(label, {}).get(s, 0)) for s in SPLITS}}
        for label, split in declared.items()
    }


def empty_split_cause(
    split: str, declared: Mapping[str, str | None], val_fraction: float, test_fraction: float
) -> str | None:
    """Why no source fed ``split``, or None when some source should have.

    ``declared`` maps each source to its declared split (None: hash-split).
    """
    if any(s == split for s in declared.values()):
        return None
    undeclared = [label for label, s in declared.items() if s is None]
    vf, tf = hash_fractions(val_fraction, test_fraction, declared.values())
    share = {"train": 1.0 - vf - tf, "validation": vf, "test": tf}[split]
    if undeclared and share > 0:
        return None
    named = ", ".join(f"{label} (split: {s})" for label, s in declared.items() if s) or "none"
    if not undeclared:
        why = "every source declares its split and none declares it"
    else:
        why = (
            f"the undeclared sources are hash-split only into the splits no source declares "
            f"(fraction for {split}: {share:g})"
        )
    return (
        f"no source feeds the {split} split: {why} (declared: {named}); add a source with "
        f"split: {split}, or leave a source undeclared and give the split a fraction"
    )
