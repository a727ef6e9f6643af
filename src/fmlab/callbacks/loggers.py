"""Logger factories that need more than a constructor call."""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path
from typing import Literal

from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from fmlab.utils.secrets import redact_text

__all__ = ["ResumableCSVLogger", "wandb"]


def _has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def wandb(
    *,
    save_dir: str,
    project: str = "fmlab",
    name: str | None = None,
    group: str | None = None,
    tags: list[str] | None = None,
    mode: Literal["auto", "online", "offline", "disabled"] = "auto",
) -> WandbLogger:
    """A W&B logger that keeps every wandb directory inside the run directory.

    Args:
        save_dir: The run directory; wandb's run, cache, config and artifact-staging directories
            all go under ``<save_dir>/wandb``.
        project: W&B project.
        name: Run name.
        group: Run group (e.g. a sweep).
        tags: Run tags.
        mode: ``auto`` follows ``WANDB_MODE`` if set, else runs online when an API key is
            configured and offline otherwise.
    """
    root = Path(save_dir) / "wandb"
    for var, sub in (
        ("WANDB_DIR", ""),
        ("WANDB_CACHE_DIR", "cache"),
        ("WANDB_CONFIG_DIR", "config"),
        ("WANDB_DATA_DIR", "data"),
    ):
        path = root / sub if sub else Path(save_dir)
        path.mkdir(parents=True, exist_ok=True)
        os.environ[var] = str(path)
    if mode == "auto":  # WANDB_MODE wins, then: online with a key, offline without
        env_mode = os.environ.get("WANDB_MODE", "")
        mode = env_mode if env_mode in ("online", "offline", "disabled") else None
        mode = mode or ("online" if _has_wandb_key() else "offline")
    extra = {}
    if any(redact_text(a) != a for a in sys.argv):  # wandb records the command line verbatim
        import wandb as wandb_sdk

        extra["settings"] = wandb_sdk.Settings(x_disable_meta=True)
    return WandbLogger(
        **extra,
        save_dir=str(save_dir),
        project=project,
        name=name,
        group=group,
        tags=tags,
        mode=mode,
        offline=mode == "offline",
    )


class _ResumingWriter(ExperimentWriter):
    """Keeps the rows of an interrupted run: a resumed run's ``metrics.csv`` has every step once.

    Lightning's writer deletes an existing ``metrics.csv``. Here it is moved aside to
    ``metrics.csv.prev`` and merged at the first save: old rows before the first step the resumed
    run logs, then the new rows (the steps after the checkpoint are replayed: their old rows go).
    """

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        self._prev = path.with_name(path.name + ".prev")
        self._first_step: int | None = None
        if path.is_file():
            if self._prev.is_file():  # killed after a merged save, before the .prev was removed
                self._prev.unlink()
            os.replace(path, self._prev)

    def log_metrics(self, metrics_dict: dict[str, float], step: int | None = None) -> None:
        if self._first_step is None and step is not None:
            self._first_step = step
        super().log_metrics(metrics_dict, step)

    def save(self) -> None:
        if not self._prev.is_file() or not self.metrics:
            return super().save()
        with self._prev.open(newline="") as fh:
            old = list(csv.DictReader(fh))
        first = self._first_step if self._first_step is not None else 2**62
        kept = [r for r in old if r.get("step") and int(float(r["step"])) < first]
        self.metrics = kept + self.metrics
        self._record_new_keys()
        tmp = Path(self.metrics_file_path + ".tmp")
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(self.metrics)
        os.replace(tmp, self.metrics_file_path)
        self._prev.unlink()
        self.metrics = []
        return None


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` whose ``metrics.csv`` survives a resume in the same run directory."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            if not _is_local_file_protocol(self.log_dir):
                return super().experiment
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumingWriter(log_dir=self.log_dir)
        return self._experiment
