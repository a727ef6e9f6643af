"""Saving and loading whatever a method produced: a full model, a PEFT adapter, ReFT interventions.

Layout written by :func:`save_trained` (the run's ``export/``):

- full training: ``save_pretrained`` of model + tokenizer directly in ``export/``;
- LoRA family: ``export/adapter/`` (PEFT's own format, loadable by ``PeftModel.from_pretrained``)
  and ``export/merged/`` (a plain HF model, merged only after a logits check);
- ReFT: ``export/reft/`` (interventions + config + tokenizer; the base model is referenced);
- with ``include_base``: ``export/base/``, a copy of the base model, so the export is
  self-contained (adapters and interventions then load from it wherever the export goes).

The base of an adapter or ReFT export is recorded as a resolved reference (absolute path or Hub
name, content fingerprint, fmlab run id; :mod:`fmlab.lineage`): in ``adapter_config.json``
(``base_model_name_or_path``, absolute) plus ``adapter/fmlab_lineage.json``, and in
``reft_config.json`` (``base_model``). :func:`load_trained` reads any of these (or any HF model
directory) back for generation/eval: it finds the base by that reference (or ``base=...``, or the
bundled copy) and refuses a base whose fingerprint differs unless told to load it anyway.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from fmlab.config import ConfigError
from fmlab.data.tokenizer import pretrained as load_tokenizer
from fmlab.lineage import (
    ModelRef,
    check_fingerprint,
    fingerprint,
    is_hub_name,
    resolve_model_ref,
)
from fmlab.methods.lora import load_lora, merge_lora
from fmlab.models.build import pretrained as load_hf_model
from fmlab.models.export import export_hf

__all__ = ["LINEAGE_NAME", "load_trained", "recorded_base", "save_trained"]

LINEAGE_NAME = "fmlab_lineage.json"  # beside adapter_config.json: the base's resolved reference
BUNDLED_BASE = "base"  # export/base/ with include_base
# what a model directory needs to load (top-level files only: no nested merged/ or adapter/)
_BASE_FILES = (".json", ".safetensors", ".bin", ".model", ".txt", ".tiktoken", ".py", ".jinja")


def _reft():
    from fmlab.methods import reft  # imported lazily: optional heavy pieces stay off the hot path

    return reft


def _bundle_base(model: torch.nn.Module, base: ModelRef | None, out: Path) -> dict[str, Any]:
    """Copy the base model into ``out/base`` (files of a local base; ``save_pretrained`` of the
    in-memory base otherwise); returns its relative location and fingerprint."""
    target = out / BUNDLED_BASE
    shutil.rmtree(target, ignore_errors=True)
    if base is not None and base.kind == "local":
        target.mkdir(parents=True)
        for f in Path(base.path).iterdir():
            if f.is_file() and f.suffix in _BASE_FILES and f.name != "fmlab_card.json":
                shutil.copy2(f, target / f.name)
    else:  # a Hub name or a checkpoint: the weights as they are in memory, adapters removed
        import copy

        plain = copy.deepcopy(model).unload() if isinstance(model, PeftModel) else model.base
        plain.save_pretrained(str(target), safe_serialization=True)
    return {"path": BUNDLED_BASE, "fingerprint": fingerprint(target)}


def save_trained(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    card: dict[str, Any],
    sample_ids: torch.Tensor | None = None,
    *,
    base: ModelRef | None = None,
    include_base: bool = False,
) -> dict[str, str]:
    """Export ``model`` according to its kind; returns the written paths by role.

    Args:
        model: The trained model (plain HF, PEFT or ReFT).
        tokenizer: Its tokenizer.
        out_dir: The export directory.
        card: Model-card facts (``fmlab_card.json``).
        sample_ids: A batch to check merged LoRA logits on.
        base: The resolved base model (recorded with adapters and interventions).
        include_base: Also copy the base into ``<out_dir>/base`` (adapters and ReFT).
    """
    out = Path(out_dir)
    reft = _reft()
    lineage = {"base": base.to_dict() if base else None, "run_id": card.get("run_id")}
    if isinstance(model, PeftModel | reft.ReftModel) and include_base:
        lineage["bundled_base"] = _bundle_base(model, base, out)
    if isinstance(model, PeftModel):
        adapter = out / "adapter"
        model.save_pretrained(str(adapter))
        tokenizer.save_pretrained(str(adapter))
        config_file = adapter / "adapter_config.json"
        config = json.loads(config_file.read_text())
        recorded = config.get("base_model_name_or_path")
        if base is not None:
            recorded = base.path  # absolute, symlinks resolved (or the Hub name)
            if base.kind == "hub" and base.revision:
                config["revision"] = base.revision
        elif recorded and Path(recorded).expanduser().exists():
            recorded = str(Path(recorded).expanduser().resolve())
        config["base_model_name_or_path"] = recorded
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (adapter / LINEAGE_NAME).write_text(json.dumps(lineage, indent=2) + "\n")
        paths = {"adapter": str(adapter)}
        if sample_ids is not None and not getattr(model.base_model, "is_loaded_in_4bit", False):
            merged, diff = merge_lora(model, sample_ids)
            card = {**card, "merge_max_abs_logit_diff": diff, "merge_tolerance": 1e-3}
            paths["merged"] = str(export_hf(merged, tokenizer, out / "merged", card))
    elif isinstance(model, reft.ReftModel):
        target = out / "reft"
        reft.save_reft(model, target, base=lineage["base"])
        tokenizer.save_pretrained(str(target))
        (target / LINEAGE_NAME).write_text(json.dumps(lineage, indent=2) + "\n")
        paths = {"reft": str(target)}
    else:
        return {"model": str(export_hf(model, tokenizer, out, card))}
    if "bundled_base" in lineage:
        paths["base"] = str(out / BUNDLED_BASE)
    return paths


def recorded_base(export: Path) -> tuple[ModelRef | None, dict[str, Any]]:
    """The base an adapter/ReFT directory records: its reference (None when not even a name is
    recorded) and the raw lineage record (``bundled_base`` etc.).

    Exports written before fingerprints existed yield a reference with an empty fingerprint.
    """
    lineage_file = export / LINEAGE_NAME
    lineage = json.loads(lineage_file.read_text()) if lineage_file.is_file() else {}
    if lineage.get("base"):
        return ModelRef.from_dict(lineage["base"]), lineage
    reft = _reft()
    if (export / reft.CONFIG_NAME).is_file():
        cfg = json.loads((export / reft.CONFIG_NAME).read_text())
        if cfg.get("base_model"):
            return ModelRef.from_dict(cfg["base_model"]), lineage
        name = cfg.get("base_model_name")
    else:
        cfg = json.loads((export / "adapter_config.json").read_text())
        name = cfg.get("base_model_name_or_path")
    if not name:
        return None, lineage
    kind = "hub" if is_hub_name(name) and not Path(name).exists() else "local"
    return ModelRef(given=name, path=name, kind=kind, fingerprint=""), lineage


def _find_base(
    export: Path, what: str, base: str | None, allow_mismatch: bool, info: dict[str, Any]
) -> ModelRef:
    """The base to load an adapter/ReFT directory onto, checked against what it records."""
    recorded, lineage = recorded_base(export)
    bundled = lineage.get("bundled_base")
    info["recorded_base"] = recorded.to_dict() if recorded else None
    if base:
        actual = resolve_model_ref(base, "base_model")
    elif bundled and (export.parent / bundled["path"]).is_dir():
        actual = resolve_model_ref(export.parent / bundled["path"], "base_model")
        recorded = ModelRef(actual.given, actual.path, "local", bundled["fingerprint"])
    elif recorded is None:
        raise ConfigError(f"{what} does not record its base model; pass base_model=<its base>")
    elif (
        not recorded.fingerprint
        and not Path(recorded.path).expanduser().is_absolute()
        and not is_hub_name(recorded.path)
    ):
        raise ConfigError(
            f"{what} records its base as the relative path '{recorded.path}' (written by an "
            "older fmlab; such a path moves with the working directory and with `latest`); "
            "pass base_model=<the base it was trained on>"
        )
    else:
        fp = f" (fingerprint {recorded.fingerprint})" if recorded.fingerprint else ""
        actual = resolve_model_ref(
            recorded.path,
            f"{what}: base {recorded.path}",
            revision=recorded.revision,
            hint=f"the base it was trained on{fp} has moved or is gone; pass "
            "base_model=<its new location> (generate/eval/predict) or base=... (load_trained)",
        )
    note = check_fingerprint(recorded, actual, what=what, allow_mismatch=allow_mismatch)
    info.update(base=actual.to_dict(), base_mismatch=note)
    return actual


def load_trained(
    path: str | Path,
    *,
    base: str | None = None,
    dtype: str = "float32",
    allow_base_mismatch: bool = False,
    lineage: dict[str, Any] | None = None,
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """Load an fmlab export (full model, adapter or ReFT dir) or any HF model, with its tokenizer.

    Args:
        path: The directory (or a Hub name for a plain model): a run directory, its
            ``export/``, or the ``adapter/``/``reft/`` directory inside.
        base: Base model for adapters/interventions, when it moved (default: the bundled copy
            from ``include_base``, else the one recorded at training). Its fingerprint must match
            the recorded one.
        dtype: Weights dtype of the (base) model.
        allow_base_mismatch: Load onto a base whose fingerprint differs from the recorded one.
        lineage: A dict filled with what was loaded: ``base`` (the reference used),
            ``recorded_base`` and ``base_mismatch`` (None, or the mismatch allowed).

    Raises:
        ConfigError: No base can be found, or its fingerprint differs (the message names both).
    """
    info: dict[str, Any] = {} if lineage is None else lineage
    p = Path(path)
    if (p / "export").is_dir():  # a run directory
        p = p / "export"
    for sub in ("adapter", "reft"):
        if (p / sub).is_dir() and not (p / "config.json").is_file():
            p = p / sub
    tokenizer = load_tokenizer(name_or_path=str(p))
    reft = _reft()
    is_adapter = (p / "adapter_config.json").is_file()
    if is_adapter or (p / reft.CONFIG_NAME).is_file():
        what = f"{'adapter' if is_adapter else 'ReFT export'} {p.resolve()}"
        ref = _find_base(p, what, base, allow_base_mismatch, info)
        if ref.kind == "checkpoint":
            raise ConfigError(
                f"{what}: its base is a Lightning checkpoint ({ref.path}); load the run's "
                "merged export, or export with export.include_base=true"
            )
        base_model = load_hf_model(name_or_path=ref.path, dtype=dtype, revision=ref.revision)
        if is_adapter:
            return load_lora(base_model, p).eval(), tokenizer
        return reft.load_reft(base_model, p).eval(), tokenizer
    info.update(base=None, recorded_base=None, base_mismatch=None)
    return load_hf_model(name_or_path=str(p), dtype=dtype).eval(), tokenizer
