"""Multi-task training: one backbone (full, LoRA or ReFT), the LM head and one head per task.

Each training batch belongs to one task (see :mod:`fmlab.data.multitask`); its loss is
- generative: next-token cross-entropy on the response tokens (the LM head);
- classification: cross-entropy of a linear head on the pooled last hidden state;
- regression: mean squared error of a scalar head on the pooled last hidden state;
and is weighted statically (``loss_weight`` of the task) or by learned uncertainty (Kendall,
Gal and Cipolla 2018) with ``s_t = log σ_t²`` per task:
``exp(-s_t) L_t + s_t / 2`` (cross-entropy tasks), ``exp(-s_t) L_t / 2 + s_t / 2`` (regression).

Validation/test metrics are per task (``val/<task>/<metric>``) from that task's own loader;
``val/loss`` is the mean of the tasks' losses (checkpoint selection) and ``val/score`` the mean
of their primary metrics mapped to "higher is better" (accuracy, F1, Pearson, exact match as
they are; ppl as 1/ppl; mse as 1/(1+mse); loss as exp(-loss)) — the aggregate sweeps optimise.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torchmetrics import MeanMetric, MeanSquaredError, PearsonCorrCoef
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from fmlab.models.heads import TaskHead, final_hidden
from fmlab.modules.causal_lm import CausalLMModule, batch_tokens
from fmlab.modules.logsteps import logs_this_step
from fmlab.modules.regularizers import l2sp_penalty
from fmlab.modules.sft import generation_accuracy
from fmlab.tasks.spec import TaskSpec, parse_tasks

__all__ = ["HEADS_DIR", "MultiTaskModule", "higher_is_better"]

HEADS_DIR = "heads"


def higher_is_better(metric: str, value: float) -> float:
    """A task's primary metric on a "higher is better" scale for the aggregate ``score``."""
    if metric == "ppl":
        return 1.0 / value if value > 0 else 0.0
    if metric == "mse":
        return 1.0 / (1.0 + value)
    if metric == "loss":
        return float(torch.exp(torch.tensor(-value)))
    return value


def _task_metrics(spec: TaskSpec) -> nn.ModuleDict:
    metrics: dict[str, nn.Module] = {"loss": MeanMetric()}
    if spec.kind == "classification":
        k = spec.num_outputs
        metrics["accuracy"] = MulticlassAccuracy(num_classes=k, average="micro")
        metrics["f1"] = MulticlassF1Score(num_classes=k, average="macro")
    elif spec.kind == "regression":
        metrics["mse"] = MeanSquaredError()
        metrics["pearson"] = PearsonCorrCoef()
    return nn.ModuleDict(metrics)


