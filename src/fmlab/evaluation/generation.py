"""Generation from (adapted) causal LMs, and exact-match scoring of generated answers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

__all__ = ["exact_match", "generate_ids", "generate_text", "normalize_answer"]


@torch.no_grad()
def generate_ids(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    *,
    pad_id: int,
    eos_id: int,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 32,
    seed: int | None = None,
) -> list[list[int]]:
    """New token ids for each prompt (without the prompt, cut after EOS).

    Prompts are left-padded so every row's last prompt token sits at the same position, as
    ``generate`` requires for batched decoding. Works for HF models, PEFT models and fmlab's
    ``ReftModel`` (whose interventions apply in the prefill forward only).
    """
    if seed is not None:
        torch.manual_seed(seed)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    outputs: list[list[int]] = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            width = max(len(p) for p in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            attn = torch.zeros_like(ids)
            for i, p in enumerate(chunk):
                ids[i, width - len(p) :] = torch.as_tensor(p)
                attn[i, width - len(p) :] = 1
            kwargs = {"do_sample": do_sample}
            if do_sample:
                kwargs.update(temperature=temperature, top_p=top_p)
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=attn.to(device),
                max_new_tokens=max_new_tokens,
                pad_token_id=pad_id,
                eos_token_id=eos_id,
                **kwargs,
            )
            for row in out[:, width:].tolist():
                outputs.append(row[: row.index(eos_id)] if eos_id in row else row)
    finally:
        model.train(was_training)
    return outputs


def generate_text(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    **kwargs,
) -> list[str]:
    """Decoded continuations of ``prompts`` (token id lists); kwargs as :func:`generate_ids`."""
    ids = generate_ids(
        model, prompts, pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id, **kwargs
    )
    return tokenizer.batch_decode(ids, skip_special_tokens=True)


def normalize_answer(text: str) -> str:
    """Whitespace-normalised answer (leading/trailing space and runs of spaces ignored)."""
    return " ".join(text.split())


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> list[bool]:
    """Per-example exact match after :func:`normalize_answer`."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    return [normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions, references)]
