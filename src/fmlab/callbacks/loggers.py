"""Logger factories that need more than a constructor call."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path
from typing import Any, Literal

from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from fmlab.utils.secrets import redact_text

__all__ = ["ResumableCSVLogger", "mlflow", "wandb"]


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


def _flat(node: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(node, dict):
        out: dict[str, str] = {}
        for key, value in node.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): str(node)[:250]}  # (MLflow 2.x limits values to 500 chars)


def mlflow(
    *,
    save_dir: str,
    local_store: str,
    tracking_uri: str | None = None,
    experiment_name: str = "fmlab",
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
    config_file: str | None = None,
) -> Any:
    """An MLflow logger (Lightning's ``MLFlowLogger``) that resumes with its run directory.

    Args:
        save_dir: The run directory; ``mlflow_run.json`` there remembers the MLflow run, so a
            resumed fmlab run keeps logging into the same MLflow run.
        local_store: SQLite file used when no ``tracking_uri`` is given (one store for all runs:
            ``mlflow ui --backend-store-uri sqlite:///<file>`` compares them); artifacts go to
            ``mlartifacts/`` beside it.
        tracking_uri: Any MLflow tracking URI: ``http(s)://host:port``, ``databricks``, a
            SageMaker managed MLflow ARN (with the ``sagemaker-mlflow`` plugin), ``sqlite:///...``.
        experiment_name: MLflow experiment (default in the config: the task name).
        run_name: MLflow run name (None: the run directory's name).
        tags: Tags of the MLflow run.
        config_file: The resolved ``config.yaml``; its keys become the run's parameters
            (``optim.lr``, ``trainer.max_steps``, ...), so runs compare in the MLflow UI.
    """
    from fmlab.utils.optional import require

    require("mlflow", "mlflow", "logger=mlflow")
    from lightning.pytorch.loggers import MLFlowLogger

    uri, artifacts = tracking_uri, None
    if not uri:
        store = Path(local_store).expanduser().resolve()
        store.parent.mkdir(parents=True, exist_ok=True)
        uri, artifacts = f"sqlite:///{store}", (store.parent / "mlartifacts").as_uri()
    state = Path(save_dir) / "mlflow_run.json"
    previous = json.loads(state.read_text()) if state.is_file() else {}
    run_id = previous.get("run_id") if previous.get("tracking_uri") == redact_text(uri) else None
    logger = MLFlowLogger(
        experiment_name=experiment_name,
        run_name=run_name or Path(save_dir).name,
        tracking_uri=uri,
        tags=tags,
        run_id=run_id,
        artifact_location=artifacts,
    )
    if run_id is None and logger.run_id is not None:  # rank 0, a new MLflow run
        state.parent.mkdir(parents=True, exist_ok=True)
        state.write_text(json.dumps({"tracking_uri": redact_text(uri), "run_id": logger.run_id}))
        if config_file and Path(config_file).is_file():
            import yaml

            logger.log_hyperparams(_flat(yaml.safe_load(Path(config_file).read_text()) or {}))
    return logger


def _mlflow_preflight() -> str | None:
    from fmlab.utils.optional import missing

    if missing("mlflow"):
        return "needs the optional package 'mlflow', which is not installed: " + (
            "pip install 'fmlab[mlflow]'"
        )
    return None


mlflow.preflight = _mlflow_preflight  # checked before any data is read (fmlab.workflow)


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
