"""Locating ``conf/`` and composing configs outside ``@hydra.main`` (tests, notebooks)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from fmlab.config.help import reuse_repository_in_help


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
    """The run directory name, the same on every rank of one launch.

    - inside a SLURM job: ``slurm-<job id>`` (``_<array task>``), so a requeued job finds its own
      checkpoints again (``resume=auto``). Not the step id: ``srun`` steps of one job (and the
      steps of a requeued job, which restart at 0) must share the directory;
    - under ``torchrun``: every rank runs Hydra's main and would stamp its own time, so the id
      comes from what torchrun gives all workers of one launch (:func:`_torchrun_id`);
    - otherwise the start time. Ranks that Lightning itself launches get ``hydra.run.dir`` of
      rank 0 on their command line.
    """
    import datetime
    import os

    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    if job:
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        return f"slurm-{job}" + (
            f"_{task}" if task and os.environ.get("SLURM_ARRAY_JOB_ID") else ""
        )
    if (launch := _torchrun_id(pattern)) is not None:
        return launch
    return datetime.datetime.now().strftime(pattern)


def _torchrun_id(pattern: str) -> str | None:
    """A run id shared by all workers of one ``torchrun`` launch; None outside torchrun.

    - ``--rdzv-id`` given: ``torchrun-<rdzv id>`` (the same on every node; relaunching with the
      same id continues that run, like a requeued SLURM job);
    - one node: the start time of the torchrun agent, the parent of every worker, formatted
      like a normal run (an elastic restart keeps the agent, hence the directory);
    - several nodes without an id: a hash of the rendezvous endpoint ``MASTER_ADDR:MASTER_PORT``
      that the agents agreed on (with the c10d backend the port is chosen per launch).
    """
    import datetime
    import hashlib
    import os
    import re

    env = os.environ
    if "TORCHELASTIC_RUN_ID" not in env:  # torchrun exports it to every worker
        return None
    rdzv = env["TORCHELASTIC_RUN_ID"]
    if rdzv and rdzv != "none":  # "none" is torchrun's default
        return "torchrun-" + re.sub(r"[^A-Za-z0-9._-]", "_", rdzv)
    if env.get("GROUP_WORLD_SIZE") == "1":
        import psutil

        started = psutil.Process(os.getppid()).create_time()
        return datetime.datetime.fromtimestamp(started).strftime(pattern)
    endpoint = f"{env.get('MASTER_ADDR', '')}:{env.get('MASTER_PORT', '')}"
    return "torchrun-" + hashlib.sha1(endpoint.encode()).hexdigest()[:12]


OmegaConf.register_new_resolver("fmlab_run_id", _run_id, use_cache=True, replace=True)
reuse_repository_in_help()  # `fmlab-* --help`: one config repository copy, not ~140
# ``run_name=...`` names the run (or sweep) directory instead of the time stamp: the same command
# then finds the same directory again, and resume=auto continues the run (conf/hydra/default.yaml)
OmegaConf.register_new_resolver(
    "fmlab_named", lambda stamp, name=None: str(name) if name else stamp, replace=True
)


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

    Raises:
        ComposeError: (a ConfigError) the overrides do not compose, with a did-you-mean.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        try:
            cfg = compose(config_name=config_name, overrides=list(overrides))
        except Exception as err:  # a typo'd key, an unknown option, method=false, ...
            from fmlab.config.hydra_errors import explain_compose_error

            explained = explain_compose_error(err, list(overrides), CONF_DIR)
            if explained is None:
                raise
            raise explained from err
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(Path(output_dir).resolve())
    return cfg
