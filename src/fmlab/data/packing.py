"""Packing tokenized documents into fixed-length blocks.

Documents are concatenated with an EOS token after each one and cut into blocks of ``block_size``
tokens, so no compute is spent on padding. The tail that does not fill a block is dropped (it is
at most ``block_size - 1`` tokens of the whole split). Attention is not masked at document
boundaries (GPT-2/Llama pre-training practice); the EOS token tells the model a document ended.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = ["BlockPacker", "chunk_document", "pack_documents", "token_dtype"]


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


class BlockPacker:
    """Streaming :func:`pack_documents`: feed token streams, get full blocks as they fill.

    Memory stays at about one block plus the last fed chunk. With ``document_ids`` every block
    also gets ``seq_ids`` (index of the document of each token within the block) and
    ``position_ids`` (restarting at 0 where a document starts, and at the block start), so a
    model can keep documents from attending to each other.

    Args:
        block_size: Tokens per block.
        dtype: Storage dtype of the ids.
        document_ids: Also produce ``seq_ids`` and ``position_ids``.
    """

    def __init__(self, block_size: int, dtype: np.dtype | type, document_ids: bool = False) -> None:
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.block_size, self.dtype, self.document_ids = block_size, np.dtype(dtype), document_ids
        self._ids: list[np.ndarray] = []
        self._docs: list[np.ndarray] = []
        self._buffered = 0
        self._next_doc = 0
        self.blocks = 0

    def add(self, stream: np.ndarray, doc_lengths: np.ndarray) -> dict[str, np.ndarray] | None:
        """Append documents (``stream`` = their tokens, EOS included, back to back).

        Returns:
            ``{"input_ids": (N, T)[, "seq_ids", "position_ids"]}`` for the blocks completed by
            this call, or None.
        """
        self._ids.append(np.asarray(stream, dtype=self.dtype))
        if self.document_ids:
            n = len(doc_lengths)
            self._docs.append(np.repeat(np.arange(self._next_doc, self._next_doc + n), doc_lengths))
            self._next_doc += n
        self._buffered += len(stream)
        if self._buffered < self.block_size:
            return None
        flat = np.concatenate(self._ids)
        n = len(flat) // self.block_size
        cut = n * self.block_size
        self._ids = [flat[cut:]]
        self._buffered = len(flat) - cut
        self.blocks += n
        out = {"input_ids": flat[:cut].reshape(n, self.block_size)}
        if self.document_ids:
            docs = np.concatenate(self._docs)
            self._docs = [docs[cut:]]
            blocks = docs[:cut].reshape(n, self.block_size)
            seq = blocks - blocks[:, :1]  # (N, T) document index within its block
            starts = np.ones_like(seq, dtype=bool)
            starts[:, 1:] = seq[:, 1:] != seq[:, :-1]
            idx = np.arange(self.block_size)[None, :].repeat(n, 0)
            start_pos = np.maximum.accumulate(np.where(starts, idx, 0), axis=1)
            out["seq_ids"] = seq.astype(np.int32)
            out["position_ids"] = (idx - start_pos).astype(np.int32)
        return out

    @property
    def tail(self) -> int:
        """Tokens that did not fill a last block (dropped)."""
        return self._buffered


def chunk_document(
    ids: np.ndarray, block_size: int, stride: int, pad_id: int
) -> dict[str, np.ndarray]:
    """Cut one long document into overlapping windows for evaluation (sliding-window perplexity).

    Windows start every ``stride`` tokens; in each window only the tokens no earlier window
    scored carry labels (the rest are context, label -100), so every token but the first is
    scored exactly once, with up to ``block_size - stride`` tokens of context. Windows are padded
    to ``block_size`` (label -100, attention 0).

    Returns:
        ``input_ids``, ``labels`` and ``attention_mask``, each ``(num_windows, block_size)`` int32.
    """
    if not 0 < stride <= block_size:
        raise ValueError(f"stride must be in [1, block_size={block_size}], got {stride}")
    n = len(ids)
    starts = list(range(0, max(n - block_size, 0) + stride, stride)) or [0]
    starts = [s for s in starts if s < n] or [0]
    out = {
        "input_ids": np.full((len(starts), block_size), pad_id, dtype=np.int32),
        "labels": np.full((len(starts), block_size), -100, dtype=np.int32),
        "attention_mask": np.zeros((len(starts), block_size), dtype=np.int32),
    }
    scored_until = 0
    for r, begin in enumerate(starts):
        end = min(begin + block_size, n)
        width = end - begin
        out["input_ids"][r, :width] = ids[begin:end]
        out["attention_mask"][r, :width] = 1
        first_new = max(scored_until, begin) - begin  # positions before this were scored already
        out["labels"][r, first_new:width] = ids[begin + first_new : end]
        scored_until = end
        if end == n:
            out = {k: v[: r + 1] for k, v in out.items()}
            break
    return out
