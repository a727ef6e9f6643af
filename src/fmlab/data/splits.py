"""Deterministic document-level train/validation/test splits by content hash.

A document's split depends only on its (whitespace-normalised) text, so the same document lands in
the same split whatever the order, sharding or number of workers, and exact duplicates never
straddle splits.
"""

from __future__ import annotations

import hashlib

__all__ = ["SPLITS", "split_of"]

SPLITS = ("train", "validation", "test")


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
