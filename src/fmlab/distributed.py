"""Training across processes: FSDP with sharded checkpoints, full weights for the export, and
early checks for strategies that need optional packages (DeepSpeed).

The strategies themselves are Lightning's; :class:`FSDPStrategy` adds what fmlab relies on:

- ``wrap_layers``: which submodules become FSDP units, by class name from the config (``auto``:
  the model's own ``_no_split_modules``, e.g. ``LlamaDecoderLayer``). Lightning's
  ``auto_wrap_policy`` needs class objects, which a YAML file cannot hold;
- sharded checkpoints (a directory per checkpoint) written into ``<name>.tmp/`` and swapped in
  once every rank has finished, like :class:`~fmlab.callbacks.checkpoint_io.AtomicCheckpointIO`
  does for files: Lightning alone overwrites ``last.ckpt/`` in place, so a kill mid-write
  leaves old and new shards mixed under a complete-looking ``meta.pt``;
- loading goes through the same epoch-end fix as single-file checkpoints
  (:func:`~fmlab.reliability.checkpoints.normalize_epoch_end`), which Lightning's sharded
  loader would bypass.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import lightning as L
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.strategies import FSDPStrategy as _LightningFSDP
from omegaconf import DictConfig
from torch import nn

from fmlab.config import ConfigError

__all__ = ["FSDPStrategy", "check_strategy", "swap_in_dir", "unsharded_model"]

log = logging.getLogger(__name__)


def _layer_classes(model: nn.Module, names: list[str] | str) -> set[type[nn.Module]]:
    """Classes of ``model``'s submodules named in ``names`` (``auto``: HF ``_no_split_modules``)."""
    if names == "auto":
        names = sorted(
            {n for m in model.modules() for n in (getattr(m, "_no_split_modules", None) or [])}
        )
    found = {type(m) for m in model.modules() if type(m).__name__ in set(names)}
    if names and not found:
        raise ConfigError(
            f"trainer.strategy.wrap_layers={list(names)}: no submodule of the model has one of "
            "these class names (e.g. LlamaDecoderLayer, GPT2Block)"
        )
    return found


class FSDPStrategy(_LightningFSDP):
    """Lightning's FSDP strategy with layer wrapping by class name and atomic sharded saves.

    Args:
        wrap_layers: Class names of the submodules to wrap as FSDP units (each unit's
            parameters are gathered only while it runs); ``auto``: the HF model's
            ``_no_split_modules`` (its decoder layer); ``null``: one unit for the whole model.
        checkpoint_layers: Activation checkpointing on the same layers (recompute activations
            in backward: less memory, about a third more compute).
        **kwargs: Lightning's ``FSDPStrategy`` arguments (``state_dict_type``,
            ``sharding_strategy``, ``cpu_offload``, ...) and FSDP's own.
    """

    def __init__(
        self,
        wrap_layers: list[str] | Literal["auto"] | None = "auto",
        checkpoint_layers: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.wrap_layers = wrap_layers
        self.checkpoint_layers = checkpoint_layers
        self._fmlab_wrapped: tuple[nn.Module, nn.Module] | None = None

    def _setup_model(self, model: nn.Module) -> nn.Module:
        # validate/test after fit: FSDP changed the module in place (its parameters are views
        # into this rank's shard, its layers are wrapped), so wrapping it again fails or
        # computes on shard views; the wrapper of the fit is kept instead
        if self._fmlab_wrapped is not None and self._fmlab_wrapped[0] is model:
            return self._fmlab_wrapped[1]
        wrapped = self._wrap(model)
        self._fmlab_wrapped = (model, wrapped)
        return wrapped

    def _wrap(self, model: nn.Module) -> nn.Module:
        # The policy is built here, where the model exists: the config names classes by name.
        if self.wrap_layers and "auto_wrap_policy" not in self.kwargs:
            from torch.distributed.fsdp.wrap import ModuleWrapPolicy

            classes = _layer_classes(model, self.wrap_layers)
            if classes:
                self.kwargs["auto_wrap_policy"] = ModuleWrapPolicy(classes)
                if self.checkpoint_layers:
                    self._activation_checkpointing_kwargs = {
                        "auto_wrap_policy": ModuleWrapPolicy(classes)
                    }
        from torch.distributed.fsdp import FullyShardedDataParallel

        if self.root_device.type != "cpu" or any(
            isinstance(m, FullyShardedDataParallel) for m in model.modules()
        ):  # (already wrapped: validate/test after fit; Lightning then keeps the wrapping)
            return super()._setup_model(model)
        # On CPU (gloo) torch's FSDP wants device_id=cpu spelled out, but Lightning passes the
        # device's index, None for a CPU: "FSDP needs a non-CPU accelerator device". The rest is
        # Lightning's _setup_model for an unwrapped model.
        from lightning.fabric.strategies.fsdp import (
            _move_torchmetrics_to_device,
            _setup_activation_checkpointing,
        )

        wrapped = FullyShardedDataParallel(
            module=model,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=self.root_device,
            **self.kwargs,
        )
        _move_torchmetrics_to_device(wrapped, self.root_device)
        _setup_activation_checkpointing(wrapped, self._activation_checkpointing_kwargs)
        return wrapped

    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None
    ) -> None:
        if self._state_dict_type != "sharded" or not _is_local_file_protocol(filepath):
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        path = Path(self.broadcast(str(filepath)))
        tmp = path.with_name(path.name + ".tmp")
        if self.is_global_zero and tmp.exists():  # left by a killed write
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
        self.barrier("fmlab_ckpt_tmp")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        self.barrier("fmlab_ckpt_written")  # every rank's shard is on disk
        if self.is_global_zero:
            swap_in_dir(tmp, path)
        self.barrier("fmlab_ckpt_swapped")
        return None

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> Any:
        from fmlab.reliability.checkpoints import normalize_epoch_end

        # meta.pt holds only loops/RNG/callback state: tensors and plain values, never code
        checkpoint = super().load_checkpoint(checkpoint_path, weights_only=True)
        normalize_epoch_end(checkpoint)
        return checkpoint


