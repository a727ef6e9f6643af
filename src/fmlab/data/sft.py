"""Supervised fine-tuning examples: prompt templates, prompt-masked labels, padding and packing.

An SFT example is a prompt and a response. The model sees ``prompt + response + EOS`` and is trained
on the response tokens only: prompt positions get the label ``-100`` (ignored by the loss).

Two batch layouts:

- padded (:func:`collate_sft`): one example per row, padded on the right or on the left, with an
  ``attention_mask`` and a ``prompt_mask`` (ReFT intervenes on prompt tokens only);
- packed (:func:`pack_sft`): several examples per fixed-length row, ``position_ids`` restarting at 0
  for each example and ``seq_ids`` naming the example of each token, from which
  :func:`packed_attention_mask` builds a block-diagonal causal mask so examples never attend to each
  other. Labels stay correct across boundaries: the token after an example's EOS is the next
  example's first prompt token, whose label is -100.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

__all__ = [
    "IGNORE_INDEX",
    "collate_sft",
    "encode_prompt",
    "encode_sft",
    "pack_sft",
    "packed_attention_mask",
]

IGNORE_INDEX = -100


def _chat_messages(prompt: str, system: str | None) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}] if system else []
    return [*messages, {"role": "user", "content": prompt}]


def encode_prompt(
    prompt: str,
    tokenizer: PreTrainedTokenizerBase,
    *,
    template: str = "{prompt}",
    chat_template: bool = False,
    system: str | None = None,
) -> list[int]:
    """Token ids of the prompt as the model sees it before the response (also for generation)."""
    if chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "data.chat_template=true but the tokenizer has no chat template; "
                "use data.template='...{prompt}...' instead"
            )
        ids = tokenizer.apply_chat_template(
            _chat_messages(prompt, system), add_generation_prompt=True, tokenize=True
        )
        if hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding
            ids = ids["input_ids"]
        return list(ids)
    text = template.format(prompt=prompt)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    # Models trained with a BOS token expect it; fmlab's own BPE uses EOS as BOS and no prefix.
    if bos is not None and bos != tokenizer.eos_token_id and getattr(tokenizer, "add_bos_token", 0):
        ids = [bos, *ids]
    return ids


def encode_sft(
    prompt: str,
    response: str,
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int,
    template: str = "{prompt}",
    chat_template: bool = False,
    system: str | None = None,
    overlong: Literal["truncate", "drop"] = "truncate",
    tally: dict[str, int] | None = None,
) -> dict[str, list[int]] | None:
    """Tokenize one example with labels masked on the prompt.

    Args:
        prompt: The instruction/input text.
        response: The target text; EOS is appended so the model learns to stop.
        tokenizer: HF tokenizer (must have an EOS token).
        max_length: Longest allowed sequence; the response is truncated on the right to fit.
        template: Python format string with ``{prompt}`` (ignored with ``chat_template``).
        chat_template: Use the tokenizer's chat template (user turn + generation prompt).
        system: Optional system message for the chat template.
        overlong: An example longer than ``max_length``: ``truncate`` its response on the right
            (dropped only when no response token fits), or ``drop`` it.
        tally: Counts ``truncated`` (kept, response cut) and ``overlong`` (longer than
            ``max_length``) examples, for the data card.

    Returns:
        ``{"input_ids", "labels"}`` (same length, labels -100 on prompt tokens), or None when not
        one response token fits in ``max_length`` — such a row would have no target at all and a
        NaN loss, so callers drop and count it.
    """
    if max_length <= 0:
        raise ValueError(f"max_length must be positive, got {max_length}")
    prompt_ids = encode_prompt(
        prompt, tokenizer, template=template, chat_template=chat_template, system=system
    )
    response_ids = [*tokenizer(response, add_special_tokens=False)["input_ids"]]
    response_ids.append(tokenizer.eos_token_id)
    room = max_length - len(prompt_ids)
    if len(response_ids) > room:
        if tally is not None:
            tally["overlong"] = tally.get("overlong", 0) + 1
        if room <= 0 or overlong == "drop":
            return None
        if tally is not None:
            tally["truncated"] = tally.get("truncated", 0) + 1
    response_ids = response_ids[:room]
    return {
        "input_ids": prompt_ids + response_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + response_ids,
    }


def collate_sft(
    examples: Sequence[dict[str, Sequence[int]]],
    pad_id: int,
    padding_side: Literal["right", "left"] = "right",
) -> dict[str, torch.Tensor]:
    """Pad encoded examples into a batch.

    Returns ``input_ids``, ``labels`` (-100 on prompt and padding), ``attention_mask`` (1 on real
    tokens), ``prompt_mask`` (True on prompt tokens) and ``position_ids`` (counting real tokens
    only), all ``(B, T)`` with T the longest example.
    """
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    width = max(len(e["input_ids"]) for e in examples)
    batch = len(examples)
    ids = torch.full((batch, width), pad_id, dtype=torch.long)
    labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
    attn = torch.zeros((batch, width), dtype=torch.long)
    prompt = torch.zeros((batch, width), dtype=torch.bool)
    for i, ex in enumerate(examples):
        n = len(ex["input_ids"])
        sl = slice(0, n) if padding_side == "right" else slice(width - n, width)
        ids[i, sl] = torch.as_tensor(ex["input_ids"])
        lab = torch.as_tensor(ex["labels"])
        labels[i, sl] = lab
        attn[i, sl] = 1
        prompt[i, sl] = lab == IGNORE_INDEX
    # Positions count real tokens only, so a left-padded row sees the same positions as unpadded.
    positions = (attn.cumsum(dim=1) - 1).clamp(min=0)
    return {
        "input_ids": ids,
        "labels": labels,
        "attention_mask": attn,
        "prompt_mask": prompt,
        "position_ids": positions,
    }


def pack_sft(
    examples: Iterable[dict[str, Sequence[int]]], block_size: int, pad_id: int
) -> dict[str, np.ndarray]:
    """Pack encoded examples greedily, in order, into rows of ``block_size`` tokens.

    An example never straddles two rows; a row is closed when the next example does not fit, and
    its tail is padding (label -100, ``seq_ids`` -1, position 0).

    Returns:
        ``input_ids``, ``labels``, ``position_ids``, ``seq_ids`` (index of the example within its
        row), each int64 ``(N, block_size)``.
    """
    rows: list[list[dict[str, Sequence[int]]]] = [[]]
    used = 0
    for ex in examples:
        n = len(ex["input_ids"])
        if n > block_size:
            raise ValueError(f"an example of {n} tokens does not fit block_size={block_size}")
        if used + n > block_size:
            rows.append([])
            used = 0
        rows[-1].append(ex)
        used += n
    if not rows[-1]:
        rows.pop()
    out = {
        "input_ids": np.full((len(rows), block_size), pad_id, dtype=np.int64),
        "labels": np.full((len(rows), block_size), IGNORE_INDEX, dtype=np.int64),
        "position_ids": np.zeros((len(rows), block_size), dtype=np.int64),
        "seq_ids": np.full((len(rows), block_size), -1, dtype=np.int64),
    }
    for r, row in enumerate(rows):
        start = 0
        for j, ex in enumerate(row):
            n = len(ex["input_ids"])
            out["input_ids"][r, start : start + n] = ex["input_ids"]
            out["labels"][r, start : start + n] = ex["labels"]
            out["position_ids"][r, start : start + n] = np.arange(n)
            out["seq_ids"][r, start : start + n] = j
            start += n
    return out


def packed_attention_mask(
    seq_ids: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Additive 4-D mask ``(B, 1, T, T)``: causal, and only within the same packed example.

    Padding positions (``seq_ids == -1``) attend to themselves only, so no row is fully masked
    (a fully masked softmax row gives NaN).
    """
    b, t = seq_ids.shape
    same = seq_ids[:, :, None] == seq_ids[:, None, :]  # (B, T, T)
    causal = torch.ones(t, t, dtype=torch.bool, device=seq_ids.device).tril()
    allowed = same & causal
    allowed |= torch.eye(t, dtype=torch.bool, device=seq_ids.device)
    mask = torch.zeros(b, 1, t, t, dtype=dtype, device=seq_ids.device)
    return mask.masked_fill(~allowed[:, None], torch.finfo(dtype).min)


def stats_of(encoded: Sequence[dict[str, Any] | None]) -> dict[str, int]:
    """Counts for the data card: kept rows, rows dropped for truncation, response tokens."""
    kept = [e for e in encoded if e is not None]
    return {
        "examples": len(kept),
        "dropped_truncated": len(encoded) - len(kept),
        "tokens": sum(len(e["input_ids"]) for e in kept),
        "response_tokens": sum(sum(1 for x in e["labels"] if x != IGNORE_INDEX) for e in kept),
    }
