"""Packages whose public names are imported on first use (PEP 562 module ``__getattr__``).

``fmlab.data`` re-exports DataModules (torch, Lightning) beside light pieces such as the
pipeline's :class:`~fmlab.data.pipeline.SourceSpec`. Importing any submodule runs the package's
``__init__`` first, so eager re-exports would make ``fmlab-prepare --help`` import torch.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of a package that re-exports names lazily.

    Usage, in a package's ``__init__.py``::

        _EXPORTS = {"PretrainDataModule": "fmlab.data.datamodule", ...}
        __all__ = list(_EXPORTS)
        __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

    Args:
        package: The package's ``__name__``.
        exports: Public name -> the module that defines it.

    Returns:
        ``(__getattr__, __dir__)`` for the package module.
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)  # later look-ups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
