"""How long a sequence a model takes, and the check of a run's lengths against it at start-up.

Architectures name their context length differently in ``config.json``:
``max_position_embeddings`` (Llama, Qwen, Mistral, Gemma, Phi, OPT, GPT-NeoX, ...),
``n_positions`` (GPT-2), ``n_ctx`` (older GPT-2 configs), ``max_sequence_length``, ``seq_length``
(ChatGLM, Falcon-style), ``max_seq_len`` (MPT), ``seq_len``; multimodal configs keep it under
``text_config``. The first key found is the limit.

The rule, the same for every architecture: a sequence (a pre-training block, an SFT/task example,
a prompt plus its generated tokens) may not be longer than that limit. Models with a learned
position table (GPT-2, OPT) fail with an index error past it; rotary models (Llama, Qwen, ...)
run past it but outside the lengths they were trained on, which silently degrades them. To train
a rotary model longer on purpose, raise the value in its ``config.json`` (e.g. together with
``rope_scaling``). A config with none of the keys (e.g. a state-space model) has no limit here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fmlab.config import ConfigError

__all__ = [
    "POSITION_KEYS",
    "check_data_lengths",
    "check_generation",
    "check_lengths",
    "config_positions",
    "loaded_positions",
    "model_positions",
    "starting_positions",
]

log = logging.getLogger(__name__)

POSITION_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "n_ctx",
    "max_sequence_length",
    "seq_length",
    "max_seq_len",
    "seq_len",
)
_LENGTH_KEYS = ("block_size", "max_length")  # config keys that set a sequence length


def config_positions(config: dict[str, Any]) -> tuple[str, int] | None:
    """``(key, limit)`` from a model's ``config.json`` contents, or None when it states none."""
    for node, prefix in ((config, ""), (config.get("text_config") or {}, "text_config.")):
        for key in POSITION_KEYS:
            value = node.get(key)
            if isinstance(value, int) and value > 0:
                return prefix + key, value
    return None


def model_positions(ref: Any) -> tuple[str, int] | None:
    """``(where, limit)`` of a resolved model reference (:class:`fmlab.lineage.ModelRef`).

    ``where`` names the file and key, e.g. ``/runs/x/export/config.json: n_positions``. A
    checkpoint's model is its run's (built for that run's ``data.block_size``/``max_length``
    unless it was a pretrained model); a Hub model's config is read from the local Hub cache
    (None when it is not there).
    """
    if ref.kind == "local":
        path = Path(ref.path) / "config.json"
        found = config_positions(json.loads(path.read_text()))
        return (f"{path}: {found[0]}", found[1]) if found else None
    if ref.kind == "checkpoint":
        from omegaconf import OmegaConf

        run_cfg = OmegaConf.load(Path(ref.run_dir) / "config.yaml")
        name = OmegaConf.select(run_cfg, "model.name_or_path", default=None)
        if name and Path(str(name), "config.json").is_file():
            found = config_positions(json.loads(Path(str(name), "config.json").read_text()))
            return (f"{name}/config.json: {found[0]}", found[1]) if found else None
        for key in _LENGTH_KEYS:
            value = OmegaConf.select(run_cfg, f"data.{key}", default=None)
            if isinstance(value, int):
                return f"{ref.run_dir}/config.yaml: data.{key} (the model was built for it)", value
        return None
    try:  # a Hub name: only what is cached locally (never a download for a check)
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(ref.path, revision=ref.revision, local_files_only=True)
    except Exception as err:  # no cached config: the load itself will tell
        log.info("positions of %s unknown here (%s): lengths not checked", ref.path, err)
        return None
    found = config_positions(config.to_dict())
    return (f"{ref.path} config: {found[0]}", found[1]) if found else None


def _lengths(node: Any, prefix: str) -> Iterator[tuple[str, int]]:
    """``(key, value)`` of every ``block_size``/``max_length`` under a plain config node."""
    items = node.items() if isinstance(node, dict) else enumerate(node or [])
    if not isinstance(node, dict | list):
        return
    for key, child in items:
        if key in _LENGTH_KEYS and isinstance(child, int) and not isinstance(child, bool):
            yield f"{prefix}{key}", child
        elif isinstance(child, dict | list):
            yield from _lengths(child, f"{prefix}{key}.")


