"""The single place where config nodes become objects."""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from fmlab.config.validate import ConfigError, disallowed_targets


def build(node: DictConfig | None, key: str, /, **kwargs: Any) -> Any:
    """Instantiate a ``_target_`` node (``None`` stays ``None``).

    Args:
        node: The config node.
        key: Its dotted path in the root config, used in error messages.
        **kwargs: Runtime arguments merged into the call (objects that configs cannot hold).

    Returns:
        The built object, or a ``functools.partial`` for ``_partial_: true`` nodes.
    """
    if node is None:
        return None
    if problems := disallowed_targets(node, key):
        raise ConfigError("; ".join(problems))
    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as err:
        cause = err.__cause__ or err
        raise ConfigError(f"{key}: building {node.get('_target_')} failed: {cause}") from cause