class MultiTaskModule(CausalLMModule):
    """A shared backbone trained on several tasks at once (see the module docstring).

    Args:
        model: The HF causal LM, already adapted by the method (full, LoRA family, ReFT).
        optimizer: ``optimizer(module)`` factory; it receives backbone, heads and task weights.
        scheduler: LR schedule factory, or None.
        tasks: Task name → spec (``cfg.task``): the heads are built from it.
        weighting: ``static`` (each task's ``loss_weight``) or ``uncertainty`` (learned).
        grad_clip: Max global gradient norm; 0 disables.
        compile: Wrap the backbone's forward in ``torch.compile``.
        l2sp: Weight of the L2-SP pull toward the starting backbone weights (0: off).
        generation_batch_size: Prompts per generate call for exact match.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None,
        scheduler: Callable[..., Any] | None = None,
        tasks: dict[str, TaskSpec] | None = None,
        weighting: Literal["static", "uncertainty"] = "static",
        grad_clip: Annotated[float, Field(ge=0)] = 1.0,
        compile: bool = False,
        l2sp: Annotated[float, Field(ge=0)] = 0.0,
        generation_batch_size: Annotated[int, Field(gt=0)] = 64,
    ) -> None:
        super().__init__(
            model, optimizer, scheduler, grad_clip=grad_clip, compile=compile, l2sp=l2sp
        )
        self.specs = parse_tasks(tasks, "module.tasks")
        self.names = list(self.specs)
        hidden = int(model.config.hidden_size)
        self.heads = nn.ModuleDict(
            {
                n: TaskHead(hidden, s.num_outputs, s.pooling, s.head_dropout)
                for n, s in self.specs.items()
                if s.kind != "generative"
            }
        )
        self.weighting = weighting
        # s_t = log σ_t² per task, 0 at start (weight 1); unused under static weighting
        self.log_vars = nn.Parameter(
            torch.zeros(len(self.names)), requires_grad=weighting == "uncertainty"
        )
        self.task_metrics = nn.ModuleDict(
            {
                f"{split}_{n}": _task_metrics(s)
                for split in ("val", "test")
                for n, s in self.specs.items()
            }
        )
        self.generation_batch_size = generation_batch_size

    # ------------------------------------------------------------------ what is optimised
    def optimized(self) -> nn.Module:
        return _Trainable(self.model, self.heads, self.log_vars)

    # ------------------------------------------------------------------ losses
    def task_outputs(self, name: str, batch: dict[str, Any]) -> tuple[torch.Tensor, Any, int]:
        """(raw loss, predictions, weight of the loss in split means) of one task's batch.

        Predictions: head logits (B, K) or values (B,); None for generative tasks.
        """
        spec = self.specs[name]
        if spec.kind == "generative":
            out, n = self.forward_batch(batch)
            return out.loss, None, int(n)
        hidden = final_hidden(self._forward_fn(), batch)  # (B, T, C)
        pred = self.heads[name](hidden, batch["attention_mask"])
        targets = batch["targets"]
        if spec.kind == "classification":
            loss = F.cross_entropy(pred, targets)
        else:
            loss = F.mse_loss(pred, targets.to(pred.dtype))
        return loss, pred, len(targets)

    def weigh(self, index: int, loss: torch.Tensor) -> torch.Tensor:
        """The task's loss as it enters the objective (see the module docstring)."""
        spec = self.specs[self.names[index]]
        if self.weighting == "static":
            return spec.loss_weight * loss
        s = self.log_vars[index]
        scale = 0.5 if spec.kind == "regression" else 1.0
        return scale * torch.exp(-s) * loss + 0.5 * s

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        index = int(batch["task"])
        name = self.names[index]
        raw, _, _ = self.task_outputs(name, batch)
        loss = self.weigh(index, raw)
        if self.trainer.world_size > 1:
            # DDP expects a gradient for every parameter: the other tasks' heads get exact zeros
            loss = loss + 0.0 * sum(
                p.sum() for n, h in self.heads.items() if n != name for p in h.parameters()
            )
        self.tokens_seen += batch_tokens(batch) * self.trainer.world_size
        if logs_this_step(self._trainer):
            bs = len(batch["input_ids"])
            self.log("train/loss", loss.detach().cpu(), on_step=True, prog_bar=True, batch_size=bs)
            # Straight to the loggers: a self.log key not logged at a step would be re-written
            # there with its stale value (Lightning keeps step results), and each step trains
            # one task only.
            task_metrics = {f"train/{name}/loss": float(raw)}
            if self.weighting == "uncertainty":
                task_metrics[f"train/{name}/weight"] = float(torch.exp(-self.log_vars[index]))
            for logger in self.loggers:
                logger.log_metrics(task_metrics, step=self.global_step)
        if self.l2sp > 0:
            penalty = l2sp_penalty(self, self.model)
            self.log("train/l2sp", penalty, on_step=True)
            loss = loss + self.l2sp * penalty
        return loss

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, batch: dict[str, Any], split: str) -> None:
        name = self.names[int(batch["task"])]
        loss, pred, weight = self.task_outputs(name, batch)
        metrics = self.task_metrics[f"{split}_{name}"]
        if weight > 0:  # an all-masked generative batch has no targets (NaN loss): no weight
            metrics["loss"].update(loss.detach().float(), weight=weight)
        if pred is None:
            return
        pred, targets = pred.detach().float(), batch["targets"]
        for key in ("accuracy", "f1", "mse", "pearson"):
            if key in metrics:
                metrics[key].update(pred, targets if key in ("accuracy", "f1") else targets.float())

    def validation_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "test")

    def _exact_match(self, name: str, split: str) -> float | None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "exact_match_set"):
            return None
        examples = dm.exact_match_set(name, "validation" if split == "val" else "test")
        if not examples:
            return None
        spec = self.specs[name]
        return generation_accuracy(
            self, examples, dm.tokenizer, spec.max_new_tokens, self.generation_batch_size
        )

    def _eval_epoch_end(self, split: str) -> None:
        losses, scores = [], []
        for name, spec in self.specs.items():
            metrics = self.task_metrics[f"{split}_{name}"]
            values: dict[str, float] = {}
            for key, metric in metrics.items():
                values[key] = float(metric.compute())
                metric.reset()
            if spec.kind == "generative":
                values["ppl"] = self.perplexity(values["loss"])
                if (
                    spec.exact_match_examples > 0
                    and (em := self._exact_match(name, split)) is not None
                ):
                    values["exact_match"] = em
            for key, value in values.items():
                self.log(f"{split}/{name}/{key}", value, sync_dist=False)
            losses.append(values["loss"])
            primary = spec.primary
            if primary in values:
                scores.append(higher_is_better(primary, values[primary]))
        self.log(
            f"{split}/loss", sum(losses) / len(losses), prog_bar=split == "val", sync_dist=False
        )
        if scores:
            self.log(
                f"{split}/score",
                sum(scores) / len(scores),
                prog_bar=split == "val",
                sync_dist=False,
            )

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._eval_epoch_end("val")
        else:
            for m in self.task_metrics.values():
                for metric in m.values():
                    metric.reset()

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    # ------------------------------------------------------------------ export
    def save_heads(self, out_dir: str | Path) -> dict[str, str]:
        """Write ``<out_dir>/heads/`` (``heads.safetensors`` + ``tasks.json``) beside the
        backbone export; :func:`fmlab.predict.load_multitask` reads both back."""
        from safetensors.torch import save_file

        target = Path(out_dir) / HEADS_DIR
        target.mkdir(parents=True, exist_ok=True)
        tensors = {
            f"{n}.{k}": v.detach().cpu().contiguous()
            for n, h in self.heads.items()
            for k, v in h.state_dict().items()
        }
        tensors["log_vars"] = self.log_vars.detach().cpu().contiguous()
        save_file(tensors, str(target / "heads.safetensors"))
        meta = {
            "tasks": {n: s.model_dump() for n, s in self.specs.items()},
            "order": self.names,
            "hidden_size": int(self.model.config.hidden_size),
            "weighting": self.weighting,
        }
        (target / "tasks.json").write_text(json.dumps(meta, indent=2))
        return {"heads": str(target)}


class _Trainable(nn.Module):
    """Backbone, heads and task weights as one module for the optimizer factory."""

    def __init__(self, model: nn.Module, heads: nn.ModuleDict, log_vars: nn.Parameter) -> None:
        super().__init__()
        self.model, self.heads = model, heads
        self.log_vars = log_vars
