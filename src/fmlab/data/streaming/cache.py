"""Dividing ``data.cache_limit`` among the splits so the local cache never exceeds it.

litdata keeps one cache directory per split (``<cache>/<hash of the URL>/<dataset version>/``)
and bounds each by its ``max_cache_size``: downloads wait for a free slot and consumed chunks
are deleted. Its bound is approximate by design: a slot is counted in *mean* chunk sizes with 5%
headroom, every reader (rank or DataLoader worker of the machine, all sharing the directory)
may have chunks in flight or not yet deleted beyond it, and the ``index.json`` copy, lock and
count files come on top. Measured here: up to about two chunks per reader. So each split gets a
share of the limit from which that overhead is taken off before litdata sees it:

    litdata budget = (share − index bytes − 2 × (readers + 1) × largest chunk) / 1.05

Validation and test are cached whole when together they take at most a quarter of the limit
(downloaded once, never evicted, read again at every validation); otherwise they stream like
the training split, each with an eighth of the limit.
"""

from __future__ import annotations

import json
from typing import Any

from fmlab.config import ConfigError

__all__ = ["SplitSize", "cache_budgets", "parse_size"]

_EVAL_SHARE = 4  # eval splits cached whole when they fit in limit / 4


def parse_size(text: str | int, key: str = "data.cache_limit") -> int:
    """``"2GB"`` → 2·10⁹ (KB, MB, GB, TB and KiB, MiB, GiB, TiB; a bare integer is bytes)."""
    from fmlab.data.pipeline.write import _size

    try:
        return _size(text, key)
    except ValueError as err:
        raise ConfigError(str(err)) from err


class SplitSize:
    """What the cache of one split needs: data bytes, largest chunk, and its index's size."""

    def __init__(self, index: dict[str, Any]) -> None:
        chunks = index["chunks"]
        self.bytes = sum(int(c["chunk_bytes"]) for c in chunks)
        self.largest = max(int(c["chunk_bytes"]) for c in chunks)
        self.index_bytes = len(json.dumps(index, sort_keys=True))
        self.rows = sum(int(c["chunk_size"]) for c in chunks)

    def overhead(self, readers: int) -> int:
        return self.index_bytes + 2 * (readers + 1) * self.largest

    def whole(self) -> int:
        """Disk used when the split is cached whole."""
        return self.bytes + self.index_bytes


def _budget(share: int, size: SplitSize, split: str, limit: int, readers: int) -> int:
    budget = int((share - size.overhead(readers)) / 1.05)
    if budget < 2 * size.largest:  # litdata needs one chunk in use and one arriving
        need = int(2 * size.largest * 1.05) + size.overhead(readers)
        raise ConfigError(
            f"data.cache_limit={limit:,} bytes leaves {share:,} for the {split} split, whose "
            f"chunks are up to {size.largest:,} bytes, read by {readers} reader(s) on this "
            f"machine: it needs at least {need:,}. Raise data.cache_limit or prepare with "
            "smaller chunks (write.chunk_bytes)"
        )
    return budget


def cache_budgets(limit: int, sizes: dict[str, SplitSize], readers: int = 1) -> dict[str, int]:
    """litdata's ``max_cache_size`` per split (absent splits: none).

    A split whose budget is at least its size is never evicted (cached whole).

    Args:
        limit: Bytes the machine's cache of this dataset may hold.
        sizes: The splits present.
        readers: Processes of this machine reading one split at once (ranks x workers).

    Raises:
        ConfigError: The limit cannot hold two chunks of a split besides the overhead.
    """
    evals = {s: z for s, z in sizes.items() if s != "train"}
    whole = sum(z.whole() for z in evals.values())
    budgets: dict[str, int] = {}
    if whole <= limit // _EVAL_SHARE:
        budgets.update({s: 2 * z.bytes + 2**20 for s, z in evals.items()})  # never reached
        train_share = limit - whole
    else:
        eighth = limit // (2 * _EVAL_SHARE)
        budgets.update({s: _budget(eighth, z, s, limit, readers) for s, z in evals.items()})
        train_share = limit - eighth * len(evals)
    if "train" in sizes:
        budgets["train"] = _budget(train_share, sizes["train"], "train", limit, readers)
    return budgets
