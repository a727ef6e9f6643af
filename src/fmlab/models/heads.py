"""Task heads on a causal LM's hidden states: pooling and a linear layer (no Lightning here)."""

from __future__ import annotations

import inspect
from typing import Any, Literal

import torch
from torch import nn

__all__ = ["TaskHead", "final_hidden", "pool"]


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: Literal["last", "mean"]) -> torch.Tensor:
    """Pool (B, T, C) hidden states over the real tokens of ``mask`` (B, T) into (B, C).

    ``last``: the last real token (a causal model has read the whole input there); works for
    right and left padding alike. ``mean``: the average over real tokens.
    """
    mask = mask.to(hidden.device)
    if how == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1)
    T = mask.shape[1]
    last = T - 1 - mask.flip(1).to(torch.long).argmax(1)  # (B,) index of the last 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class TaskHead(nn.Module):
    """``dropout → linear`` on a pooled hidden state: logits (classification) or a value
    (regression, ``out_features=1``; squeezed to (B,)). Kept in float32 whatever the backbone."""

    def __init__(
        self,
        hidden_size: int,
        out_features: int,
        pooling: Literal["last", "mean"] = "last",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(hidden_size, out_features)
        nn.init.normal_(self.proj.weight, std=hidden_size**-0.5)
        nn.init.zeros_(self.proj.bias)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = pool(hidden, mask, self.pooling).float()  # (B, C)
        out = self.proj(self.dropout(x))  # (B, K)
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _accepts(model: nn.Module, name: str) -> bool:
    """Whether the wrapped HF model's forward takes ``name`` (PEFT and ReFT pass kwargs on)."""
    from transformers import PreTrainedModel

    inner = next((m for m in model.modules() if isinstance(m, PreTrainedModel)), model)
    return name in inspect.signature(inner.forward).parameters


def final_hidden(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """The last layer's hidden states (B, T, C) of a (possibly PEFT/ReFT-wrapped) causal LM.

    HF's last ``hidden_states`` entry is after the final norm, i.e. what the LM head reads. Only
    the last position's logits are computed when the model supports ``logits_to_keep``.
    """
    kwargs: dict[str, Any] = {k: batch[k] for k in ("attention_mask", "position_ids") if k in batch}
    if "prompt_mask" in batch and getattr(model, "accepts_prompt_mask", False):
        kwargs["prompt_mask"] = batch["prompt_mask"]
    if _accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = 1  # (B, 1, V) logits instead of (B, T, V)
    out = model(input_ids=batch["input_ids"], output_hidden_states=True, **kwargs)
    return out.hidden_states[-1]
