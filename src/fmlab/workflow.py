"""Steps shared by the entry points, in the order ``train``/``eval`` run them.

validate → data (+ tokenizer) → model → method → module → callbacks/loggers → trainer.
Every object comes out of :func:`fmlab.config.build`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import CheckpointIO
from omegaconf import DictConfig, OmegaConf

from fmlab.callbacks.checkpoint_io import AtomicCheckpointIO
from fmlab.config import ConfigError, build
from fmlab.data.datamodule import PretrainDataModule
from fmlab.models import count_parameters

__all__ = [
    "build_data",
    "build_model",
    "build_module",
    "build_trainer",
    "checkpoint_paths",
    "link_latest",
    "metric_files",
    "preflight",
]

log = logging.getLogger(__name__)


def build_data(cfg: DictConfig, tokenizer_factory: Any = None) -> tuple[PretrainDataModule, Any]:
    """DataModule with prepared splits, and the tokenizer (from ``cfg.tokenizer`` if no factory)."""
    datamodule = build(cfg.data, "data")
    factory = tokenizer_factory or build(cfg.tokenizer, "tokenizer")
    tokenizer = datamodule.prepare(factory)
    return datamodule, tokenizer


def build_model(cfg: DictConfig, tokenizer: Any, block_size: int) -> Any:
    """The HF causal LM from ``cfg.model`` with vocabulary and ids from ``tokenizer``, adapted by
    ``cfg.method``."""
    if cfg.get("init_from"):  # continued training: the source's architecture and weights
        from fmlab.continual import init_model

        extension = cfg.get("extend_tokenizer") or {}
        model = init_model(cfg.init_from, tokenizer, block_size, extension.get("init", "subtokens"))
    else:
        factory = build(cfg.model, "model")
        model = factory(
            vocab_size=len(tokenizer),
            max_position_embeddings=block_size,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    # from_pretrained returns eval mode, and Lightning keeps submodule modes: train mode here,
    # or dropout would silently stay off during training
    return build(cfg.method, "method")(model.train())


def build_module(cfg: DictConfig, model: Any) -> L.LightningModule:
    """The LightningModule of ``cfg.module`` around ``model`` with optimizer/scheduler factories."""
    return build(
        cfg.module,
        "module",
        model=model,
        optimizer=build(cfg.optim, "optim"),
        scheduler=build(cfg.scheduler, "scheduler"),
    )


def build_trainer(cfg: DictConfig) -> L.Trainer:
    """Callbacks, loggers and the Trainer."""
    callbacks = [
        build(node, f"callbacks.{name}")
        for name, node in (cfg.get("callbacks") or {}).items()
        if node is not None
    ]
    loggers = [
        build(node, f"logger.{name}")
        for name, node in (cfg.get("logger") or {}).items()
        if node is not None
    ]
    plugins = [
        build(node, f"trainer.plugins[{i}]")
        for i, node in enumerate(cfg.trainer.get("plugins") or [])
    ]
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        # a kill mid-write keeps the previous checkpoint; with paths.remote_dir each checkpoint
        # is also uploaded to <remote_dir>/checkpoints/ (fmlab.utils.remote)
        from fmlab.utils.remote import remote_settings

        plugins.append(AtomicCheckpointIO(**remote_settings(cfg)))
    trainer = build(
        cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False, plugins=plugins
    )
    if isinstance(trainer.accelerator, CPUAccelerator):
        from fmlab.utils.malloc import keep_freed_memory

        keep_freed_memory()  # no page faults on re-allocated activations (benchmarks/README.md)
    return trainer


def checkpoint_paths(trainer: L.Trainer) -> dict[str, str | None]:
    """``best`` (by the monitored metric) and ``last`` checkpoint paths written by this trainer."""
    best = last = None
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint):
            # a run resumed from another run's checkpoint inherits its paths: only files that
            # exist count (the other run may have pruned its best checkpoint since)
            # (exists, not is_file: a sharded FSDP checkpoint is a directory)
            if cb.monitor and cb.best_model_path and Path(cb.best_model_path).exists():
                best = cb.best_model_path
            if cb.last_model_path and Path(cb.last_model_path).exists():
                last = cb.last_model_path
    return {"best": best, "last": last}


def parameter_report(model: Any) -> dict[str, Any]:
    """Total/trainable parameter counts and the trainable share."""
    total, trainable = count_parameters(model)
    return {
        "params_total": total,
        "params_trainable": trainable,
        "params_trainable_pct": 100.0 * trainable / max(total, 1),
    }


def save_resolved_config(cfg: DictConfig, output_dir: Path) -> None:
    """Write ``config.yaml`` (resolved, without the hydra node) into the run directory."""
    from fmlab.utils import atomic_write_text
    from fmlab.utils.secrets import redact

    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("hydra", None)
    atomic_write_text(output_dir / "config.yaml", OmegaConf.to_yaml(redact(plain)))


def preflight(cfg: DictConfig) -> None:
    """Checks a method can run here (e.g. QLoRA's GPU backend), before any data is read."""
    from hydra.utils import get_object

    from fmlab.distributed import check_strategy

    check_strategy(cfg)  # e.g. DeepSpeed missing: fail before the data is prepared
    # A preset's base that the user must name: `${oc.env:VAR,'??? how to make one'}` left unset
    model = cfg.get("model")
    base = model.get("name_or_path") if isinstance(model, DictConfig) else None
    if isinstance(base, str) and base.startswith("???"):
        raise ConfigError(f"model.name_or_path is not set: {base[3:].strip() or 'set it'}")
    method = cfg.get("method")
    check = getattr(get_object(method._target_), "preflight", None) if method else None
    if check is not None and (problem := check()):
        raise ConfigError(f"method: {problem}")


def metric_files(trainer: L.Trainer) -> dict[str, str]:
    """Paths of the metric logs written by the trainer's loggers."""
    found = {}
    for logger in trainer.loggers:
        log_dir = getattr(logger, "log_dir", None)
        if log_dir and Path(log_dir, "metrics.csv").is_file():
            found["metrics_csv"] = str(Path(log_dir, "metrics.csv"))
    return found


def link_latest(run_dir: Path, task_dir: Path) -> None:
    """Point ``<log_dir>/<task_name>/latest`` at ``run_dir`` (best effort, atomic replace)."""
    import os

    try:
        task_dir.mkdir(parents=True, exist_ok=True)
        tmp = task_dir / f".latest.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(run_dir.resolve(), target_is_directory=True)
        os.replace(tmp, task_dir / "latest")
    except OSError as err:  # e.g. a filesystem without symlinks: nothing depends on it
        log.warning("could not update %s/latest: %s", task_dir, err)
