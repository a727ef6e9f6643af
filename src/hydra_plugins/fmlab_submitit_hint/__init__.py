"""Stand-ins for the submitit launchers when ``hydra-submitit-launcher`` is not installed.

``launcher=slurm`` and ``launcher=submitit_local`` select Hydra's ``submitit_slurm`` and
``submitit_local`` launchers, which the ``fmlab[slurm]`` extra installs. Without it, Hydra stops
while composing the config ("Could not find 'hydra/launcher/submitit_slurm'") and nothing says
what to install. When the plugin is missing, configs of the same names are registered here; their
launcher raises a :class:`~fmlab.config.ConfigError` naming the extra as the sweep sets up,
before any job runs. With the plugin installed this module registers nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.launcher import Launcher

__all__ = ["MissingSubmititLauncher"]


class MissingSubmititLauncher(Launcher):
    """A launcher that only says ``pip install 'fmlab[slurm]'`` (accepts any launcher keys)."""

    def __init__(self, **settings: Any) -> None:
        self.settings = settings

    def setup(self, **kwargs: Any) -> None:
        from fmlab.config import ConfigError

        raise ConfigError(
            "launcher=slurm and launcher=submitit_local need the optional package "
            "'hydra-submitit-launcher', which is not installed: pip install 'fmlab[slurm]'"
        )

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        raise RuntimeError("unreachable: setup() refuses to run without hydra-submitit-launcher")


def _plugin_installed() -> bool:
    # not fmlab.utils.optional: Hydra imports this module at every start (plugin discovery), and
    # fmlab.utils would add its imports (rich, ...) to `fmlab-* --help`
    import importlib.util

    try:
        return importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is not None
    except (ImportError, ValueError):
        return False


def _register_if_missing() -> None:
    if _plugin_installed():
        return
    node = {"_target_": f"{__name__}.MissingSubmititLauncher"}
    for name in ("submitit_slurm", "submitit_local"):
        ConfigStore.instance().store(group="hydra/launcher", name=name, node=node, provider="fmlab")


_register_if_missing()
