"""What a training job does inside a Hydra sweep: record failures, return the validation metric.

- A failing run writes ``summary.json`` with ``status: failed`` and its error. Inside a multirun
  the error is not re-raised, so the other jobs of the sweep still run (and an Optuna trial is
  told FAIL); a single run still exits non-zero.
- The value returned to Hydra's sweepers is ``cfg.optimized_metric``, which the config schema only
  accepts as a ``val/...`` key: a search can never optimise a test number.
- Hydra multirun + a DDP trainer that launches its own processes is refused before anything runs:
  Lightning re-executes ``sys.argv`` in every rank, which for ``-m`` is the whole sweep again.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fmlab.config import ConfigError
from fmlab.utils import write_json

__all__ = ["is_multirun", "refuse_multirun_ddp", "run_job"]

log = logging.getLogger(__name__)

_SELF_LAUNCHED = ("ddp", "ddp_find_unused_parameters_true", "fsdp", "deepspeed")


def is_multirun() -> bool:
    """Whether this process runs a job of a Hydra multirun (``-m``)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _device_count(trainer: DictConfig) -> int:
    devices = trainer.get("devices", 1)
    if isinstance(devices, str) and devices.isdigit():
        devices = int(devices)
    if isinstance(devices, int) and devices > 0:
        return devices
    if OmegaConf.is_list(devices) or isinstance(devices, list | tuple):
        return len(devices)
    # "auto" / -1: all GPUs when they are used, one process on CPU
    import torch

    accelerator = str(trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.cuda.device_count()
    return 1


def refuse_multirun_ddp(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for a multirun job whose trainer would spawn rank processes.

    Allowed: one device, or ranks already started by a cluster (SLURM tasks from
    ``launcher=slurm``, torchrun/torchelastic), where Lightning launches nothing itself.
    """
    if not is_multirun():
        return
    trainer = cfg.get("trainer") or {}
    strategy = trainer.get("strategy", "auto")
    name = strategy if isinstance(strategy, str) else str(strategy.get("_target_", ""))
    devices = _device_count(trainer) * int(trainer.get("num_nodes", 1) or 1)
    if devices <= 1 or not any(name.lower().startswith(s) for s in _SELF_LAUNCHED):
        return
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if SLURMEnvironment.detect() or TorchElasticEnvironment.detect():
        return
    raise ConfigError(
        f"trainer.strategy={name} with {devices} devices inside a Hydra multirun (-m) is refused: "
        "Lightning would start every rank by re-running this command line, i.e. the whole sweep. "
        "Launch the sweep with launcher=slurm (one SLURM task per device: "
        "hydra.launcher.tasks_per_node=<devices>, hydra.launcher.gpus_per_node=<devices>; "
        "Lightning then reads the ranks from SLURM), or run each configuration as its own "
        "single run: `fmlab-train trainer=ddp <overrides>`."
    )


def _output_dir(cfg: DictConfig) -> Path | None:
    try:
        return Path(cfg.paths.output_dir)
    except Exception:  # an unresolvable paths node is itself the error being recorded
        return None


def record_failure(cfg: DictConfig, err: BaseException, started: float) -> Path | None:
    """Write (or update) ``<output_dir>/summary.json`` with ``status: failed`` and the error."""
    out = _output_dir(cfg)
    if out is None or int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0"))) != 0:
        return None
    out.mkdir(parents=True, exist_ok=True)
    path = out / "summary.json"
    summary: dict[str, Any] = {}
    if path.is_file():  # training finished but what came after failed: keep its numbers
        import json

        try:
            summary = json.loads(path.read_text())
        except ValueError:
            summary = {}
    tb = traceback.format_exception(type(err), err, err.__traceback__)
    summary.update(
        {
            "status": "failed",
            "error_type": type(err).__name__,
            "error": str(err),
            "traceback": "".join(tb[-12:]),
            "wall_s": time.time() - started,
        }
    )
    summary.setdefault("paths", {"output_dir": str(out)})
    write_json(path, summary)
    return path


def optimized_value(cfg: DictConfig, summary: dict[str, Any]) -> float:
    """``summary[cfg.optimized_metric]`` (a validation metric), with a clear error if missing."""
    metric = cfg.get("optimized_metric") or "val/loss"
    if metric not in summary:
        found = sorted(k for k in summary if k.startswith("val/"))
        raise ConfigError(f"optimized_metric={metric}: not in this run's summary (found {found})")
    return float(summary[metric])


def run_job(cfg: DictConfig, fn: Callable[[DictConfig], dict[str, Any]]) -> float | None:
    """Run ``fn(cfg)`` as one sweep job; return the optimized validation metric.

    Args:
        cfg: The composed config of the job.
        fn: The job (``fmlab.train.train``), returning its summary.

    Returns:
        The value of ``cfg.optimized_metric``; ``None`` for a failed job of a multirun.

    Raises:
        ConfigError: For multirun + self-launching DDP (before anything runs).
        Exception: Whatever ``fn`` raised, outside a multirun (after recording it).
    """
    refuse_multirun_ddp(cfg)
    started = time.time()
    try:
        return optimized_value(cfg, fn(cfg))
    except Exception as err:
        where = record_failure(cfg, err, started)
        if not is_multirun():
            raise
        log.error("run failed (%s: %s); recorded in %s", type(err).__name__, err, where)
        return None
