"""Saving and loading whatever a method produced: a full model, a PEFT adapter, ReFT interventions.

Layout written by :func:`save_trained` (the run's ``export/``):

- full training: ``save_pretrained`` of model + tokenizer directly in ``export/``;
- LoRA family: ``export/adapter/`` (PEFT's own format, loadable by ``PeftModel.from_pretrained``)
  and ``export/merged/`` (a plain HF model, merged only after a logits check);
- ReFT: ``export/reft/`` (interventions + config + tokenizer; the base model is referenced).

:func:`load_trained` reads any of these (or any HF model directory) back for generation/eval.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from fmlab.data.tokenizer import pretrained as load_tokenizer
from fmlab.methods.lora import adapter_base, load_lora, merge_lora
from fmlab.models.build import pretrained as load_hf_model
from fmlab.models.export import export_hf

__all__ = ["load_trained", "save_trained"]


def _reft():
    from fmlab.methods import reft  # imported lazily: optional heavy pieces stay off the hot path

    return reft


def save_trained(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    card: dict[str, Any],
    sample_ids: torch.Tensor | None = None,
) -> dict[str, str]:
    """Export ``model`` according to its kind; returns the written paths by role."""
    out = Path(out_dir)
    reft = _reft()
    if isinstance(model, PeftModel):
        adapter = out / "adapter"
        model.save_pretrained(str(adapter))
        tokenizer.save_pretrained(str(adapter))
        paths = {"adapter": str(adapter)}
        if sample_ids is not None and not getattr(model.base_model, "is_loaded_in_4bit", False):
            merged, diff = merge_lora(model, sample_ids)
            card = {**card, "merge_max_abs_logit_diff": diff, "merge_tolerance": 1e-3}
            paths["merged"] = str(export_hf(merged, tokenizer, out / "merged", card))
        return paths
    if isinstance(model, reft.ReftModel):
        target = out / "reft"
        reft.save_reft(model, target)
        tokenizer.save_pretrained(str(target))
        return {"reft": str(target)}
    return {"model": str(export_hf(model, tokenizer, out, card))}


def load_trained(
    path: str | Path, *, base: str | None = None, dtype: str = "float32"
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """Load an fmlab export (full model, adapter or ReFT dir) or any HF model, with its tokenizer.

    Args:
        path: The directory (or a Hub name for a plain model).
        base: Base model for adapters/interventions (default: the one recorded at training).
        dtype: Weights dtype of the (base) model.
    """
    p = Path(path)
    if (p / "export").is_dir():  # a run directory
        p = p / "export"
    for sub in ("adapter", "reft"):
        if (p / sub).is_dir() and not (p / "config.json").is_file():
            p = p / sub
    tokenizer = load_tokenizer(name_or_path=str(p))
    if (p / "adapter_config.json").is_file():
        base_path = base or adapter_base(p)
        if not base_path:
            raise ValueError(f"{p}: the adapter does not record its base model; pass base=...")
        model = load_lora(load_hf_model(name_or_path=base_path, dtype=dtype), p)
        return model.eval(), tokenizer
    reft = _reft()
    if (p / reft.CONFIG_NAME).is_file():
        base_path = base or json.loads((p / reft.CONFIG_NAME).read_text()).get("base_model_name")
        if not base_path:
            raise ValueError(f"{p}: the ReFT config does not record its base model; pass base=...")
        model = reft.load_reft(load_hf_model(name_or_path=base_path, dtype=dtype), p)
        return model.eval(), tokenizer
    return load_hf_model(name_or_path=str(p), dtype=dtype).eval(), tokenizer
