"""Preference pairs as tokens: one prompt, a chosen and a rejected response, in one batch.

A pair is encoded once: the prompt ids (template or chat template, as SFT builds them) and the ids
of each response followed by EOS. Both responses share those exact prompt ids.

Truncation (``truncation="truncate"``), when ``prompt + the longer response`` exceeds
``max_length``:

1. the prompt gives up tokens first, from the **left** (its end, next to the response, stays),
   but never below ``max_prompt_length`` tokens;
2. then each response is cut on the **right** to fit (it may lose its EOS).

A pair whose responses become identical by truncation is dropped. With ``truncation="drop"``,
every pair that does not fit whole is dropped. Both are counted (:class:`PairStats`).

Batches (:func:`collate_pairs`) hold the 2B sequences ``prompt + chosen`` (rows/sequences 0..B-1)
and ``prompt + rejected`` (B..2B-1), so one forward computes both. Labels are -100 on the prompt
and on padding. ``seq_index`` names, per token, the sequence (0..2B-1) it belongs to (-1 on
padding); per-sequence log-probabilities are sums grouped by it, whatever the layout:

- padded: one sequence per row, on the right or the left, positions counting real tokens;
- packed: sequences greedily packed into rows of ``max_length`` tokens with a block-diagonal
  causal mask and positions restarting at 0 per sequence (no cross-sequence attention).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from transformers import PreTrainedTokenizerBase

from fmlab.data.sft import IGNORE_INDEX, collate_sft, encode_prompt, pack_sft, packed_attention_mask

__all__ = ["PairStats", "collate_pairs", "encode_pair", "response_ids"]

Truncation = Literal["truncate", "drop"]


@dataclass
class PairStats:
    """Counts of one split for the data card: kept pairs, what truncation did, dropped pairs."""

    pairs: int = 0
    prompt_truncated: int = 0
    response_truncated: int = 0
    dropped: Counter = field(default_factory=Counter)
    tokens: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "pairs": self.pairs,
            "prompt_truncated": self.prompt_truncated,
            "response_truncated": self.response_truncated,
            "dropped": dict(self.dropped),
            "tokens": self.tokens,
        }


def response_ids(text: str, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids of a response, EOS appended (the model learns to stop)."""
    return [*tokenizer(text, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]


def encode_pair(
    prompt: str,
    chosen: str,
    rejected: str,
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int,
    max_prompt_length: int | None = None,
    truncation: Truncation = "truncate",
    stats: PairStats | None = None,
    template: str = "{prompt}",
    chat_template: bool = False,
    system: str | None = None,
) -> dict[str, list[int]] | None:
    """Encode one pair under the truncation rules of the module docstring.

    Args:
        prompt: The prompt text (formatted by ``template`` or the chat template).
        chosen: The preferred response.
        rejected: The other response.
        tokenizer: HF tokenizer with an EOS token.
        max_length: Longest ``prompt + response`` sequence, in tokens.
        max_prompt_length: Fewest prompt tokens truncation keeps (default ``max_length // 2``).
        truncation: ``truncate`` (rules above) or ``drop`` (pairs that do not fit are dropped).
        stats: Counts updated in place (kept, truncated, dropped by reason).
        template: Python format string with ``{prompt}``.
        chat_template: Use the tokenizer's chat template (user turn + generation prompt).
        system: System message for the chat template.

    Returns:
        ``{"prompt", "chosen", "rejected"}`` token id lists, or None when the pair is dropped.
    """
    stats = stats if stats is not None else PairStats()
    keep_prompt = max_length // 2 if max_prompt_length is None else max_prompt_length
    if not 0 < keep_prompt < max_length:
        raise ValueError(f"max_prompt_length={keep_prompt} must be in 1..max_length-1")
    p = encode_prompt(
        prompt, tokenizer, template=template, chat_template=chat_template, system=system
    )
    c, r = response_ids(chosen, tokenizer), response_ids(rejected, tokenizer)
    if not p:
        stats.dropped["empty_prompt_tokens"] += 1
        return None
    over = len(p) + max(len(c), len(r)) - max_length
    if over > 0:
        if truncation == "drop":
            stats.dropped["too_long"] += 1
            return None
        cut = min(over, max(len(p) - keep_prompt, 0))
        if cut:
            p = p[cut:]
            stats.prompt_truncated += 1
        room = max_length - len(p)
        if len(c) > room or len(r) > room:
            c, r = c[:room], r[:room]
            stats.response_truncated += 1
    if c == r:  # texts differ (checked when read), so only truncation can make them equal
        stats.dropped["identical_after_truncation" if over > 0 else "identical_tokens"] += 1
        return None
    stats.pairs += 1
    stats.tokens += 2 * len(p) + len(c) + len(r)
    return {"prompt": p, "chosen": c, "rejected": r}


def _sequences(pairs: Sequence[dict[str, Sequence[int]]]) -> list[dict[str, list[int]]]:
    """The 2B SFT-style sequences: every ``prompt + chosen``, then every ``prompt + rejected``."""
    out = []
    for key in ("chosen", "rejected"):
        for pair in pairs:
            prompt, response = list(pair["prompt"]), list(pair[key])
            out.append(
                {"input_ids": prompt + response, "labels": [IGNORE_INDEX] * len(prompt) + response}
            )
    return out


def collate_pairs(
    pairs: Sequence[dict[str, Any]],
    pad_id: int,
    padding_side: Literal["right", "left"] = "right",
    pack: bool = False,
    block_size: int | None = None,
) -> dict[str, torch.Tensor]:
    """Batch B pairs as 2B sequences (chosen first), padded or packed.

    Returns:
        ``input_ids``, ``labels``, ``position_ids``, ``prompt_mask``, ``seq_index`` (R, T);
        ``attention_mask`` (R, T) padded or (R, 1, T, T) packed; ``pair_index`` (B,): each
        pair's ``index`` in its split (for precomputed reference log-probs; -1 if absent).
    """
    seqs = _sequences(pairs)
    n = len(seqs)
    if pack:
        if block_size is None:
            raise ValueError("collate_pairs(pack=True) needs block_size")
        arrays = pack_sft(seqs, block_size, pad_id)
        batch = {k: torch.as_tensor(v) for k, v in arrays.items()}
        local = batch.pop("seq_ids")  # (R, T): example within its row, -1 on padding
        # pack_sft keeps order and fills rows greedily: row r's j-th example is the global
        # sequence (examples in rows before r) + j
        first = torch.cumsum((local.max(dim=1).values + 1).clamp(min=0), 0)
        first = torch.cat([first.new_zeros(1), first[:-1]])
        batch["seq_index"] = torch.where(local >= 0, local + first[:, None], -1)
        batch["attention_mask"] = packed_attention_mask(local)
        batch["prompt_mask"] = (batch["labels"] == IGNORE_INDEX) & (local >= 0)
    else:
        batch = collate_sft(seqs, pad_id=pad_id, padding_side=padding_side)
        rows = torch.arange(n)[:, None].expand_as(batch["input_ids"])
        batch["seq_index"] = torch.where(batch["attention_mask"].bool(), rows, -1)
    batch["pair_index"] = torch.as_tensor([int(p.get("index", -1)) for p in pairs])
    return batch
