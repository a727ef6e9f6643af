"""Full training: every weight trains (pre-training, continued pre-training, full fine-tuning)."""

from __future__ import annotations

import re

from torch import nn

__all__ = ["full"]


def full(model: nn.Module, *, freeze: list[str] | None = None) -> nn.Module:
    """Make all parameters trainable, except those matching a ``freeze`` regex.

    Args:
        model: The causal LM.
        freeze: Regexes over parameter names (``re.search``), e.g. ``["embed_tokens"]``.

    Returns:
        The same model, with ``requires_grad`` set.
    """
    patterns = [re.compile(p) for p in freeze or []]
    matched = set()
    for name, param in model.named_parameters():
        hit = [p.pattern for p in patterns if p.search(name)]
        param.requires_grad_(not hit)
        matched.update(hit)
    if unused := [p.pattern for p in patterns if p.pattern not in matched]:
        raise ValueError(f"method.freeze: pattern(s) {unused} match no parameter of the model")
    return model
