"""Hyperparameters ↔ Hydra overrides: decoding, quoting, key checks, the command line."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from fmlab.config import ConfigError

_KEY = re.compile(r"(~|\+\+|\+)?[A-Za-z_][\w-]*(/[\w-]+)*(\.[\w-]+)*(@[\w.-]*)?")
_DICT_KEY = re.compile(r"[A-Za-z_][\w-]*")


class SageMakerError(ConfigError):
    """The SageMaker job description cannot be mapped onto fmlab-train (names the input)."""


def _decode(value: Any) -> Any:
    """A hyperparameter as SageMaker stringified it → its value (JSON if it parses, else text)."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def _quote(text: str) -> str:
    # Hydra's quoted strings: escape quotes, and double the backslashes right before a quote or
    # at the end (elsewhere a backslash is literal).
    body = re.sub(r"(\\*)('|$)", lambda m: m[1] * 2 + ("\\'" if m[2] else ""), text)
    return f"'{body}'"


def _parses_as_value(text: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        override = OverridesParser.create().parse_override(f"k={text}")
    except Exception:
        return False
    return not override.is_sweep_override()


def hydra_value(value: Any, *, top: bool = True) -> str:
    """A Python value as a Hydra override value.

    A top-level string that Hydra parses as one value is used as written, so a hyperparameter
    may hold Hydra syntax (``[{path: x, text_field: body}]``, ``${oc.env:SM_CHANNEL_X}``);
    anything else (``1,2`` would be a sweep) is quoted. Strings inside lists/dicts are quoted.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(hydra_value(v, top=False) for v in value) + "]"
    if isinstance(value, dict):
        bad = [k for k in value if not _DICT_KEY.fullmatch(str(k))]
        if bad:
            raise SageMakerError(f"dict key {bad[0]!r} cannot be written as a Hydra override key")
        return "{" + ", ".join(f"{k}: {hydra_value(v, top=False)}" for k, v in value.items()) + "}"
    text = str(value)
    return text if top and text and _parses_as_value(text) else _quote(text)


def _check_key(key: str) -> None:
    if not _KEY.fullmatch(key):
        raise SageMakerError(
            f"hyperparameter {key!r} is not a config key: expected a dotted key such as "
            "trainer.max_steps or a config group such as experiment, optionally prefixed by "
            "+, ++ or ~"
        )
    bare = key.lstrip("+~")
    if bare == "hydra" or bare.startswith(("hydra.", "hydra/")) or bare == "paths.output_dir":
        raise SageMakerError(
            f"{key!r} is set by fmlab-sagemaker: the run directory is the checkpoint directory, "
            "so that a restarted job resumes (FMLAB_SM_CHECKPOINT_DIR moves it)"
        )


def _override(key: str, value: Any) -> str:
    _check_key(key)
    if key.startswith("~") and value in (None, ""):
        return key
    return f"{key}={hydra_value(value)}"


def parse_cli(argv: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """Split a SageMaker command line into hyperparameters and plain Hydra overrides.

    SageMaker passes ``--key value`` pairs (``-k value`` for one-letter keys), values stringified
    by ``str()`` (training toolkit) or ``json.dumps`` (ModelTrainer); ``--key=value`` and plain
    ``key=value`` overrides are accepted too.

    Raises:
        SageMakerError: A ``--key`` without a value.
    """
    hps: dict[str, Any] = {}
    plain: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("-"):
            plain.append(token)
            i += 1
            continue
        name = token[2:] if token.startswith("--") else token[1:]
        if "=" in name:
            key, raw = name.split("=", 1)
            i += 1
        elif i + 1 < len(argv):  # always a pair: the value may itself start with "-" ("-1")
            key, raw = name, argv[i + 1]
            i += 2
        else:
            raise SageMakerError(f"command-line hyperparameter {token!r} has no value")
        hps[key] = _decode(raw)
    return hps, plain


def hyperparameters_from_overrides(overrides: Sequence[str]) -> dict[str, str]:
    """The launcher's side: ``key=value`` overrides → SageMaker hyperparameters.

    Values stay strings in Hydra syntax; inside the job :func:`make_plan` maps them back.

    Raises:
        SageMakerError: Not an override, a bad or reserved key, or a sweep (``a=1,2``).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    hps: dict[str, str] = {}
    for arg in overrides:
        key, _, value = arg.partition("=")
        _check_key(key)
        try:
            sweep = OverridesParser.create().parse_override(arg).is_sweep_override()
        except HydraException as err:
            raise SageMakerError(f"{arg!r}: not a Hydra override ({err})") from None
        if sweep:
            raise SageMakerError(f"{arg!r}: a sweep; a job runs one config (use a tuning job)")
        hps[key] = value
    return hps
