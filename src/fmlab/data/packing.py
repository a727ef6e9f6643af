"""Packing tokenized documents into fixed-length blocks.

Documents are concatenated with an EOS token after each one and cut into blocks of ``block_size``
tokens, so no compute is spent on padding. The tail that does not fill a block is dropped (it is
at most ``block_size - 1`` tokens of the whole split). Attention is not masked at document
boundaries (GPT-2/Llama pre-training practice); the EOS token tells the model a document ended.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = ["pack_documents", "token_dtype"]


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned dtype that holds every token id."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def pack_documents(
    docs: Iterable[list[int]], eos_id: int, block_size: int, dtype: np.dtype | type = np.uint32
) -> np.ndarray:
    """Concatenate ``docs`` (each followed by ``eos_id``) and reshape into blocks.

    Args:
        docs: Token id lists, one per document.
        eos_id: Separator appended after every document.
        block_size: Tokens per block (the training sequence length T).
        dtype: Storage dtype of the result.

    Returns:
        Array of shape ``(num_blocks, block_size)``; ``num_blocks`` may be 0.
    """
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    pieces = []
    for ids in docs:
        pieces.append(np.asarray(ids, dtype=np.int64))
        pieces.append(np.asarray([eos_id], dtype=np.int64))
    if not pieces:
        return np.zeros((0, block_size), dtype=dtype)
    flat = np.concatenate(pieces)
    n = len(flat) // block_size
    return flat[: n * block_size].astype(dtype).reshape(n, block_size)
