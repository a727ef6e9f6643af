"""Learning-rate schedules as multiplicative factors on the peak LR (``LambdaLR``).

``*_factor`` functions are the maths (unit-tested); the factories wrap them for the module, which
passes ``total_steps`` (the trainer's estimate of optimizer steps).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Annotated

from pydantic import Field
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["constant", "constant_factor", "cosine", "cosine_factor"]

Ratio = Annotated[float, Field(ge=0.0, le=1.0)]


def _warmup_steps(total_steps: int, warmup_steps: int, warmup_ratio: float | None) -> int:
    return round(warmup_ratio * total_steps) if warmup_ratio is not None else warmup_steps


def cosine_factor(step: int, *, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """Linear warmup from 0 to 1 over ``warmup_steps``, then cosine decay to ``min_lr_ratio``.

    ``step`` counts optimizer steps already taken, so the first update uses ``1/warmup_steps``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def constant_factor(step: int, *, warmup_steps: int) -> float:
    """Linear warmup, then a constant 1."""
    return (step + 1) / warmup_steps if step < warmup_steps else 1.0


def cosine(
    optimizer: Optimizer,
    *,
    total_steps: Annotated[int, Field(gt=0)],
    warmup_steps: Annotated[int, Field(ge=0)] = 0,
    warmup_ratio: Ratio | None = None,
    min_lr_ratio: Ratio = 0.1,
) -> LambdaLR:
    """Warmup + cosine decay to ``min_lr_ratio`` x peak at ``total_steps``."""
    warm = _warmup_steps(total_steps, warmup_steps, warmup_ratio)
    return LambdaLR(
        optimizer,
        partial(
            cosine_factor, total_steps=total_steps, warmup_steps=warm, min_lr_ratio=min_lr_ratio
        ),
    )


def constant(
    optimizer: Optimizer,
    *,
    total_steps: Annotated[int, Field(gt=0)],
    warmup_steps: Annotated[int, Field(ge=0)] = 0,
    warmup_ratio: Ratio | None = None,
) -> LambdaLR:
    """Warmup, then the peak LR until the end."""
    warm = _warmup_steps(total_steps, warmup_steps, warmup_ratio)
    return LambdaLR(optimizer, partial(constant_factor, warmup_steps=warm))
