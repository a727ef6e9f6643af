"""Reference numbers a trained LM must beat."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["unigram_perplexity"]


def unigram_perplexity(train_blocks: np.ndarray, eval_blocks: np.ndarray, vocab_size: int) -> float:
    """Perplexity of an add-one-smoothed unigram model fit on ``train_blocks``.

    It is scored on the same positions the LM predicts: every token of each eval block but the
    first (the LM has no context for it).

    Args:
        train_blocks: ``(N, T)`` token ids to count.
        eval_blocks: ``(M, T)`` token ids to score.
        vocab_size: Size of the token space (for smoothing).
    """
    counts = np.bincount(np.asarray(train_blocks).reshape(-1), minlength=vocab_size).astype(
        np.float64
    )
    logp = np.log(counts + 1.0) - math.log(counts.sum() + vocab_size)
    targets = np.asarray(eval_blocks)[:, 1:].reshape(-1)
    if targets.size == 0:
        raise ValueError("unigram_perplexity: no eval tokens")
    return float(math.exp(-logp[targets].mean()))
