"""Supervised fine-tuning: the causal-LM objective on response tokens, plus exact match."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from torchmetrics import SumMetric

from fmlab.evaluation.generation import exact_match, generate_text
from fmlab.modules.causal_lm import CausalLMModule

__all__ = ["SFTModule", "generation_accuracy", "log_exact_match"]


def generation_accuracy(
    module: CausalLMModule,
    examples: list[tuple[list[int], str]],
    tokenizer: Any,
    max_new_tokens: int,
    batch_size: int,
) -> float:
    """Exact-match accuracy of greedy generation on ``(prompt ids, reference)`` examples.

    Each rank generates for every world-th example; hits and counts are summed over ranks
    (torchmetrics syncs on ``compute``), so every example counts once.
    """
    rank, world = module.trainer.global_rank, module.trainer.world_size
    mine = examples[rank::world]
    preds = generate_text(
        module.model,
        tokenizer,
        [p for p, _ in mine],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )
    hits, total = SumMetric().to(module.device), SumMetric().to(module.device)
    device = module.device
    hits.update(torch.tensor(float(sum(exact_match(preds, [r for _, r in mine]))), device=device))
    total.update(torch.tensor(float(len(mine)), device=device))
    return float(hits.compute() / total.compute().clamp(min=1))


def log_exact_match(module: CausalLMModule, split: str, stage: str, batch_size: int) -> None:
    """Log ``<stage>/exact_match`` on the DataModule's ``exact_match_set(split)``, if it has one
    (SFT and preference DataModules)."""
    dm = getattr(module.trainer, "datamodule", None)
    if dm is None or not hasattr(dm, "exact_match_set"):
        return
    examples = dm.exact_match_set(split)
    if not examples:
        return
    accuracy = generation_accuracy(module, examples, dm.tokenizer, dm.max_new_tokens, batch_size)
    module.log(f"{stage}/exact_match", accuracy, prog_bar=stage == "val", sync_dist=False)


class SFTModule(CausalLMModule):
    """Loss/perplexity on response tokens (labels are -100 on prompts) and, at each validation
    and at test, generation-based exact-match accuracy on held-out prompts
    (``val/exact_match``, ``test/exact_match``). The other arguments are those of
    :class:`CausalLMModule`.

    Args:
        exact_match: Score held-out prompts by greedy generation (the DataModule decides how many).
        generation_batch_size: Prompts per generate call.
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

    def _score_generation(self, split: str, stage: str) -> None:
        if self.exact_match:
            log_exact_match(self, split, stage, self.generation_batch_size)

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if not self.trainer.sanity_checking:
            self._score_generation("validation", "val")

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        self._score_generation("test", "test")
