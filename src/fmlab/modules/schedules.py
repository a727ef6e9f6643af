"""Learning-rate schedules as multiplicative factors on the peak LR (``LambdaLR``).

``*_factor`` functions are the maths (unit-tested); the factories wrap them for the module, which
passes ``total_steps`` (the trainer's estimate of optimizer steps).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Annotated, Literal

from pydantic import Field
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["constant", "constant_factor", "cosine", "cosine_factor", "wsd", "wsd_factor"]

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


def wsd_factor(
    step: int,
    *,
    total_steps: int,
    warmup_steps: int,
    decay_steps: int,
    min_lr_ratio: float,
    decay_shape: str = "linear",
) -> float:
    """Warmup-stable-decay: linear warmup, 1 until the last ``decay_steps``, then an anneal to
    ``min_lr_ratio`` at ``total_steps`` (``linear``, ``cosine`` or ``sqrt``: 1 - sqrt(progress)).

    The stable phase can run for any length ("infinite" schedule): a model can be branched off and
    annealed at any point, and only the decay needs to know where training ends.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_start = max(warmup_steps, total_steps - decay_steps)
    if step < decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start) / max(1, total_steps - decay_start))
    if decay_shape == "cosine":
        frac = 0.5 * (1 + math.cos(math.pi * progress))
    elif decay_shape == "sqrt":
        frac = 1 - math.sqrt(progress)
    else:
        frac = 1 - progress
    return min_lr_ratio + (1 - min_lr_ratio) * frac


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


def wsd(
    optimizer: Optimizer,
    *,
    total_steps: Annotated[int, Field(gt=0)],
    warmup_steps: Annotated[int, Field(ge=0)] = 0,
    warmup_ratio: Ratio | None = None,
    decay_ratio: Ratio = 0.2,
    min_lr_ratio: Ratio = 0.0,
    decay_shape: Literal["linear", "cosine", "sqrt"] = "linear",
) -> LambdaLR:
    """Warmup, constant peak LR, then a final anneal over the last ``decay_ratio`` of the steps."""
    warm = _warmup_steps(total_steps, warmup_steps, warmup_ratio)
    return LambdaLR(
        optimizer,
        partial(
            wsd_factor,
            total_steps=total_steps,
            warmup_steps=warm,
            decay_steps=round(decay_ratio * total_steps),
            min_lr_ratio=min_lr_ratio,
            decay_shape=decay_shape,
        ),
    )
