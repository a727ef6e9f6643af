"""Optional packages: import them where a feature needs them, and say which extra installs them.

The core install holds what the default workflows need; the rest lives in extras of
``pyproject.toml`` (``fmlab[eval]``, ``[spark]``, ``[s3]``, ``[aws]``, ``[sweeps]``, ``[slurm]``,
``[tensorboard]``, ...; docs/get-started/install.md has the table). A feature that needs one calls
:func:`require` first, so a missing package becomes a short :class:`~fmlab.config.ConfigError`
naming the extra, before any compute is spent. Two helpers apply it to what a config or a path
asks for: :func:`require_filesystem` (``s3://`` URIs) and :func:`require_for_targets`
(``_target_`` classes whose package is optional, such as Lightning's TensorBoard logger).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterator
from types import ModuleType
from typing import Any

__all__ = ["missing", "require", "require_filesystem", "require_for_targets"]

#: fsspec protocols whose filesystem package comes with an extra: protocol -> (module, extra)
FILESYSTEM_EXTRAS: dict[str, tuple[str, str]] = {
    "s3": ("s3fs", "s3"),
    "s3a": ("s3fs", "s3"),
}

#: ``_target_`` callables that import an optional package only when built (too late to fail
#: before compute): target -> (module, extra)
TARGET_EXTRAS: dict[str, tuple[str, str]] = {
    "lightning.pytorch.loggers.TensorBoardLogger": ("tensorboard", "tensorboard"),
}


def missing(module: str) -> bool:
    """Whether ``module`` (a top-level import name such as ``litdata``) cannot be imported."""
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):  # a parent package missing, or a broken __spec__
        return True


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module`` or raise a :class:`~fmlab.config.ConfigError` naming the extra.

    Args:
        module: The import name, e.g. ``"lm_eval"``.
        extra: The fmlab extra that installs it, e.g. ``"eval"``.
        feature: What the user asked for, e.g. ``"fmlab-eval lm_eval=..."``.

    Returns:
        The imported module.
    """
    if missing(module):
        from fmlab.config.validate import ConfigError

        raise ConfigError(
            f"{feature} needs the optional package '{module}', which is not installed: "
            f"pip install 'fmlab[{extra}]'"
        )
    return importlib.import_module(module)


def require_filesystem(uri: str, feature: str) -> None:
    """Check that the filesystem package of ``uri``'s protocol (``s3://`` → s3fs) is installed.

    Args:
        uri: A path or URI; local paths need nothing.
        feature: What the URI is for, e.g. ``"output_dir=s3://bucket/data"``.
    """
    protocol = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if protocol in FILESYSTEM_EXTRAS:
        require(*FILESYSTEM_EXTRAS[protocol], feature)


def require_for_targets(cfg: Any) -> None:
    """Check the optional packages of every ``_target_`` in ``cfg`` listed in
    :data:`TARGET_EXTRAS`, without building anything (``logger=tensorboard`` without
    tensorboard fails here, before data is prepared).

    Args:
        cfg: A composed config (``DictConfig``) or plain dict.
    """
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(cfg, resolve=False) if OmegaConf.is_config(cfg) else cfg
    for key, target in _targets(plain, ""):
        if target in TARGET_EXTRAS:
            module, extra = TARGET_EXTRAS[target]
            require(module, extra, f"{key or 'config'} ({target})")


def _targets(node: Any, key: str) -> Iterator[tuple[str, str]]:
    """``(dotted key, _target_)`` of every target node under ``node``."""
    if isinstance(node, dict):
        if isinstance(node.get("_target_"), str):
            yield key, node["_target_"]
        for k, v in node.items():
            yield from _targets(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _targets(v, f"{key}[{i}]")
