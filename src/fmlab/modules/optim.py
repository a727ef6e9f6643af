"""Optimizer factories. The module passes the model; weight decay is decoupled by parameter kind."""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn

__all__ = ["adamw", "param_groups"]

Beta = Annotated[float, Field(ge=0.0, lt=1.0)]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: matrices decay; biases, norm weights and embeddings do not.

    Decaying gains and embeddings pulls them towards zero for no benefit (GPT-2/Llama practice).
    Frozen parameters are left out.
    """
    decay, no_decay = [], []
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    seen: set[int] = set()
    for param in model.parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        (decay if param.ndim >= 2 and id(param) not in embeddings else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def adamw(
    model: nn.Module,
    *,
    lr: Annotated[float, Field(gt=0)] = 3e-4,
    weight_decay: Annotated[float, Field(ge=0)] = 0.1,
    betas: tuple[Beta, Beta] = (0.9, 0.95),
    eps: Annotated[float, Field(gt=0)] = 1e-8,
    fused: bool | Literal["auto"] = "auto",
) -> torch.optim.AdamW:
    """AdamW with decoupled weight-decay groups.

    Args:
        model: Its trainable parameters are optimized.
        lr: Peak learning rate (the scheduler scales it).
        weight_decay: Applied to weight matrices only.
        betas: Adam moment coefficients.
        eps: Adam epsilon.
        fused: Fused CUDA kernel; ``auto`` uses it when every parameter is on a GPU. Gradient
            clipping still works (fmlab clips in the module, not through Lightning).
    """
    groups = param_groups(model, weight_decay)
    if not any(g["params"] for g in groups):
        raise ValueError("optim: the model has no trainable parameters")
    if fused == "auto":
        fused = all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=bool(fused) or None)