def swap_in_dir(new: Path, target: Path) -> None:
    """Replace ``target`` (a file or directory, or nothing) by the complete directory ``new``.

    Two renames: ``target`` → ``<target>.old``, ``new`` → ``target``, then ``.old`` is deleted.
    A kill between the renames leaves ``<target>.old`` (complete) and no ``target``;
    :func:`~fmlab.reliability.checkpoints.remove_stale_temporaries` moves it back.
    """
    old = target.with_name(target.name + ".old")
    if old.exists():
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    if old.exists():
        shutil.rmtree(old) if old.is_dir() else old.unlink()


def unsharded_model(
    trainer: L.Trainer, model: nn.Module, rebuild: Callable[[], nn.Module]
) -> nn.Module | None:
    """``model`` with full weights on rank 0, for the export; None on the other ranks.

    Without FSDP every rank holds the full weights and ``model`` itself is returned. With FSDP
    each rank holds a shard: the full state dict is gathered onto rank 0's CPU (a collective:
    every rank must call this) and loaded into ``rebuild()``, an unwrapped model of the same
    architecture and method, strictly (every key must match).
    """
    strategy = trainer.strategy
    if not isinstance(strategy, _LightningFSDP):
        return model if trainer.is_global_zero else None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    root = strategy.lightning_module
    prefix = next((f"{n}." for n, m in root.named_children() if m is model), "model.")
    # GPU: gathered into rank 0's CPU memory only. CPU (gloo): offloading a CPU tensor "to CPU"
    # segfaulted in torch 2.13's clone of the freed unsharded parameter; every rank gathers.
    offload = strategy.root_device.type != "cpu"
    full = get_model_state_dict(
        strategy.model, options=StateDictOptions(full_state_dict=True, cpu_offload=offload)
    )  # clean names (no FSDP wrapper prefixes), relative to the LightningModule
    if not trainer.is_global_zero:
        return None
    weights = {k[len(prefix) :]: v for k, v in full.items() if k.startswith(prefix)}
    plain = rebuild()
    plain.load_state_dict(weights, strict=True)
    return plain.eval()


def _check_fsdp_keys(node: DictConfig) -> None:
    """Config validation sees ``**kwargs`` and lets any key through; name a typo here instead
    (the keys of fmlab's, Lightning's and torch's FSDP)."""
    import difflib
    import inspect

    from torch.distributed.fsdp import FullyShardedDataParallel

    allowed = {
        name
        for fn in (FSDPStrategy.__init__, _LightningFSDP.__init__, FullyShardedDataParallel)
        for name in inspect.signature(fn).parameters
        if name not in ("self", "kwargs", "module")
    }
    for key in (str(k) for k in node if not str(k).startswith("_")):
        if key not in allowed:
            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"trainer.strategy.{key}: unknown key for FSDPStrategy{hint}")


def check_strategy(cfg: DictConfig) -> None:
    """Refuse, before any data is read, a strategy that cannot run here (a missing package) or
    an unknown FSDP key."""
    strategy = (cfg.get("trainer") or {}).get("strategy")
    target = strategy.get("_target_", "") if isinstance(strategy, DictConfig) else str(strategy)
    if target == f"{__name__}.FSDPStrategy":
        _check_fsdp_keys(strategy)
    if "deepspeed" not in str(target).lower():
        return
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(
            "trainer.strategy: DeepSpeed is not installed; install the optional extra with "
            "`pip install 'fmlab[deepspeed]'` (it needs CUDA GPUs; its fused ops compile on first "
            "use with the CUDA toolkit), or use trainer=fsdp"
        )
    if isinstance(strategy, DictConfig) and int(strategy.get("stage", 2)) == 3:
        # ZeRO-3 partitions the parameters like FSDP; fmlab gathers them for the export only
        # under FSDP (tested), so stage 3 is refused rather than exporting empty tensors.
        raise ConfigError(
            "trainer.strategy.stage=3: fmlab exports DeepSpeed runs with stage 1 or 2; for "
            "sharded parameters use trainer=fsdp (sharded checkpoints, full-weight export)"
        )
    if cfg.trainer.get("accelerator") == "cpu":
        raise ConfigError("trainer.strategy: Lightning's DeepSpeed strategy needs CUDA GPUs")
