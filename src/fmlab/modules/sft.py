"""Supervised fine-tuning: the causal-LM objective on response tokens, plus exact match."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from torchmetrics import SumMetric

from fmlab.evaluation.generation import exact_match, generate_text
from fmlab.modules.causal_lm import CausalLMModule

__all__ = ["SFTModule"]


class SFTModule(CausalLMModule):
    """Loss/perplexity on response tokens (labels are -100 on prompts) and, at each validation
    and at test, generation-based exact-match accuracy on held-out prompts
    (``val/exact_match``, ``test/exact_match``).

    Args:
        exact_match: Score held-out prompts by greedy generation (the DataModule decides how many).
        generation_batch_size: Prompts per generate call.
        model, optimizer, scheduler, grad_clip, compile, l2sp, kl, kl_on: See
            :class:`CausalLMModule`.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer] | None,
        scheduler: Callable[..., Any] | None = None,
        grad_clip: Annotated[float, Field(ge=0)] = 1.0,
        compile: bool = False,
        exact_match: bool = True,
        generation_batch_size: Annotated[int, Field(gt=0)] = 64,
        l2sp: Annotated[float, Field(ge=0)] = 0.0,
        kl: Annotated[float, Field(ge=0)] = 0.0,
        kl_on: Literal["all", "replay"] = "all",
    ) -> None:
        super().__init__(
            model,
            optimizer,
            scheduler,
            grad_clip=grad_clip,
            compile=compile,
            l2sp=l2sp,
            kl=kl,
            kl_on=kl_on,
        )
        self.exact_match = exact_match
        self.generation_batch_size = generation_batch_size
        self.em_correct = SumMetric()
        self.em_total = SumMetric()

    def _score_generation(self, split: str, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if not self.exact_match or dm is None or not hasattr(dm, "exact_match_set"):
            return
        examples = dm.exact_match_set(split)
        if not examples:
            return
        rank, world = self.trainer.global_rank, self.trainer.world_size
        mine = examples[rank::world]
        preds = generate_text(
            self.model,
            dm.tokenizer,
            [p for p, _ in mine],
            max_new_tokens=dm.max_new_tokens,
            batch_size=self.generation_batch_size,
        )
        hits = exact_match(preds, [r for _, r in mine])
        self.em_correct.update(torch.tensor(float(sum(hits)), device=self.device))
        self.em_total.update(torch.tensor(float(len(hits)), device=self.device))
        accuracy = self.em_correct.compute() / self.em_total.compute().clamp(min=1)
        self.em_correct.reset()
        self.em_total.reset()
        self.log(f"{stage}/exact_match", accuracy, prog_bar=stage == "val", sync_dist=False)

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if not self.trainer.sanity_checking:
            self._score_generation("validation", "val")

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        self._score_generation("test", "test")
