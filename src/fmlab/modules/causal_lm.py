"""The causal-LM objective as a LightningModule (pre-training and continued pre-training)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Any, Literal

import lightning as L
import torch
from pydantic import Field
from torch import nn
from torchmetrics import MeanMetric

from fmlab.modules.logsteps import logs_this_step
from fmlab.modules.regularizers import capture_reference, kl_to_reference, l2sp_penalty
from fmlab.modules.rng import get_rng_state, set_rng_state

__all__ = ["CausalLMModule", "batch_tokens"]

IGNORE = -100
# attributes that are never parameters, buffers or submodules, set on every training step
_PLAIN_ATTRIBUTES = frozenset({"_current_fx_name", "tokens_seen", "_step_norm"})


def batch_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Real (non-padding) tokens in a batch: the 2-D attention mask's sum when there is one."""
    mask = batch.get("attention_mask")
    if mask is not None and mask.dim() == 2:
        return int(mask.sum())
    return int(batch["input_ids"].numel())  # packed rows: padding only in the last few slots


class CausalLMModule(L.LightningModule):
    """Next-token prediction on ``{"input_ids", optional "labels", "attention_mask"}`` batches.

    Validation/test loss is the token-weighted mean over the whole split (not a mean of batch
    means), and ``ppl = exp(loss)``; both are synchronised across ranks by torchmetrics.

    Args:
        model: A HF causal LM (already adapted by the method).
        optimizer: ``optimizer(model)`` factory from the optim group (None: evaluation only).
        scheduler: ``scheduler(optimizer, total_steps=)`` factory, or None for a constant LR.
        grad_clip: Max global gradient norm; 0 disables. Done here rather than by Lightning so it
            also works with fused AdamW.
        compile: Wrap the model's forward in ``torch.compile``.
        l2sp: Weight of the L2-SP penalty toward the starting weights (0: off).
        kl: Weight of KL distillation toward the frozen starting model (0: off).
        kl_on: Rows the KL term is computed on: ``all``, or ``replay`` rows of a mixture.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None,
        scheduler: Callable[..., Any] | None = None,
        grad_clip: Annotated[float, Field(ge=0)] = 1.0,
        compile: bool = False,
        l2sp: Annotated[float, Field(ge=0)] = 0.0,
        kl: Annotated[float, Field(ge=0)] = 0.0,
        kl_on: Literal["all", "replay"] = "all",
    ) -> None:
        super().__init__()
        self.l2sp, self.kl, self.kl_on = l2sp, kl, kl_on
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.grad_clip = grad_clip
        self.compile = compile
        self.tokens_seen = 0
        self._pending_rng: dict | None = None
        self._params: list[nn.Parameter] | None = None  # self.parameters(), listed once per fit
        self._step_norm: torch.Tensor | None = None  # this optimizer step's gradient norm
        self.metrics = nn.ModuleDict({s: MeanMetric() for s in ("val", "test")})

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning sets _current_fx_name around every hook call (~50 times per training step);
        # nn.Module.__setattr__'s checks for parameters/buffers/submodules cost ~1.5 µs each time
        if name in _PLAIN_ATTRIBUTES:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int):
        # fmlab's batches are flat dicts of tensors: one .to() each, as Lightning's default does
        # (non-blocking except to CPU/MPS), without its generic walk (~100 Python calls a batch)
        if type(batch) is dict and all(isinstance(v, torch.Tensor) for v in batch.values()):
            non_blocking = device.type not in ("cpu", "mps")
            return {k: v.to(device, non_blocking=non_blocking) for k, v in batch.items()}
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    # ------------------------------------------------------------------ forward / loss
    def _forward_fn(self) -> Callable[..., Any]:
        if not self.compile:
            return self.model
        if "_compiled" not in self.__dict__:  # kept out of nn.Module registration (state_dict)
            self.__dict__["_compiled"] = torch.compile(self.model)
        return self.__dict__["_compiled"]

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean next-token loss and the number of predicted tokens (see :meth:`forward_batch`)."""
        out, n_targets = self.forward_batch(batch)
        return out.loss, n_targets

    def forward_batch(self, batch: dict[str, torch.Tensor]) -> tuple[Any, torch.Tensor]:
        """Model output (see :meth:`model_output`) and the number of predicted tokens."""
        out = self.model_output(batch)
        labels = batch.get("labels", batch["input_ids"])
        return out, (labels[:, 1:] != IGNORE).sum()

    def model_output(self, batch: dict[str, torch.Tensor]) -> Any:
        """Model output (``loss``, ``logits``) of a batch. ids: (B, T).

        Optional batch keys: ``labels`` (-100 = ignored; default: the ids), ``attention_mask``
        (2-D padding mask or 4-D packed mask), ``position_ids`` (packed rows), ``prompt_mask``
        (passed to models that intervene on prompt tokens, e.g. ReFT).
        """
        ids = batch["input_ids"]
        labels = batch.get("labels", ids)
        kwargs = {k: batch[k] for k in ("attention_mask", "position_ids") if k in batch}
        if "prompt_mask" in batch and getattr(self.model, "accepts_prompt_mask", False):
            kwargs["prompt_mask"] = batch["prompt_mask"]
        return self._forward_fn()(input_ids=ids, labels=labels, **kwargs)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self.model_output(batch)  # (the target count of forward_batch is not needed here)
        loss = out.loss
        self.tokens_seen += batch_tokens(batch) * self.trainer.world_size
        bs = len(batch["input_ids"])
        if logs_this_step(self._trainer):  # ~1 ms per log call: only when the loggers write
            # a host copy: Lightning reads progress-bar values with .item() after every step,
            # which for a GPU tensor would wait for the device each step (fmlab.modules.logsteps)
            loss_host = loss.detach().cpu()
            self.log("train/loss", loss_host, on_step=True, prog_bar=True, batch_size=bs)
        if self.l2sp > 0:
            penalty = l2sp_penalty(self, self.model)
            self.log("train/l2sp", penalty, on_step=True, batch_size=bs)
            loss = loss + self.l2sp * penalty
        if self.kl > 0:
            rows = batch.get("replay") if self.kl_on == "replay" else None
            if self.kl_on == "replay" and rows is None:
                raise ValueError("module.kl_on=replay needs replay rows: use data=mixture")
            kl = kl_to_reference(self, self.model, batch, out.logits, rows)
            self.log("train/kl", kl, on_step=True, batch_size=bs)
            loss = loss + self.kl * kl
        if self.l2sp > 0 or self.kl > 0:
            self.log("train/total_loss", loss, on_step=True, batch_size=bs)
        return loss

    def setup(self, stage: str) -> None:
        # Before Lightning restores a checkpoint: the references are the starting weights.
        if stage == "fit" and (self.l2sp > 0 or self.kl > 0):
            capture_reference(self, self.model, anchor=self.l2sp > 0, copy_full=self.kl > 0)

    def _eval_step(self, batch: dict[str, torch.Tensor], split: str) -> None:
        loss, n = self.loss(batch)
        if n > 0:  # an all-masked batch has no targets (its loss is NaN): it carries no weight
            self.metrics[split].update(loss.detach().float(), weight=n)

    def _eval_epoch_end(self, split: str) -> None:
        loss = self.metrics[split].compute()
        self.metrics[split].reset()
        self.log(f"{split}/loss", loss, prog_bar=split == "val", sync_dist=True)
        self.log(f"{split}/ppl", torch.exp(loss), sync_dist=True)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    # ------------------------------------------------------------------ optimisation
    def optimized(self) -> nn.Module:
        """What the optimizer factory receives (its trainable parameters are optimised)."""
        return self.model

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.optimized())
        precision = str(getattr(self.trainer, "precision", ""))
        if (
            self.grad_clip > 0
            and precision.startswith("16")
            and any(g.get("fused") for g in optimizer.param_groups)
        ):
            raise ValueError(
                "module.grad_clip with a fused optimizer needs bf16-mixed or 32-true precision: "
                "with fp16 loss scaling the fused step unscales internally, after clipping"
            )
        if self.scheduler_factory is None:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        if not 0 < total < 2**40:
            raise ValueError("trainer: set max_steps (or max_epochs) so the LR schedule has an end")
        scheduler = self.scheduler_factory(optimizer, total_steps=total)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def on_fit_start(self) -> None:
        self._params, self._step_norm = None, None  # a module may be fitted again, changed

    def _with_grads(self) -> list[nn.Parameter]:
        if self._params is None:  # walking the module tree costs ~0.1 ms (LoRA: ~0.5) per step
            self._params = list(self.parameters())
        return [p for p in self._params if p.grad is not None]

    def grad_norm(self) -> torch.Tensor:
        """Global 2-norm of this optimizer step's gradients (``clip_grad_norm_``'s, bit for bit).

        Computed once per step and shared: the NaN guard (a callback, so it runs first) checks it,
        then :meth:`on_before_optimizer_step` clips with it. Callbacks that change gradients do so
        before (``on_after_backward``, as fmlab's do), not in ``on_before_optimizer_step`` after
        the guard.
        """
        if self._step_norm is None:
            grads = [p.grad for p in self._with_grads()]
            self._step_norm = torch.nn.utils.get_total_norm(grads)
        return self._step_norm

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        try:
            if self.grad_clip <= 0:
                return
            wrapped = self.trainer.strategy.model
            if hasattr(wrapped, "clip_grad_norm_"):  # FSDP shards: the wrapper computes the norm
                norm = wrapped.clip_grad_norm_(self.grad_clip)
            else:  # = clip_grad_norm_, with the norm the NaN guard may have computed already
                norm = self.grad_norm()
                torch.nn.utils.clip_grads_with_norm_(self._with_grads(), self.grad_clip, norm)
            if logs_this_step(self._trainer):
                self.log("train/grad_norm", norm, on_step=True)
        finally:
            self._step_norm = None  # the next step has new gradients

    # ------------------------------------------------------------------ exact resume
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["fmlab"] = {"rng": get_rng_state(), "tokens_seen": int(self.tokens_seen)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("fmlab", {})
        self.tokens_seen = int(state.get("tokens_seen", 0))
        # Restoring RNG now would be too early: Lightning draws from it while setting up the
        # loops. Apply it right before the first training batch runs.
        self._pending_rng = state.get("rng")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._pending_rng is not None:
            set_rng_state(self._pending_rng)
            self._pending_rng = None

    @staticmethod
    def perplexity(loss: float) -> float:
        """``exp(loss)``, or ``inf`` when it overflows."""
        try:
            return math.exp(loss)
        except OverflowError:
            return math.inf
