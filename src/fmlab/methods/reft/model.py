"""``ReftModel``: a frozen HF causal LM with interventions on decoder-layer outputs.

Mechanism: a forward hook on each chosen decoder layer replaces the layer's output hidden state
(the residual stream, (B, T, d)) at the selected prompt positions by Φ(h). The positions are
computed per example from a prompt mask just before each forward and read by the hooks from a
shared context; with no context set (a direct call to ``base``), the hooks pass through.
Non-selected positions are returned bitwise unchanged.

Generation: the prompt is seen once, in the prefill forward, and only that forward is edited;
decode steps with a KV cache read the edited keys/values of the prompt from the cache. Without a
cache (``use_cache=False``) every step re-runs the whole sequence, and the prompt's first tokens
are edited again, so both paths give the same tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fmlab.methods.reft.interventions import INTERVENTIONS
from fmlab.methods.reft.layers import (
    find_decoder_layers,
    hidden_size,
    is_checkpointing,
    resolve_layers,
)
from fmlab.methods.reft.positions import Positions, parse_positions, position_masks

__all__ = ["ReftModel"]


def _check_no_hooks(blocks: nn.ModuleList) -> None:
    for block in blocks:
        if any(isinstance(h, _LayerHook) for h in block._forward_hooks.values()):
            raise RuntimeError(
                "ReFT: the base model already has interventions attached (another ReftModel); "
                "call its remove() first"
            )


class _LayerHook:
    """Forward hook of one decoder layer: Φ at the current forward's positions.

    An object rather than a closure so that ``copy.deepcopy``/pickling of a ReftModel gives hooks
    bound to the copy, not to the original.
    """

    def __init__(self, owner: ReftModel, layer: int) -> None:
        self.owner, self.layer = owner, layer

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        owner, layer = self.owner, self.layer
        masks = owner._masks
        if masks is None:
            return None  # not inside a ReftModel forward: pass through
        hidden = output[0] if isinstance(output, tuple | list) else output
        if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
            raise TypeError(
                f"ReFT: decoder layer {layer} returned {type(output).__name__}; expected a "
                "(B, T, d) tensor or a tuple starting with one"
            )
        for group in owner._groups():
            iv = owner.interventions[owner._key(layer, group)]
            shape, idx = masks[group]  # idx: (N,), (N,) batch and time indices
            if shape != tuple(hidden.shape[:2]):
                raise ValueError(
                    f"ReFT: position mask {shape} does not match the hidden states "
                    f"{tuple(hidden.shape[:2])} at layer {layer} (passing a KV cache to "
                    "forward is not supported; use generate)"
                )
            idx = tuple(i.to(hidden.device) for i in idx)
            # always called, even with N = 0, so every parameter is in the graph (DDP)
            hidden = hidden.index_put(idx, iv(hidden[idx]))
        if isinstance(output, tuple | list):
            return type(output)((hidden, *output[1:]))
        return hidden


class ReftModel(nn.Module):
    """A frozen HF causal LM with LoReFT/DiReFT interventions on decoder-layer outputs.

    Behaves like the HF model for training code: ``model(input_ids=, attention_mask=, labels=,
    prompt_mask=)`` returns the base model's output (``.loss``, ``.logits``); only intervention
    parameters are trainable; ``.train()/.eval()`` propagate; ``config`` is the base config.

    Interventions are named ``layer<l>`` (tied: one Φ per layer for prefix ∪ suffix) or
    ``layer<l>_first`` / ``layer<l>_last`` (untied), in ``self.interventions``. The two groups
    never share a token (see :mod:`fmlab.methods.reft.positions`); if a caller-built mask ever
    did, the first Φ is applied and then the last Φ on its result.

    Args:
        base: The HF causal LM; all its parameters are frozen.
        intervention: ``"loreft"`` or ``"direft"``.
        rank: Rank r of each intervention.
        layers: ``"all"`` or decoder-layer indices.
        positions: Position spec (``"f7+l7"``, ``"f5"``, ``"l3"``).
        tied: One intervention per layer for all groups, or one per group.
        dropout: Dropout on the edit Φ(h) − h.
        init_identity: LoReFT only: start with W = R, b = 0 (Φ = identity).
    """

    accepts_prompt_mask = True

    def __init__(
        self,
        base: nn.Module,
        *,
        intervention: str = "loreft",
        rank: int = 4,
        layers: str | list[int] = "all",
        positions: str | Positions = "f7+l7",
        tied: bool = True,
        dropout: float = 0.0,
        init_identity: bool = False,
    ) -> None:
        super().__init__()
        if intervention not in INTERVENTIONS:
            raise ValueError(
                f"intervention={intervention!r}: expected one of {list(INTERVENTIONS)}"
            )
        if init_identity and intervention != "loreft":
            raise ValueError("init_identity is only defined for LoReFT")
        # validate everything before touching the base model
        self.layer_path, blocks = find_decoder_layers(base)
        self.layers = resolve_layers(layers, len(blocks))
        self.positions = (
            positions if isinstance(positions, Positions) else parse_positions(positions)
        )
        self.hidden_size = hidden_size(base)
        _check_no_hooks(blocks)
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 < rank <= self.hidden_size:
            raise ValueError(f"method.rank={rank!r}: must be an integer in 1..{self.hidden_size}")
        if not 0 <= dropout < 1:
            raise ValueError(f"method.dropout={dropout!r}: must be in [0, 1)")
        self.kind, self.rank, self.tied, self.dropout = intervention, rank, tied, dropout
        self.base = base
        base.requires_grad_(False)
        extra = {"init_identity": init_identity} if intervention == "loreft" else {}
        self.interventions = nn.ModuleDict()
        for layer in self.layers:
            device = next(blocks[layer].parameters()).device  # follows a device_map split
            for group in self._groups():
                iv = INTERVENTIONS[intervention](self.hidden_size, rank, dropout, **extra)
                self.interventions[self._key(layer, group)] = iv.to(device)
        # group → ((B, T), nonzero indices of its position mask), set only during a forward
        self._masks: dict[str, tuple[tuple, tuple]] | None = None
        self._handles: list[Any] = []
        self.attach()
        self.train(base.training)

    # ------------------------------------------------------------------ proxies
    @property
    def config(self) -> Any:
        """The base model's config."""
        return self.base.config

    @property
    def generation_config(self) -> Any:
        return getattr(self.base, "generation_config", None)

    @property
    def device(self) -> torch.device:
        return next(self.base.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.base.parameters()).dtype

    # ------------------------------------------------------------------ hooks
    def _groups(self) -> list[str]:
        return ["all"] if self.tied else self.positions.groups

    def _key(self, layer: int, group: str) -> str:
        return f"layer{layer}" if group == "all" else f"layer{layer}_{group}"

    def attach(self) -> None:
        """(Re-)register the hooks; a no-op when attached.

        Raises:
            RuntimeError: If another ReftModel's hooks are attached to the same base model.
        """
        if self._handles:
            return
        blocks = self.base.get_submodule(self.layer_path)
        _check_no_hooks(blocks)
        self._handles = [blocks[i].register_forward_hook(_LayerHook(self, i)) for i in self.layers]

    def remove(self) -> None:
        """Remove the hooks: the base model computes exactly as before wrapping."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    @contextmanager
    def disabled(self) -> Iterator[ReftModel]:
        """Run the plain base model inside the block; interventions come back after it."""
        was = self.attached
        self.remove()
        try:
            yield self
        finally:
            if was:
                self.attach()

    def __enter__(self) -> ReftModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def _group_masks(
        self, prompt_mask: torch.Tensor, position_ids: torch.Tensor | None = None
    ) -> dict[str, tuple[tuple, tuple]]:
        """Per intervention group: the mask's (B, T) and its nonzero (batch, time) indices,
        computed once per forward (one host sync) rather than in every layer's hook."""
        masks = position_masks(prompt_mask, self.positions, position_ids)
        if self.tied:
            union = torch.zeros_like(prompt_mask, dtype=torch.bool)
            for m in masks.values():
                union |= m
            masks = {"all": union}
        return {g: (tuple(m.shape), m.nonzero(as_tuple=True)) for g, m in masks.items()}

    @contextmanager
    def _editing(self, masks: dict[str, tuple[tuple, tuple]]) -> Iterator[None]:
        self._masks = masks
        try:
            yield
        finally:
            self._masks = None

    # ------------------------------------------------------------------ forward / generate
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        prompt_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """The base model's forward with interventions at prompt positions.

        Args:
            input_ids: (B, T).
            attention_mask: (B, T), 1 at real tokens; or a 4-D mask for packed rows.
            labels: (B, T) as for the base model (``-100`` ignored).
            prompt_mask: (B, T) bool, true at prompt tokens; None = every attended token.
            kwargs: Passed to the base model. ``position_ids`` (B, T) also delimit packed
                documents (positions restart at each), which get their own first/last tokens.
        """
        call = dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)
        if not self.attached:
            return self.base(**call)
        if self.training and is_checkpointing(self.base):
            raise ValueError(
                "ReFT with gradient checkpointing: the recomputed layers would run outside the "
                "intervention context; disable gradient checkpointing"
            )
        ref = input_ids if input_ids is not None else kwargs.get("inputs_embeds")
        if ref is None:
            raise ValueError("ReftModel.forward needs input_ids or inputs_embeds")
        shape = tuple(ref.shape[:2])
        pm = torch.ones(shape, dtype=torch.bool, device=ref.device)
        if attention_mask is not None and attention_mask.dim() == 2:  # 4-D (packed): no pads
            masks = (("prompt_mask", prompt_mask), ("attention_mask", attention_mask))
        else:
            masks = (("prompt_mask", prompt_mask),)
        for name, m in masks:
            if m is not None:
                if tuple(m.shape) != shape:
                    raise ValueError(f"{name} has shape {tuple(m.shape)}, expected {shape}")
                pm = pm & m.bool()
        pos = kwargs.get("position_ids")
        pos = pos if isinstance(pos, torch.Tensor) and tuple(pos.shape) == shape else None
        with self._editing(self._group_masks(pm, pos)):
            return self.base(**call)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **gen_kwargs: Any,
    ) -> Any:
        """``base.generate`` with interventions on the prompt, in the prefill forward only.

        Every attended input token is prompt. Greedy, sampling and beam search work; chunked
        prefill (``prefill_chunk_size``) does not (positions need the whole prompt at once).
        """
        if not self.attached:
            return self.base.generate(
                input_ids=input_ids, attention_mask=attention_mask, **gen_kwargs
            )
        gen_config = gen_kwargs.get("generation_config") or self.generation_config
        if gen_kwargs.get("prefill_chunk_size") or getattr(gen_config, "prefill_chunk_size", None):
            raise ValueError("ReFT generation does not support prefill_chunk_size")
        prompt = (
            attention_mask.bool()
            if attention_mask is not None
            else torch.ones_like(input_ids, dtype=torch.bool)
        )
        calls = 0

        def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            nonlocal calls
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is None:
                ids = kwargs["inputs_embeds"]
            b, t = ids.shape[:2]
            pm = prompt
            if b != pm.shape[0]:  # num_beams / num_return_sequences expand with repeat_interleave
                pm = pm.repeat_interleave(b // pm.shape[0], dim=0)
            first, calls = calls == 0, calls + 1
            if first:
                if t != pm.shape[1]:
                    raise RuntimeError(
                        f"ReFT generate: the prefill forward saw {t} tokens but the prompt has "
                        f"{pm.shape[1]} (a cache passed in, or chunked prefill): not supported"
                    )
                self._masks = self._group_masks(pm)
            elif t > pm.shape[1]:  # no KV cache: the whole sequence again, prompt first
                self._masks = self._group_masks(F.pad(pm, (0, t - pm.shape[1]), value=False))
            else:  # a decode step over new tokens only: the prompt's edit lives in the cache
                self._masks = None

        handle = self.base.register_forward_pre_hook(pre_hook, with_kwargs=True)
        try:
            return self.base.generate(
                input_ids=input_ids, attention_mask=attention_mask, **gen_kwargs
            )
        finally:
            handle.remove()
            self._masks = None

    def spec(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this model's interventions (for saving)."""
        return {
            "type": self.kind,
            "hidden_size": self.hidden_size,
            "rank": self.rank,
            "layers": list(self.layers),
            "num_layers": len(self.base.get_submodule(self.layer_path)),
            "layer_path": self.layer_path,
            "positions": str(self.positions),
            "tied": self.tied,
            "dropout": self.dropout,
            "keys": list(self.interventions),
        }

    def n_trainable(self) -> int:
        """Trainable parameters (the interventions'): ``(2·d·r + r)`` × interventions."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def extra_repr(self) -> str:
        return (
            f"type={self.kind}, rank={self.rank}, layers={self.layers}, "
            f"positions={self.positions}, tied={self.tied}"
        )
