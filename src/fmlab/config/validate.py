"""Strict config validation, before anything is built or read.

Hydra keeps a typo'd YAML key or a ``+key=`` override silently. Here every node is checked:

- the root and plain sub-nodes against pydantic models (``extra="forbid"``);
- every ``_target_`` node against the signature of the callable it names: unknown keys are refused
  (with a "did you mean"), values are checked against the parameter annotations, including range
  constraints written as ``Annotated[float, Field(gt=0)]`` on fmlab's own builders;
- a few third-party parameters (Lightning's ``Trainer``) get extra range rules here.

Nothing is instantiated, so a bad config fails in milliseconds, naming the key.
"""

from __future__ import annotations

import datetime
import difflib
import functools
import inspect
import os
import typing
from typing import Annotated, Any, Literal

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

__all__ = ["ConfigError", "validate_config"]


class ConfigError(ValueError):
    """A configuration problem, with the offending key in the message."""


NonNeg = Annotated[int, Field(ge=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


class PathsSchema(_Strict):
    log_dir: str
    output_dir: str
    cache_dir: str
    # object storage (fmlab.utils.remote): where checkpoints/export are mirrored, fsspec options
    remote_dir: str | None = None
    storage_options: dict[str, Any] | None = None


class ExportSchema(_Strict):
    hf: bool = True
    which: typing.Literal["best", "last"] = "best"
    # adapters/ReFT: copy the base model into export/base (a self-contained export)
    include_base: bool = False


class TokenizerExtensionSchema(_Strict):
    """``extend_tokenizer``: domain tokens added to ``init_from``'s tokenizer."""

    tokens: list[Annotated[str, Field(min_length=1)]] = []
    mine: NonNeg = 0
    min_pieces: Annotated[int, Field(ge=2)] = 3
    min_count: Annotated[int, Field(ge=1)] = 5
    max_docs: Annotated[int, Field(gt=0)] | None = 20_000
    init: Literal["mean", "subtokens"] = "subtokens"


class RootSchema(_Strict):
    """Keys allowed at the top level of train/eval configs (group nodes are checked separately)."""

    task_name: str
    seed: NonNeg
    ckpt_path: str | None = None
    resume: Literal["auto", "must", "off"] = "auto"
    init_from: str | None = None
    # the resolved model references (fmlab.lineage.pin_config): written by fmlab-train itself
    lineage: dict[str, dict[str, Any]] | None = None
    extend_tokenizer: TokenizerExtensionSchema | None = None
    data_cutoff: datetime.date | None = None
    model_path: str | None = None
    # fmlab-eval: the base of an adapter/ReFT model_path when it moved, and whether a base whose
    # fingerprint differs from the recorded one may be used (recorded in the summary)
    base_model: str | None = None
    allow_base_mismatch: bool = False
    run_test: bool = True
    data_from_run: bool = True
    export: ExportSchema | None = None
    print_config: bool = False
    # names the run directory logs/<task>/runs/<run_name>: the same command resumes the run
    run_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._=+-]*$")] | None = None
    # what fmlab-train returns to Hydra sweepers (Optuna): a validation metric, never a test one
    optimized_metric: Annotated[str, Field(pattern=r"^val/")] = "val/loss"
    # fmlab-eval: more evaluation sets (name -> data overrides), lm-evaluation-harness tasks
    sets: dict[str, dict[str, Any]] | None = None
    lm_eval: dict[str, Any] | None = None
    paths: PathsSchema
    # nodes built from _target_; validated by signature below
    data: Any = None
    tokenizer: Any = None
    model: Any = None
    method: Any = None
    module: Any = None
    optim: Any = None
    scheduler: Any = None
    trainer: Any = None
    callbacks: dict[str, Any] | None = None
    logger: dict[str, Any] | None = None
    # multi-task: task name -> spec (conf/task/*.yaml), read by data/module via ${task}
    task: dict[str, Any] | None = None


# Range rules for third-party callables whose annotations carry none.
_EXTRA_RULES: dict[str, dict[str, Any]] = {
    "lightning.pytorch.trainer.trainer.Trainer": {
        "max_steps": Annotated[int, Field(ge=-1)],
        "max_epochs": Annotated[int, Field(ge=-1)] | None,
        "accumulate_grad_batches": Annotated[int, Field(ge=1)],
        "log_every_n_steps": Annotated[int, Field(ge=1)] | None,
        "val_check_interval": Annotated[float, Field(gt=0)] | None,
        "limit_val_batches": Annotated[float, Field(ge=0)] | None,
        "limit_test_batches": Annotated[float, Field(ge=0)] | None,
        "num_sanity_val_steps": Annotated[int, Field(ge=-1)] | None,
        # fmlab's DataModules shard across ranks themselves (stateful samplers)
        "use_distributed_sampler": Literal[False],
    },
}
# Keys fmlab handles itself, with the reason shown to the user.
_REFUSED: dict[str, dict[str, str]] = {
    "lightning.pytorch.trainer.trainer.Trainer": {
        "gradient_clip_val": "use module.grad_clip (it also works with fused AdamW)",
        "gradient_clip_algorithm": "use module.grad_clip (clipping is by global norm)",
    },
}


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


@functools.lru_cache(maxsize=256)
def _adapter(annotation: Any) -> TypeAdapter | None:
    try:
        return TypeAdapter(annotation, config=ConfigDict(arbitrary_types_allowed=True))
    except Exception:  # annotations pydantic cannot model: names are still checked
        return None


def _hints(fn: Any) -> dict[str, Any]:
    target = fn.__init__ if inspect.isclass(fn) else fn
    try:
        return typing.get_type_hints(target, include_extras=True)
    except Exception:
        return {}


def _value(node: DictConfig, key: str) -> Any:
    """Plain value of ``node[key]``, or a sentinel if unresolvable yet (``${hydra:...}``)."""
    try:
        value = node[key]
    except Exception:
        return _UNRESOLVED
    if isinstance(value, DictConfig | ListConfig):
        try:
            return OmegaConf.to_container(value, resolve=True)
        except Exception:
            return _UNRESOLVED
    return value


_UNRESOLVED = object()


def _plain(node: Any) -> Any:
    """Container of ``node`` resolved leaf by leaf; unresolvable leaves become a placeholder."""
    if isinstance(node, DictConfig):
        return {str(k): _plain(node._get_node(k)) for k in node}
    if isinstance(node, ListConfig):
        return [_plain(node._get_node(i)) for i in range(len(node))]
    try:
        return node._dereference_node()._value() if node._is_interpolation() else node._value()
    except Exception:
        return "<unresolved>"


def _fmt_pydantic(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        parts.append(f"{loc + ': ' if loc else ''}{e['msg']} (got {e.get('input')!r})")
    return "; ".join(parts)


# Module prefixes whose callables configs may name. Configs can come from files inside run
# directories or checkpoints (fmlab-eval rebuilds a run from its config.yaml): a `_target_` is
# code execution, so only these are imported. Extend with FMLAB_ALLOWED_TARGETS=prefix,prefix
# (an environment variable on purpose: a config file cannot widen its own permissions).
ALLOWED_TARGETS = (
    "fmlab.",
    "lightning.",
    "torch.",
    "transformers.",
    "peft.",
    "torchmetrics.",
    "datasets.",
)


def allowed_target_prefixes() -> tuple[str, ...]:
    """The built-in allow-list plus ``FMLAB_ALLOWED_TARGETS`` (comma-separated prefixes)."""
    extra = os.environ.get("FMLAB_ALLOWED_TARGETS", "")
    return ALLOWED_TARGETS + tuple(p.strip() for p in extra.split(",") if p.strip())


def disallowed_targets(node: Any, path: str = "") -> list[str]:
    """Every ``_target_`` under ``node`` outside the allow-list, as ``"path._target_: message"``."""
    found: list[str] = []
    prefixes = allowed_target_prefixes()
    if isinstance(node, DictConfig | dict):
        target = node.get("_target_")
        if target is not None and not str(target).startswith(prefixes):
            found.append(
                f"{path + '.' if path else ''}_target_: '{target}' is not allowed: fmlab only "
                f"builds objects from {', '.join(p.rstrip('.') for p in prefixes)} "
                "(set FMLAB_ALLOWED_TARGETS=<module prefix> to allow more)"
            )
        for key, value in node.items():
            if key != "_target_":
                found += disallowed_targets(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, ListConfig | list):
        for i, value in enumerate(node):
            found += disallowed_targets(value, f"{path}[{i}]")
    return found


def _check_target(node: DictConfig, path: str, errors: list[str]) -> None:
    target_name = node.get("_target_")
    if not str(target_name).startswith(allowed_target_prefixes()):
        errors += disallowed_targets({"_target_": target_name}, path)
        return  # never import it, not even to read its signature
    try:
        fn = get_object(target_name)
    except Exception as err:
        errors.append(f"{path}._target_: cannot import '{target_name}' ({err})")
        return
    qual = _qualname(fn)
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    params = sig.parameters
    open_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    hints = _hints(fn)
    extra = _EXTRA_RULES.get(qual, {})
    refused = _REFUSED.get(qual, {})
    for key in node:
        key = str(key)
        if key.startswith("_") and key.endswith("_"):
            continue
        where = f"{path}.{key}"
        if key in refused and node.get(key) is not None:
            errors.append(f"{where}: not supported here; {refused[key]}")
            continue
        if key not in params and not open_kwargs:
            close = difflib.get_close_matches(key, list(params), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            allowed = ", ".join(k for k in params if k not in ("self", "args", "kwargs"))
            errors.append(f"{where}: unknown key for {target_name}{hint} (allowed: {allowed})")
            continue
        if OmegaConf.is_missing(node, key):
            errors.append(f"{where}: a value is required (it is '???')")
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig) and "_target_" in child:
            _check_target(child, where, errors)
            continue
        if isinstance(child, DictConfig) and any(
            isinstance(item, DictConfig) and "_target_" in item for item in child.values()
        ):  # a mapping of built objects, e.g. the components of data=mixture
            _walk(child, where, errors)
            continue
        if isinstance(child, ListConfig) and any(
            isinstance(item, DictConfig) and "_target_" in item for item in child
        ):
            for i, item in enumerate(child):
                _walk(item, f"{where}[{i}]", errors)
            continue
        annotation = extra.get(key, hints.get(key))
        value = _value(node, key)
        if annotation is None or value is _UNRESOLVED:
            continue
        adapter = _adapter(annotation)
        if adapter is None:
            continue
        try:
            adapter.validate_python(value)
        except ValidationError as err:
            errors.append(f"{where}: {_fmt_pydantic(err)}")


def _walk(node: Any, path: str, errors: list[str]) -> None:
    if isinstance(node, DictConfig):
        if "_target_" in node:
            _check_target(node, path, errors)
            return
        for key in node:
            _walk(node._get_node(str(key)), f"{path}.{key}" if path else str(key), errors)


_TARGET_GROUPS = ("data", "tokenizer", "model", "method", "module", "optim", "scheduler", "trainer")


def validate_config(
    cfg: DictConfig,
    *,
    root: type[BaseModel] | None = None,
    groups: tuple[str, ...] = _TARGET_GROUPS,
) -> None:
    """Check a composed config; raise :class:`ConfigError` listing every problem found.

    Args:
        cfg: The composed root config (``train`` or ``eval``).
        root: Schema of the top-level keys (default: the train/eval schema; ``fmlab-prepare``
            passes its own).
        groups: Top-level keys that are ``_target_`` nodes, checked against their signatures.

    Raises:
        ConfigError: On unknown keys, wrong types, out-of-range values or unimportable targets.
    """
    errors: list[str] = []
    top = {str(k): _plain(cfg._get_node(str(k))) for k in cfg if str(k) != "hydra"}
    missing = {k for k in top if OmegaConf.is_missing(cfg, k)}
    errors += [f"{k}: a value is required (it is '???')" for k in sorted(missing)]
    schema = root or RootSchema
    try:
        schema.model_validate({k: v for k, v in top.items() if k not in missing})
    except ValidationError as err:
        for e in err.errors():
            loc = ".".join(str(x) for x in e["loc"])
            if e["loc"] and e["loc"][0] in missing:
                continue
            msg = e["msg"]
            if e["type"] == "extra_forbidden":
                msg = "unknown key"
                if len(e["loc"]) == 1 and (
                    close := difflib.get_close_matches(loc, list(schema.model_fields), n=1)
                ):
                    msg += f"; did you mean '{close[0]}'?"
            errors.append(f"{loc}: {msg} (got {e.get('input')!r})")
    for group in groups:
        node = cfg.get(group)
        if isinstance(node, DictConfig):
            if "_target_" not in node:
                errors.append(f"{group}: expected a node with _target_, got keys {list(node)}")
            else:
                _walk(node, group, errors)
    for group in ("callbacks", "logger"):
        node = cfg.get(group)
        if isinstance(node, DictConfig):
            for name in node:
                child = node._get_node(str(name))
                if isinstance(child, DictConfig):
                    if "_target_" not in child:
                        errors.append(f"{group}.{name}: expected a node with _target_")
                    else:
                        _walk(child, f"{group}.{name}", errors)
    if errors:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(errors))