def starting_positions(refs: dict[str, Any]) -> tuple[str, int] | None:
    """``(where, limit)`` of the model a run starts from (``init_from``, else
    ``model.name_or_path``); None for a model built from scratch (its positions come from the
    data) or one that states no limit."""
    ref = refs.get("init_from") or refs.get("model")
    return model_positions(ref) if ref is not None else None


def loaded_positions(model: Any, what: str) -> tuple[str, int] | None:
    """``(where, limit)`` of a loaded HF model (also PEFT/ReFT-wrapped)."""
    config = getattr(model, "config", None)
    found = config_positions(config.to_dict()) if config is not None else None
    return (f"{what} config.json: {found[0]}", found[1]) if found else None


def check_lengths(cfg: Any, limit: tuple[str, int] | None) -> None:
    """Refuse, before any data is read, a sequence length over the model's positions.

    Checks every ``block_size`` and ``max_length`` under ``data``, ``task`` and ``callbacks``
    (retention sets), and ``data.max_new_tokens`` (generation during evaluation).

    Args:
        cfg: The run's config.
        limit: ``(where, positions)`` of the model (None: nothing to check).

    Raises:
        ConfigError: Naming the length key, its value, and the model's key and limit.
    """
    if limit is None:
        return
    from omegaconf import DictConfig, OmegaConf

    where, positions = limit
    for node in ("data", "task", "callbacks"):
        sub = cfg.get(node)
        plain = OmegaConf.to_container(sub, resolve=True) if isinstance(sub, DictConfig) else sub
        for key, value in _lengths(plain, f"{node}."):
            if value > positions:
                raise ConfigError(
                    f"{key}={value} is longer than the model's positions ({where} = "
                    f"{positions}); set {key}<={positions} (docs/concepts/lineage.md: the rule "
                    "for rotary models)"
                )
    data = cfg.get("data")
    new = data.get("max_new_tokens") if data is not None else None
    if isinstance(new, int) and new >= positions:
        raise ConfigError(
            f"data.max_new_tokens={new} leaves no room for a prompt within the model's "
            f"positions ({where} = {positions}); lower data.max_new_tokens"
        )


def check_data_lengths(datamodule: Any, limit: tuple[str, int] | None) -> None:
    """After data preparation, before the model is built: a block size taken from a prepared
    dataset, and each held-out prompt plus the generation budget of exact-match scoring."""
    if limit is None:
        return
    where, positions = limit
    block = getattr(datamodule, "block_size", None)
    if isinstance(block, int) and block > positions:
        raise ConfigError(
            f"data.block_size={block} (the prepared dataset's) is longer than the model's "
            f"positions ({where} = {positions}); prepare the data with a smaller block size"
        )
    specs = getattr(datamodule, "specs", None)
    budgets = (
        {t: (s.max_new_tokens, f"task.{t}.max_new_tokens") for t, s in specs.items()}
        if specs
        else {None: (getattr(datamodule, "max_new_tokens", None), "data.max_new_tokens")}
    )
    for task, (budget, key) in budgets.items():
        if not budget or not hasattr(datamodule, "exact_match_set"):
            continue
        if task is not None and specs[task].kind != "generative":
            continue
        for split in ("validation", "test"):
            args = (split,) if task is None else (task, split)
            lengths = [len(ids) for ids, _ in datamodule.exact_match_set(*args)]
            check_generation(lengths, budget, limit, key)


def check_generation(
    prompt_lengths: list[int], max_new_tokens: int, limit: tuple[str, int] | None, key: str
) -> None:
    """Refuse prompts whose length plus ``max_new_tokens`` exceeds the model's positions.

    Args:
        prompt_lengths: Token count of each prompt.
        max_new_tokens: The generation budget.
        limit: ``(where, positions)`` of the model (None: no limit).
        key: The config key of the budget, for the message (e.g. ``max_new_tokens``).
    """
    if limit is None or not prompt_lengths:
        return
    where, positions = limit
    longest = max(prompt_lengths)
    if longest + max_new_tokens > positions:
        raise ConfigError(
            f"a prompt of {longest} tokens + {key}={max_new_tokens} is longer than the model's "
            f"positions ({where} = {positions}); lower {key} to {max(positions - longest, 0)} "
            "or shorten the prompts"
        )
