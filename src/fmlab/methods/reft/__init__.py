"""ReFT (Wu et al. 2024): LoReFT and DiReFT interventions on a frozen HF causal LM.

Method factories for Hydra (``_partial_: true``; ``method(model) -> model``)::

    model = loreft(model, rank=4, layers="all", positions="f7+l7", tied=True)
    out = model(input_ids=ids, attention_mask=am, labels=labels, prompt_mask=pm)
    save_reft(model, "out/reft"); model2 = load_reft(fresh_base, "out/reft")

See DESIGN.md §5 for the maths; :mod:`.interventions` (Φ), :mod:`.positions` (which tokens),
:mod:`.model` (hooks, generation), :mod:`.io` (safetensors + JSON).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field
from torch import nn

from fmlab.methods.reft.interventions import DiReFTIntervention, Intervention, LoReFTIntervention
from fmlab.methods.reft.io import CONFIG_NAME, WEIGHTS_NAME, load_reft, save_reft
from fmlab.methods.reft.layers import find_decoder_layers, resolve_layers
from fmlab.methods.reft.model import ReftModel
from fmlab.methods.reft.positions import Positions, parse_positions, position_masks

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "DiReFTIntervention",
    "Intervention",
    "LoReFTIntervention",
    "Positions",
    "ReftModel",
    "direft",
    "find_decoder_layers",
    "load_reft",
    "loreft",
    "parse_positions",
    "position_masks",
    "resolve_layers",
    "save_reft",
]

Rank = Annotated[int, Field(gt=0)]
Dropout = Annotated[float, Field(ge=0, lt=1)]
# checked again (repeats, wording of the error) by parse_positions when building
PositionSpec = Annotated[str, Field(pattern=r"^\s*[fl][1-9]\d*\s*(\+\s*[fl][1-9]\d*\s*)?$")]


def loreft(
    model: nn.Module,
    *,
    rank: Rank = 4,
    layers: str | list[int] = "all",
    positions: PositionSpec = "f7+l7",
    tied: bool = True,
    dropout: Dropout = 0.0,
    init_identity: bool = False,
) -> ReftModel:
    """LoReFT on a frozen ``model``: Φ(h) = h + Rᵀ(W h + b − R h) at chosen layers and positions.

    Args:
        model: The HF causal LM (frozen here).
        rank: r, the rank of each intervention (≤ hidden size).
        layers: ``"all"`` or decoder-layer indices (negatives count from the end).
        positions: ``"f<n>+l<n>"``, ``"f<n>"`` or ``"l<n>"``: first/last n prompt tokens.
        tied: One intervention per layer for both groups (else one per group).
        dropout: Dropout on the edit.
        init_identity: Start from W = R, b = 0 (Φ = identity).
    """
    return ReftModel(
        model,
        intervention="loreft",
        rank=rank,
        layers=layers,
        positions=positions,
        tied=tied,
        dropout=dropout,
        init_identity=init_identity,
    )


def direft(
    model: nn.Module,
    *,
    rank: Rank = 4,
    layers: str | list[int] = "all",
    positions: PositionSpec = "f7+l7",
    tied: bool = True,
    dropout: Dropout = 0.0,
) -> ReftModel:
    """DiReFT on a frozen ``model``: Φ(h) = h + W2ᵀ(W1 h + b) at chosen layers and positions.

    Args:
        model: The HF causal LM (frozen here).
        rank: r (≤ hidden size).
        layers: ``"all"`` or decoder-layer indices.
        positions: ``"f<n>+l<n>"``, ``"f<n>"`` or ``"l<n>"``.
        tied: One intervention per layer for both groups (else one per group).
        dropout: Dropout on the edit.
    """
    return ReftModel(
        model,
        intervention="direft",
        rank=rank,
        layers=layers,
        positions=positions,
        tied=tied,
        dropout=dropout,
    )
