"""Continued training: starting from pretrained weights (``init_from``) and the provenance of the
result (what it continued from, on which data, up to which date).

``init_from`` starts a *new* run from a model's weights: the optimizer, LR schedule, step counter
and data position start afresh. ``ckpt_path`` instead resumes an interrupted run, all of those
included. Sources, in the order they are recognised:

- a ``.ckpt`` file: its weights only, in the architecture of the run that wrote it
  (``<run>/config.yaml``), with that run's tokenizer (``<run>/tokenizer``);
- an HF model directory (``config.json``), e.g. an fmlab export, with its tokenizer;
- an fmlab run directory: its ``export/`` (``export/merged/`` for adapters), else its
  ``checkpoints/last.ckpt``;
- anything else: a Hugging Face Hub name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedTokenizerBase

from fmlab.config import ConfigError, build
from fmlab.data.tokenizer import fixed_tokenizer
from fmlab.data.tokenizer import pretrained as load_tokenizer
from fmlab.models.embeddings import NewRows, grow_embeddings

__all__ = [
    "InitSource",
    "extension_active",
    "init_model",
    "init_tokenizer_factory",
    "provenance",
    "resolve_init",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InitSource:
    """Where ``init_from`` points: ``kind`` hf (a model directory or Hub name) or checkpoint."""

    value: str
    kind: Literal["hf", "checkpoint"]
    path: str
    tokenizer: str


def resolve_init(value: str) -> InitSource:
    """Classify ``init_from`` (see the module docstring); local paths are checked here.

    The location comes from :func:`fmlab.lineage.resolve_model_ref` (absolute, symlinks
    resolved), the same resolution ``fmlab-train`` pins in ``config.yaml``.

    Raises:
        ConfigError: A path that exists but holds no model, or a checkpoint without its run's
            ``config.yaml``/``tokenizer/``.
    """
    from fmlab.lineage import resolve_model_ref

    ref = resolve_model_ref(value, "init_from", allow_checkpoint=True)
    if ref.kind == "checkpoint":
        run = Path(ref.path).parent
        run = run.parent if run.name == "checkpoints" else run
        return InitSource(value, "checkpoint", ref.path, str(run / "tokenizer"))
    return InitSource(value, "hf", ref.path, ref.path)


def extension_active(extension: Any) -> bool:
    """Whether an ``extend_tokenizer`` node adds any token (explicit ``tokens`` or ``mine``)."""
    return bool(extension) and bool(extension.get("tokens") or extension.get("mine"))


def init_tokenizer_factory(value: str | None, extension: Any = None) -> Any:
    """Tokenizer factory for the data when starting from ``value`` (None: use the config's).

    Args:
        value: ``init_from``.
        extension: The ``extend_tokenizer`` node: domain tokens added to the base tokenizer
            (see :mod:`fmlab.data.tokenizer_extension`).

    Raises:
        ConfigError: ``extend_tokenizer`` without ``init_from``.
    """
    active = extension_active(extension)
    if not value:
        if active:
            raise ConfigError(
                "extend_tokenizer: adds tokens to a pretrained model's tokenizer and needs "
                "init_from (a model trained from scratch takes its vocabulary from tokenizer=bpe)"
            )
        return None
    base = load_tokenizer(name_or_path=resolve_init(value).tokenizer)
    if not active:
        return fixed_tokenizer(base)
    from fmlab.data.tokenizer_extension import extension_factory

    node = OmegaConf.to_container(extension) if isinstance(extension, DictConfig) else extension
    settings = {k: v for k, v in dict(node).items() if k != "init"}
    return extension_factory(base, **settings)


def _checkpoint_weights(path: str) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    weights = {
        k.removeprefix("model."): v
        for k, v in state.get("state_dict", {}).items()
        if k.startswith("model.")
    }
    if not weights:
        raise ConfigError(f"init_from={path}: the checkpoint holds no model weights")
    if any(k.startswith("base_model.") or ".interventions." in k for k in weights):
        raise ConfigError(
            f"init_from={path}: an adapter/ReFT run's checkpoint; start from its export "
            "(export/merged for LoRA) instead"
        )
    return weights


def init_model(
    value: str,
    tokenizer: PreTrainedTokenizerBase,
    block_size: int | None,
    new_rows: NewRows = "subtokens",
) -> torch.nn.Module:
    """The starting model of a continued run (train mode), before any method wraps it.

    A ``tokenizer`` with more tokens than the source's (``extend_tokenizer``) gets new
    embedding/LM-head rows, initialised per ``new_rows`` (see :mod:`fmlab.models.embeddings`).
    """
    from fmlab.models.build import pretrained

    source = resolve_init(value)
    base_tok = load_tokenizer(name_or_path=source.tokenizer)
    if source.kind == "hf":
        model = pretrained(name_or_path=source.path, vocab_size=len(base_tok))
    else:
        run = Path(source.tokenizer).parent
        run_cfg = OmegaConf.load(run / "config.yaml")
        factory = build(run_cfg.model, f"init_from ({run}/config.yaml: model)")
        model = factory(
            vocab_size=len(base_tok),
            max_position_embeddings=block_size or run_cfg.data.get("block_size"),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        result = model.load_state_dict(_checkpoint_weights(source.path), strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ConfigError(
                f"init_from={value}: weights do not fit the run's model: missing "
                f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
            )
    if len(tokenizer) > len(base_tok):
        added = grow_embeddings(model, base_tok, tokenizer, new_rows)
        log.info("init_from: %d new embedding rows (%s init)", len(added), new_rows)
    return model.train()


def _parent_card(source: InitSource) -> dict[str, Any]:
    import json

    card = Path(source.path) / "fmlab_card.json"
    return json.loads(card.read_text()) if source.kind == "hf" and card.is_file() else {}


def provenance(cfg: DictConfig, datamodule: Any, tokens_seen: int) -> dict[str, Any]:
    """Model-card facts of a run: what it continued from, data sources, tokens, data cutoff.

    The cutoff is ``cfg.data_cutoff`` if given, else the latest document date of the data (from
    the prepared datasets' cards), else the parent model's recorded cutoff.
    """
    stats = datamodule.stats or {}
    comps = stats.get("components") or {"data": stats}
    block = stats.get("block_size") or 0
    rows = datamodule.rows_taken() if hasattr(datamodule, "rows_taken") else {}
    sources = {
        name: {
            "sources": c.get("sources"),
            "train_tokens_available": (c.get("train") or {}).get("tokens"),
            **({"tokens_seen": rows[name] * block} if name in rows else {}),
            "date_max": (c.get("dates") or {}).get("max"),
        }
        for name, c in comps.items()
    }
    if not rows:
        next(iter(sources.values()))["tokens_seen"] = tokens_seen
    init = cfg.get("init_from")
    parent = _parent_card(resolve_init(init)) if init else {}
    dates = [s["date_max"] for s in sources.values() if s["date_max"]]
    if cfg.get("data_cutoff"):
        cutoff, how = str(cfg.data_cutoff), "given (data_cutoff)"
    elif dates:
        cutoff, how = max(dates), "latest document date seen"
    else:
        cutoff, how = parent.get("data_cutoff"), "inherited from the parent model"
    if cutoff is None:
        how = "unknown (undated data; set data_cutoff=YYYY-MM-DD)"
    lineage = [init, *parent.get("lineage", [])] if init else []
    facts = {
        "continued_from": init,
        "lineage": lineage,
        "data_cutoff": cutoff,
        "data_cutoff_source": how,
        "data_mixture": stats.get("mixture"),
        "data_by_source": sources,
    }
    extension = cfg.get("extend_tokenizer")
    if init and extension_active(extension) and datamodule.tokenizer is not None:
        from fmlab.data.tokenizer_extension import added_tokens

        n_base = len(load_tokenizer(name_or_path=resolve_init(init).tokenizer))
        facts["tokenizer_extension"] = {
            "base_vocab": n_base,
            "vocab": len(datamodule.tokenizer),
            "init": extension.get("init"),
            "added_tokens": added_tokens(datamodule.tokenizer, n_base),
        }
    from fmlab.releases import release_facts  # a release: window, new cutoff, chain (data=release)

    facts.update(release_facts(cfg, datamodule))
    return facts
