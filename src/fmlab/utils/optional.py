"""Optional packages: import them where a feature needs them, and say which extra installs them.

The core install holds what the default workflows need; the rest lives in extras of
``pyproject.toml`` (``fmlab[eval]``, ``[spark]``, ``[aws]``, ``[sweeps]``, ``[streaming]``, ...).
A feature that needs one calls :func:`require` first, so a missing package becomes a short
:class:`~fmlab.config.ConfigError` naming the extra, before any compute is spent.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

__all__ = ["missing", "require"]


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
