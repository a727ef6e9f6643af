"""Preference fine-tuning (DPO, IPO, SimPO) as a LightningModule, for every adaptation method.

One forward of the policy computes both responses of every pair (the batch holds 2B sequences,
see :mod:`fmlab.data.preference_encode`); the objectives are in
:mod:`fmlab.modules.preference_losses`.

The reference model (DPO, IPO; metrics of SimPO) is the model as training started, obtained
without a second copy where the method allows (the same mechanism as the forgetting regularizers,
:mod:`fmlab.modules.regularizers`):

- LoRA family: the same PEFT model inside ``disable_adapter()``;
- ReFT: the same model inside ``disabled()`` (interventions removed);
- full fine-tuning: a frozen copy taken before any update (``reference=live``), or none at all
  with ``reference=precomputed``: reference log-probs of every pair of every split are computed
  once when fit starts, before the first update, and kept in the checkpoints (a resumed run reads
  them back instead of recomputing them from updated weights).

``reference_model=<dir>`` names another reference (an HF directory or fmlab export); it is needed
to evaluate a fully fine-tuned export with ``fmlab-eval model_path=...``, whose starting weights
are gone.

Metrics (``train/`` on logging steps, ``val/`` and ``test/`` over the whole split):
``loss``, ``rewards/{chosen,rejected,margin,accuracy}``, ``logps/{chosen,rejected}`` (summed
response log-probs), ``kl`` = mean over response tokens of the exact ``KL(π ‖ π_ref)`` over the
vocabulary (live reference only; in training only where the reference forward runs anyway, i.e.
DPO/IPO), ``nll`` (the chosen responses' per-token negative log-likelihood), and
``exact_match`` by greedy generation when the data has checkable answers. ``loss`` is the
objective (plus ``sft_weight`` × ``nll`` when set).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from torch import nn
from torchmetrics import MeanMetric

from fmlab.config import ConfigError
from fmlab.modules.causal_lm import CausalLMModule
from fmlab.modules.logsteps import logs_this_step
from fmlab.modules.preference_losses import preference_loss, sequence_logps, token_kl
from fmlab.modules.regularizers import capture_reference, model_inputs, reference_mode
from fmlab.modules.sft import log_exact_match

__all__ = ["DEFAULT_BETA", "PreferenceModule"]

# The usual β of each objective (DPO/IPO papers and TRL: 0.1; SimPO paper: 2.0-2.5).
DEFAULT_BETA = {"dpo": 0.1, "ipo": 0.1, "simpo": 2.0}
_METRICS = (
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margin",
    "rewards/accuracy",
    "logps/chosen",
    "logps/rejected",
    "kl",
    "nll",
)


def _is_adapter(model: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel) or hasattr(model, "disabled")


class PreferenceModule(CausalLMModule):
    """DPO / IPO / SimPO on pairs, with reward metrics and exact match.

    Args:
        model: The HF causal LM, adapted by the method (full, LoRA family, ReFT).
        optimizer: ``optimizer(model)`` factory (None: evaluation only).
        scheduler: LR schedule factory, or None.
        loss: ``dpo``, ``ipo`` or ``simpo``.
        beta: β of the objective (None: 0.1 for DPO/IPO, 2.0 for SimPO).
        label_smoothing: ε, the assumed share of flipped labels (conservative DPO; SimPO).
        gamma: SimPO's target reward margin γ (ignored by DPO/IPO).
        reference: ``live`` (a reference forward per batch), ``precomputed`` (once, at the start
            of fit) or ``none`` (SimPO only: no reference metrics, no copy).
        reference_model: A model directory used as the reference instead of the starting model.
        sft_weight: Adds this times the chosen responses' per-token NLL (RPO, Pang et al. 2024;
            TRL's ``rpo_alpha``): keeps the chosen likelihood from falling with the rejected one.
        exact_match: Score held-out prompts by greedy generation (if the data has answers).
        generation_batch_size: Prompts per generate call.
        grad_clip: Max global gradient norm (0: off).
        compile: Wrap the model's forward in ``torch.compile``.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None,
        scheduler: Callable[..., Any] | None = None,
        loss: Literal["dpo", "ipo", "simpo"] = "dpo",
        beta: Annotated[float, Field(gt=0)] | None = None,
        label_smoothing: Annotated[float, Field(ge=0, lt=0.5)] = 0.0,
        gamma: Annotated[float, Field(ge=0)] = 1.0,
        reference: Literal["live", "precomputed", "none"] = "live",
        reference_model: str | None = None,
        sft_weight: Annotated[float, Field(ge=0)] = 0.0,
        exact_match: bool = True,
        generation_batch_size: Annotated[int, Field(gt=0)] = 64,
        grad_clip: Annotated[float, Field(ge=0)] = 1.0,
        compile: bool = False,
    ) -> None:
        super().__init__(model, optimizer, scheduler, grad_clip=grad_clip, compile=compile)
        if reference == "none" and loss != "simpo":
            raise ConfigError(
                f"module.reference=none: module.loss={loss} compares with a reference model; "
                "use reference=live or precomputed (or loss=simpo, which needs none)"
            )
        if label_smoothing and loss == "ipo":
            raise ConfigError("module.label_smoothing applies to dpo and simpo, not ipo")
        self.loss_name, self.beta = loss, DEFAULT_BETA[loss] if beta is None else beta
        self.label_smoothing, self.gamma = label_smoothing, gamma
        self.reference, self.reference_model = reference, reference_model
        self.sft_weight = sft_weight
        self.exact_match, self.generation_batch_size = exact_match, generation_batch_size
        self.pref_metrics = nn.ModuleDict(
            {
                split: nn.ModuleDict({m.replace("/", "_"): MeanMetric() for m in _METRICS})
                for split in ("val", "test")
            }
        )
        # reference log-probs per split, (N, 2) [chosen, rejected] (reference=precomputed)
        self.ref_logps: dict[str, torch.Tensor] = {}
        self._restored = (
            False  # weights came from a checkpoint (the copy taken before is the start)
        )

    # ------------------------------------------------------------------ reference
    @property
    def needs_reference(self) -> bool:
        return self.loss_name != "simpo"

    def setup(self, stage: str) -> None:
        # Before Lightning restores a checkpoint: the model is the starting one.
        if self.reference_model and "_reference" not in self.__dict__:
            from fmlab.methods.adapters import load_trained

            ref, _ = load_trained(self.reference_model)
            self.__dict__["_reference"] = ref.eval().requires_grad_(False)
        if self.reference == "live":
            capture_reference(self, self.model, copy_full=True)  # no copy for adapters

    def _reference_known(self) -> bool:
        """Whether a reference exists: an adapter's base, a model given, or a copy of weights that
        were still the starting ones (training, or before a checkpoint was loaded)."""
        if self.reference == "none":
            return False
        if _is_adapter(self.model) or self.reference_model:
            return True
        return self.optimizer_factory is not None or self._restored or bool(self.ref_logps)

    def _check_reference(self) -> None:
        if self.needs_reference and not self._reference_known():
            raise ConfigError(
                f"module=preference (loss={self.loss_name}): this fully fine-tuned model's "
                "reference (its starting weights) is unknown; set module.reference_model=<the "
                "model it was trained from>, or evaluate the run with ckpt_path=<run dir>"
            )

    @contextmanager
    def _reference_model(self) -> Iterator[nn.Module]:
        """The reference in eval mode: a copy or given model, an adapter's base, or (only while
        precomputing, before the first update of a fully trained model) the model itself."""
        if "_reference" in self.__dict__ or _is_adapter(self.model):
            with reference_mode(self, self.model) as ref:
                yield ref
            return
        if self._restored:  # the weights were updated: they are not the starting ones
            raise ConfigError(
                "module.reference=precomputed: the checkpoint holds no reference log-probs and "
                "the starting weights are gone; resume with module.reference=live"
            )
        was_training = self.model.training
        self.model.eval()
        try:
            yield self.model
        finally:
            self.model.train(was_training)

    @torch.no_grad()
    def _reference_pass(
        self, batch: dict[str, torch.Tensor], n: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference log-probs (n,) and logits of a batch (the policy's weights untouched)."""
        with self._reference_model() as ref:
            logits = ref(**model_inputs(batch)).logits
        return sequence_logps(logits, batch["labels"], batch["seq_index"], n)[0], logits

    @torch.no_grad()
    def precompute_reference(self, splits: tuple[str, ...] = ("train", "validation", "test")):
        """Reference log-probs of every pair of ``splits`` (the DataModule's ``pair_loader``)."""
        dm = self.trainer.datamodule
        for split in splits:
            if split in self.ref_logps:
                continue
            rows = []
            for batch in dm.pair_loader(split):
                batch = self.transfer_batch_to_device(batch, self.device, 0)
                b = len(batch["pair_index"])
                logps, _ = self._reference_pass(batch, 2 * b)
                rows.append(torch.stack([logps[:b], logps[b:]], dim=1).cpu())
            self.ref_logps[split] = torch.cat(rows) if rows else torch.zeros(0, 2)

    def on_fit_start(self) -> None:
        if self.reference == "precomputed":  # a resumed run has them from its checkpoint
            self.precompute_reference()

    def _start_eval(self) -> None:
        self._check_reference()
        if self.reference == "precomputed" and self._reference_known():
            self.precompute_reference(("validation", "test"))

    def on_validation_start(self) -> None:
        self._start_eval()

    def on_test_start(self) -> None:
        self._start_eval()

    # ------------------------------------------------------------------ one batch
    def _policy_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        kwargs = model_inputs(batch)
        if getattr(self.model, "accepts_prompt_mask", False):  # ReFT edits prompt tokens only
            kwargs["prompt_mask"] = batch["prompt_mask"]
        return self._forward_fn()(**kwargs).logits

    def pair_step(
        self, batch: dict[str, torch.Tensor], split: str, *, with_kl: bool
    ) -> dict[str, torch.Tensor]:
        """Loss and per-pair metrics of a batch; ``split`` selects precomputed references."""
        b = len(batch["pair_index"])
        logits = self._policy_logits(batch)
        logps, tokens = sequence_logps(logits, batch["labels"], batch["seq_index"], 2 * b)
        ref = ref_logits = None
        use_ref = self.reference != "none" and (self.needs_reference or with_kl)
        if use_ref and self.reference == "precomputed":
            ref = self.ref_logps[split][batch["pair_index"].cpu()].to(logps.device)
            ref = torch.cat([ref[:, 0], ref[:, 1]])
        elif use_ref and self._reference_known():
            ref, ref_logits = self._reference_pass(batch, 2 * b)
        losses, r_c, r_r = preference_loss(
            self.loss_name,
            logps[:b],
            logps[b:],
            ref_chosen=None if ref is None else ref[:b],
            ref_rejected=None if ref is None else ref[b:],
            chosen_tokens=tokens[:b],
            rejected_tokens=tokens[b:],
            beta=self.beta,
            label_smoothing=self.label_smoothing,
            gamma=self.gamma,
        )
        loss = losses.mean()
        nll = -logps[:b].sum() / tokens[:b].sum().clamp(min=1)  # chosen, per token
        out = {
            "loss": loss + self.sft_weight * nll if self.sft_weight else loss,
            "nll": nll.detach(),
            "nll_tokens": tokens[:b].sum(),
            "rewards/chosen": r_c,
            "rewards/rejected": r_r,
            "rewards/margin": r_c - r_r,
            "rewards/accuracy": (r_c > r_r).float(),
            "logps/chosen": logps[:b].detach(),
            "logps/rejected": logps[b:].detach(),
        }
        if with_kl and ref_logits is not None:
            total, count = token_kl(logits.detach(), ref_logits, batch["labels"])
            out["kl"], out["kl_tokens"] = total / count.clamp(min=1), count
        return out

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logging = logs_this_step(self._trainer)
        out = self.pair_step(batch, "train", with_kl=logging and self.needs_reference)
        self.tokens_seen += int((batch["seq_index"] >= 0).sum()) * self.trainer.world_size
        if logging:  # host copies: no device sync per step for the progress bar
            b = len(batch["pair_index"])
            for name, value in out.items():
                if not name.endswith("_tokens"):
                    host = value.detach().float().mean().cpu()
                    self.log(
                        f"train/{name}", host, on_step=True, prog_bar=name == "loss", batch_size=b
                    )
        return out["loss"]

    def _eval_step(self, batch: dict[str, torch.Tensor], split: str) -> None:
        stage_split = {"val": "validation", "test": "test"}[split]
        out = self.pair_step(batch, stage_split, with_kl=True)
        metrics = self.pref_metrics[split]
        b = len(batch["pair_index"])
        for name, value in out.items():
            if name.endswith("_tokens"):
                continue
            if name in ("kl", "nll"):  # per token: weighted by the batch's tokens
                metrics[name].update(value, weight=out[f"{name}_tokens"])
            elif name == "loss":
                metrics["loss"].update(value.detach(), weight=b)
            else:
                metrics[name.replace("/", "_")].update(value)

    def _eval_epoch_end(self, split: str) -> None:
        for name in _METRICS:
            metric = self.pref_metrics[split][name.replace("/", "_")]
            if metric.update_called:
                self.log(
                    f"{split}/{name}", metric.compute(), prog_bar=name == "loss", sync_dist=True
                )
            metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")
        if self.exact_match and not self.trainer.sanity_checking:
            log_exact_match(self, "validation", "val", self.generation_batch_size)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")
        if self.exact_match:
            log_exact_match(self, "test", "test", self.generation_batch_size)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.ref_logps:
            checkpoint["fmlab"]["reference_logps"] = dict(self.ref_logps)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self._restored = True
        stored = checkpoint.get("fmlab", {}).get("reference_logps")
        if stored and not self.ref_logps:
            self.ref_logps = {k: v.cpu() for k, v in stored.items()}
