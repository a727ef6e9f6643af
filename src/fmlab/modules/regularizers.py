"""Forgetting control: the frozen starting model, L2-SP and KL distillation toward it.

The *reference* is the model as training started (after ``init_from``, before any update):

- full training: a frozen copy, taken once (it costs one more set of weights);
- LoRA family (PEFT): the same model with the adapters disabled — no second copy;
- ReFT: the same model with the interventions removed — no second copy.

It is captured in ``setup``, which Lightning runs before restoring a checkpoint, so a resumed run
keeps the true starting weights (rebuilt from ``init_from``), not those of the checkpoint.

- L2-SP (Li et al. 2018): ``λ · Σ_θ ||θ − θ₀||²`` over trainable parameters; its gradient is
  ``2λ(θ − θ₀)``.
- KL distillation: ``λ · mean_t KL(p_ref(·|x_<t) || p_θ(·|x_<t))`` over predicted tokens, on all
  rows of the batch or on its replay rows only.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "KEYS",
    "capture_reference",
    "kl_to_reference",
    "l2sp_penalty",
    "model_inputs",
    "reference_mode",
    "token_kl",
]

IGNORE = -100
KEYS = ("attention_mask", "position_ids")


def _is_adapter(model: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel) or hasattr(model, "disabled")


def capture_reference(
    owner: nn.Module, model: nn.Module, *, anchor: bool = False, copy_full: bool = True
) -> None:
    """Remember the starting model, outside ``state_dict``; parts already captured are kept.

    Args:
        owner: The LightningModule that keeps the references.
        model: The model being trained.
        anchor: Also keep a copy of the trainable weights (the L2-SP anchor).
        copy_full: For a fully trained model, keep a frozen copy (adapters need none).
    """
    if anchor and "_anchor" not in owner.__dict__:
        owner.__dict__["_anchor"] = {
            name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad
        }
    if copy_full and not _is_adapter(model) and "_reference" not in owner.__dict__:
        owner.__dict__["_reference"] = copy.deepcopy(model).eval().requires_grad_(False)


@contextmanager
def reference_mode(owner: nn.Module, model: nn.Module) -> Iterator[nn.Module]:
    """Yield a module computing the starting model's outputs (eval mode, no dropout)."""
    from peft import PeftModel

    ref = owner.__dict__.get("_reference")
    if ref is not None:
        device = next(model.parameters()).device
        if next(ref.parameters()).device != device:
            ref.to(device)
        yield ref
        return
    if isinstance(model, PeftModel):
        ctx = model.disable_adapter()
    elif hasattr(model, "disabled"):  # ReFT
        ctx = model.disabled()
    else:
        raise RuntimeError("no reference model: capture_reference(..., copy_full=True) first")
    was_training = model.training
    model.eval()
    try:
        with ctx:
            yield model
    finally:
        model.train(was_training)


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Forward kwargs of a batch (ids plus masks/positions), without labels."""
    return {"input_ids": batch["input_ids"], **{k: batch[k] for k in KEYS if k in batch}}


def token_kl(
    ref_logits: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed KL(p_ref || p) over predicted positions, and their count. Logits (B, T, V)."""
    mask = labels[:, 1:] != IGNORE  # (B, T-1): positions whose next token is a target
    log_p = F.log_softmax(logits[:, :-1].float(), dim=-1)
    log_ref = F.log_softmax(ref_logits[:, :-1].float(), dim=-1)
    kl = (log_ref.exp() * (log_ref - log_p)).sum(-1)  # (B, T-1)
    return (kl * mask).sum(), mask.sum()


def kl_to_reference(
    owner: nn.Module,
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    logits: torch.Tensor,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean per-token KL(reference || model) on ``rows`` (a bool (B,) mask; None: all rows)."""
    labels = batch.get("labels", batch["input_ids"])
    if rows is not None:
        if not bool(rows.any()):
            return logits.new_zeros(())
        batch = {
            k: v[rows] if torch.is_tensor(v) and len(v) == len(rows) else v
            for k, v in batch.items()
        }
        logits, labels = logits[rows], labels[rows]
    with torch.no_grad(), reference_mode(owner, model) as ref:
        ref_logits = ref(**model_inputs(batch)).logits
    total, n = token_kl(ref_logits, logits, labels)
    return total / n.clamp(min=1)


def l2sp_penalty(owner: nn.Module, model: nn.Module) -> torch.Tensor:
    """``Σ ||θ − θ₀||²`` over the trainable parameters captured by :func:`capture_reference`."""
    anchor: dict[str, torch.Tensor] = owner.__dict__["_anchor"]
    total: Any = 0.0
    for name, p in model.named_parameters():
        ref = anchor.get(name)
        if ref is None:
            continue
        if ref.device != p.device:
            ref = anchor[name] = ref.to(p.device)
        total = total + (p - ref).pow(2).sum()
    if not torch.is_tensor(total):
        return next(model.parameters()).new_zeros(())
    return total
