"""Hydra's composition errors as short :class:`ConfigError` messages with a did-you-mean.

Hydra reports a typo'd key as "Key 'max_stpes' is not in struct", an unknown group option with
the whole config search path, and ``method=false`` as a bare ``ValueError`` without naming the
override. :func:`explain_compose_error` turns each into one message: the override, what is wrong,
the closest existing key or option, and the fix. Used by :func:`fmlab.config.compose_config`
(notebooks, tests) and by the console scripts (:mod:`fmlab.cli`).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.errors import HydraException

from fmlab.config.validate import ConfigError, allowed_target_prefixes

__all__ = ["ComposeError", "config_groups", "explain_compose_error"]


class ComposeError(ConfigError, HydraException):
    """The command line does not compose into a config (both a ConfigError and a HydraException,
    so code catching either keeps working)."""


def config_groups(conf_dir: Path) -> dict[str, list[str]]:
    """Config groups under ``conf_dir`` (``method``, ``prepare/recipe``, ...) and their options."""
    groups = {}
    for folder in sorted(p for p in conf_dir.rglob("*") if p.is_dir()):
        options = sorted(f.stem for f in folder.glob("*.yaml"))
        if options:
            groups[folder.relative_to(conf_dir).as_posix()] = options
    return groups


def _closest(word: str, candidates: Sequence[str]) -> str | None:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return close[0] if close else None


def _parse(overrides: Sequence[str]) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except Exception:  # the grammar error itself is reported elsewhere
        return []


def _signature_keys(node: Any) -> list[str]:
    """Parameters of the callable a ``_target_`` node names (only allow-listed modules)."""
    target = str(node.get("_target_", "")) if hasattr(node, "get") else ""
    if not target or not target.startswith(allowed_target_prefixes()):
        return []
    try:
        from hydra.utils import get_object

        params = inspect.signature(get_object(target)).parameters
    except Exception:
        return []
    return [k for k, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _not_in_struct(err: Exception, overrides: Sequence[str]) -> str | None:
    cause = err.__cause__
    parent = getattr(cause, "parent_node", None)
    full_key, key = getattr(cause, "full_key", None), getattr(cause, "key", None)
    if parent is None or not full_key or key is None:
        return None
    full_key, key = str(full_key), str(key)
    override = next(
        (o for o in overrides if o.lstrip("+~").split("=", 1)[0].startswith(full_key)), full_key
    )
    typed, _, value = override.lstrip("+~").partition("=")
    rest = typed[len(full_key) :]  # what followed the missing key, e.g. ".max_steps"
    prefix = full_key[: -len(key)].rstrip(".")
    where = prefix or "the top level"
    keys = [str(k) for k in parent if not str(k).startswith("_") and str(k) != "hydra"]
    if close := _closest(key, keys):
        dotted = f"{prefix}.{close}" if prefix else close
        return f"{override}: {where} has no key '{key}'; did you mean {dotted}{rest}={value}?"
    if not rest and (close := _closest(key, _signature_keys(parent))):
        return (
            f"{override}: {where} has no key '{key}'; did you mean +{prefix}.{close}={value}? "
            f"({close} is an argument of {parent.get('_target_')} that the config does not set: "
            "add it with a leading +)"
        )
    shown = ", ".join(keys[:30]) + (", ..." if len(keys) > 30 else "")
    return (
        f"{override}: {where} has no key '{key}'\n  keys of {where}: {shown}\n"
        f"  (a key the code accepts but the config does not set is added with +{typed}={value})"
    )


def _missing_option(err: Exception) -> str | None:
    missing = getattr(err, "missing_cfg_file", None)
    options = list(getattr(err, "options", None) or [])
    if not missing or "/" not in str(missing):
        return None
    group, option = str(missing).rsplit("/", 1)
    close = _closest(option, options)
    fix = f"; did you mean {group}={close}?" if close else ""
    listed = ", ".join(options) if options else "(none)"
    return f"{group}={option}: conf/{group}/ has no option '{option}'{fix}\n  options: {listed}"


def _group_value(overrides: Sequence[str], groups: dict[str, list[str]]) -> str | None:
    for o in _parse(overrides):
        group = o.key_or_group.split("@")[0]
        value = o.value()
        if group in groups and not isinstance(value, str | list) and value is not None:
            options = groups[group]
            return (
                f"{o.input_line}: '{group}' is a config group: its value is the name of one of "
                f"its options, not the {type(value).__name__} {value!r}\n"
                f"  options: {', '.join(options)} (e.g. {group}={options[0]})"
            )
    return None


def explain_compose_error(
    err: BaseException, overrides: Sequence[str], conf_dir: Path
) -> ComposeError | None:
    """A :class:`ComposeError` explaining why Hydra could not compose ``overrides``.

    Args:
        err: What Hydra (or OmegaConf under it) raised while composing.
        overrides: The command-line overrides.
        conf_dir: The config tree (for the group options).

    Returns:
        The error to raise instead, or None if ``err`` is not a composition problem.
    """
    from hydra.errors import (
        ConfigCompositionException,
        MissingConfigException,
        OverrideParseException,
    )
    from omegaconf.errors import OmegaConfBaseException

    message = None
    if isinstance(err, ComposeError):
        return err
    if isinstance(err, MissingConfigException):
        message = _missing_option(err)
    elif isinstance(err, ConfigCompositionException) and "Could not override" in str(err):
        message = _not_in_struct(err, overrides)
    elif isinstance(err, OverrideParseException):
        first = str(err).splitlines()[0]
        message = (
            f"{err.override}: not a valid override ({first}); quote values with spaces or "
            "brackets in the shell, e.g. 'data.sources=[a.jsonl,b.jsonl]' (grammar: "
            "https://hydra.cc/docs/advanced/override_grammar/basic/)"
        )
    elif isinstance(err, ValueError) and "Config group override" in str(err):
        message = _group_value(overrides, config_groups(conf_dir))
    elif not isinstance(err, HydraException | OmegaConfBaseException | ValueError | KeyError):
        return None
    if message is None:  # Hydra's own text, without the config search path it appends
        text = str(err).split("\nConfig search path:")[0].strip() or type(err).__name__
        cause = err.__cause__
        if isinstance(cause, OmegaConfBaseException) and str(cause).strip():
            text += "\n  " + str(cause).strip().splitlines()[0]
        shown = " ".join(overrides) if overrides else "(none)"
        message = f"the command line does not compose into a config: {text}\n  overrides: {shown}"
    return ComposeError(message)
