"""Locating ``conf/`` and composing configs outside ``@hydra.main`` (tests, notebooks)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def _find_conf_dir() -> Path:
    """Absolute path of the Hydra config tree.

    A source checkout (editable install) uses the top-level ``conf/``; an installed wheel carries a
    copy at ``fmlab/conf``. An absolute path is needed because console scripts break Hydra's
    relative ``config_path``.
    """
    here = Path(__file__).resolve()
    for candidate in (here.parents[3] / "conf", here.parents[1] / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"fmlab cannot find its conf/ directory near {here}")


CONF_DIR = _find_conf_dir()


def _run_id(pattern: str) -> str:
    """The run directory name: the SLURM job (array task) id inside a SLURM job, so a requeued
    job finds its own checkpoints again (``resume=auto``); otherwise the start time."""
    import datetime
    import os

    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    if job:
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        return f"slurm-{job}" + (
            f"_{task}" if task and os.environ.get("SLURM_ARRAY_JOB_ID") else ""
        )
    return datetime.datetime.now().strftime(pattern)


OmegaConf.register_new_resolver("fmlab_run_id", _run_id, use_cache=True, replace=True)


def compose_config(
    config_name: str = "train",
    overrides: Sequence[str] = (),
    *,
    output_dir: str | Path | None = None,
) -> DictConfig:
    """Compose a config with Hydra's compose API, as a notebook or test would.

    Args:
        config_name: Primary config (``train``, ``eval``, ...).
        overrides: Command-line style overrides.
        output_dir: Run directory to use for ``paths.output_dir`` (``${hydra:...}`` interpolations
            do not resolve outside ``@hydra.main``).

    Returns:
        The composed config, with ``paths.output_dir`` set when ``output_dir`` is given.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides))
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(Path(output_dir).resolve())
    return cfg
