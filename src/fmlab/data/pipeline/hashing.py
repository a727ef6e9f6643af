"""Deterministic word and word-n-gram hashes (deduplication and decontamination).

Text is normalised the usual way for overlap detection (GPT-3's decontamination, MinHash dedup):
lowercase, ASCII punctuation treated as whitespace, split on whitespace. Hashes are xxh3-64 of
each word's UTF-8 bytes, combined per n-gram with a polynomial in uint64 (wrap-around arithmetic),
so they are the same in every process and every run.
"""

from __future__ import annotations

import string

import numpy as np
from xxhash import xxh3_64_intdigest

__all__ = ["doc_hash", "ngram_hashes", "normalized_words", "word_hashes"]

_PUNCT_TO_SPACE = bytes(32 if chr(i) in string.punctuation else i for i in range(256))
_MUL = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant (golden ratio); any odd one works


def normalized_words(text: str) -> list[bytes]:
    """Lowercased words without ASCII punctuation, as UTF-8 bytes."""
    return text.lower().encode("utf-8", "surrogatepass").translate(_PUNCT_TO_SPACE).split()


def word_hashes(words: list[bytes]) -> np.ndarray:
    """uint64 hash of every word."""
    return np.fromiter(map(xxh3_64_intdigest, words), dtype=np.uint64, count=len(words))


def ngram_hashes(hashes: np.ndarray, n: int, short: bool = False) -> np.ndarray:
    """uint64 hash of every run of ``n`` consecutive words, shape ``(len - n + 1,)``.

    Args:
        hashes: Word hashes from :func:`word_hashes`.
        n: Words per n-gram.
        short: When there are fewer than ``n`` words, return one hash of all of them (so a short
            document still has a shingle) instead of none.
    """
    m = len(hashes) - n + 1
    if m <= 0:
        if not short or len(hashes) == 0:
            return np.empty(0, dtype=np.uint64)
        n, m = len(hashes), 1
    out = hashes[:m].copy()
    for k in range(1, n):
        out *= _MUL
        out += hashes[k : k + m]
    return out


def doc_hash(words: list[bytes]) -> int:
    """Hash of a whole normalised document (exact deduplication)."""
    return xxh3_64_intdigest(b" ".join(words))
