"""Saving and loading interventions: ``reft_config.json`` + ``interventions.safetensors``.

The safetensors file holds each intervention's state dict under ``<name>.<param>`` (for LoReFT the
Householder reflectors ``<name>.rotation.parametrizations.weight.original`` and column signs
``<name>.rotation.parametrizations.weight.0.signs``, which restore R exactly) plus, for LoReFT,
the materialised ``<name>.R`` (r, d) for inspection by other tools and as a check on load.
Loading refuses any mismatch (keys, shapes, sizes, R) with the key named: it never falls back to
running the base model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from fmlab.methods.reft.interventions import INTERVENTIONS, LoReFTIntervention
from fmlab.methods.reft.layers import find_decoder_layers, hidden_size
from fmlab.methods.reft.model import ReftModel

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "load_reft", "save_reft"]

CONFIG_NAME = "reft_config.json"
WEIGHTS_NAME = "interventions.safetensors"
FORMAT = "fmlab-reft"
VERSION = 1

log = logging.getLogger(__name__)


def _tensors(model: ReftModel) -> dict[str, torch.Tensor]:
    out = {k: v.detach().cpu().contiguous() for k, v in model.interventions.state_dict().items()}
    for name, iv in model.interventions.items():
        if isinstance(iv, LoReFTIntervention):
            out[f"{name}.R"] = iv.R.detach().cpu().contiguous()
    return out


def _base_name(model: ReftModel) -> str | None:
    """Where the base model was loaded from: absolute when it is a local directory (a relative
    path would break as soon as the export or the working directory moves)."""
    name = getattr(model.config, "_name_or_path", None) or None
    if name and Path(name).expanduser().exists():
        return str(Path(name).expanduser().resolve())
    return name


def save_reft(model: ReftModel, out_dir: str | Path, *, base: dict | None = None) -> Path:
    """Write ``reft_config.json`` and ``interventions.safetensors`` into ``out_dir`` (created).

    Args:
        model: The ReFT model.
        out_dir: Target directory.
        base: The resolved base reference (:meth:`fmlab.lineage.ModelRef.to_dict`), recorded as
            ``base_model`` so a load can find the base and check its fingerprint.

    Returns:
        The directory.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = _tensors(model)
    config = {
        "format": FORMAT,
        "version": VERSION,
        **model.spec(),
        "base_model_class": type(model.base).__name__,
        "base_model_name": (base or {}).get("path") or _base_name(model),
        "base_model": base,
        "dtype": str(model.dtype).removeprefix("torch."),  # the base's; interventions: float32
        "intervention_dtype": "float32",
        "tensors": sorted(tensors),
    }
    if model.kind == "loreft":
        config["orthogonal"] = "householder reflectors (r, d) + column signs (r,)"
    save_file(tensors, str(out / WEIGHTS_NAME), metadata={"format": "pt", "fmlab": FORMAT})
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return out


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(f"load_reft: {msg}")


def load_reft(base_model: nn.Module, in_dir: str | Path) -> ReftModel:
    """Attach saved interventions to ``base_model``; outputs equal those of the saved model.

    Raises:
        FileNotFoundError: Missing config or weights file.
        ValueError: Format, size, layer, key or shape mismatch (the key is named). The base
            model is left as it was (no hooks, ``requires_grad`` restored).
    """
    src = Path(in_dir)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (src / name).is_file():
            raise FileNotFoundError(f"load_reft: no {name} in {src}")
    cfg = json.loads((src / CONFIG_NAME).read_text())
    _check(
        cfg.get("format") == FORMAT, f"{CONFIG_NAME}: format={cfg.get('format')!r}, not {FORMAT}"
    )
    required = ("type", "hidden_size", "rank", "layers", "num_layers", "positions", "tied")
    missing = [k for k in required if k not in cfg]
    _check(not missing, f"{CONFIG_NAME}: missing key(s) {missing}")
    _check(cfg.get("type") in INTERVENTIONS, f"{CONFIG_NAME}: unknown type={cfg.get('type')!r}")
    d = hidden_size(base_model)
    _check(
        cfg["hidden_size"] == d,
        f"{CONFIG_NAME}: hidden_size={cfg['hidden_size']} but the base model's is {d}",
    )
    n_layers = len(find_decoder_layers(base_model)[1])
    _check(
        cfg["num_layers"] == n_layers,
        f"{CONFIG_NAME}: num_layers={cfg['num_layers']} but the base model has {n_layers}",
    )
    if cfg.get("base_model_class") not in (None, type(base_model).__name__):
        log.warning(
            "load_reft: interventions were trained on %s, loading onto %s",
            cfg["base_model_class"],
            type(base_model).__name__,
        )
    tensors = load_file(str(src / WEIGHTS_NAME))
    flags = {id(p): p.requires_grad for p in base_model.parameters()}
    model = ReftModel(
        base_model,
        intervention=cfg["type"],
        rank=cfg["rank"],
        layers=cfg["layers"],
        positions=cfg["positions"],
        tied=cfg["tied"],
        dropout=cfg.get("dropout", 0.0),
    )
    try:
        expected = {k: tuple(v.shape) for k, v in _tensors(model).items()}
        missing = sorted(set(expected) - set(tensors))
        unexpected = sorted(set(tensors) - set(expected))
        _check(not missing, f"{WEIGHTS_NAME}: missing key(s) {missing}")
        _check(not unexpected, f"{WEIGHTS_NAME}: unexpected key(s) {unexpected}")
        for key, shape in expected.items():
            got = tuple(tensors[key].shape)
            _check(got == shape, f"{WEIGHTS_NAME}: key {key!r} has shape {got}, expected {shape}")
        state = model.interventions.state_dict()
        model.interventions.load_state_dict({k: tensors[k] for k in state}, strict=True)
        for name, iv in model.interventions.items():
            if isinstance(iv, LoReFTIntervention):
                saved = tensors[f"{name}.R"]
                _check(
                    torch.allclose(iv.R.detach().cpu(), saved, rtol=0, atol=1e-6),
                    f"{WEIGHTS_NAME}: key '{name}.R' does not match the R restored from "
                    f"'{name}.rotation.parametrizations.weight.original'",
                )
    except Exception:
        model.remove()
        for p in base_model.parameters():
            p.requires_grad_(flags[id(p)])
        raise
    return model
