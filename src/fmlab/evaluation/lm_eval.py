"""lm-evaluation-harness on an fmlab model: a full model, a LoRA-family adapter (PeftModel), any HF
causal LM, scored in-process (no re-loading by name, no network).

Local tasks: point ``include_path`` at a directory of task YAMLs, e.g. a multiple-choice task on a
local jsonl file (``dataset_path: json``, ``dataset_kwargs: {data_files: {test: <file>}}``).
Metrics come back as ``lm_eval/<task>/<metric>`` (``acc``, ``acc_norm``, ...).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["check_lm_eval", "lm_eval_tasks"]


def check_lm_eval(node: Any, model: torch.nn.Module) -> None:
    """Refuse, before any evaluation runs, what ``lm_eval=...`` cannot score.

    ReFT: lm-evaluation-harness scores a context and its continuation in one forward pass,
    and its HF wrapper cannot tell the interventions which positions are the prompt: they
    would edit the continuation too (or, without a prompt mask, every token), so the numbers
    would not be the model's. Evaluate ReFT with ``sets=...`` / ``data=sft`` (exact match on
    generations, loss on responses) instead.

    Args:
        node: The ``lm_eval`` config node (None: nothing to check).
        model: The loaded model.

    Raises:
        ConfigError: For a ReFT model, or when lm-eval is not installed.
    """
    if not node:
        return
    from fmlab.config import ConfigError
    from fmlab.utils.optional import require

    if getattr(model, "accepts_prompt_mask", False) or type(model).__name__ == "ReftModel":
        raise ConfigError(
            "lm_eval=...: ReFT models are not supported by lm-evaluation-harness (its HF wrapper "
            "cannot restrict the interventions to the prompt positions, so its numbers would "
            "not be this model's). Evaluate ReFT with fmlab-eval's own sets instead, e.g. "
            "data=sft data.task=<task> or sets={name: {...}}, and drop lm_eval=..."
        )
    require("lm_eval", "eval", "fmlab-eval lm_eval=...")


def lm_eval_tasks(
    model: torch.nn.Module,
    tokenizer: Any,
    tasks: Sequence[str],
    *,
    include_path: str | None = None,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
    log_samples: bool = False,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Run lm-evaluation-harness ``tasks`` on ``model``.

    Args:
        model: A loaded model (e.g. from :func:`fmlab.methods.adapters.load_trained`).
        tokenizer: Its tokenizer.
        tasks: Task names (built-in, or defined in ``include_path``).
        include_path: Directory of extra task YAMLs.
        limit: At most this many documents per task (a fraction if < 1).
        num_fewshot: Few-shot examples per prompt (task default if ``None``).
        batch_size: Requests per forward pass.
        log_samples: Keep per-document outputs in the raw results (``samples``).

    Returns:
        ``({"lm_eval/<task>/<metric>": value}, raw simple_evaluate results)``.
    """
    from fmlab.utils.optional import require

    require("lm_eval", "eval", "lm_eval (lm-evaluation-harness)")
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    if not hasattr(model, "config") or not hasattr(model, "device"):
        raise TypeError(
            f"lm_eval: {type(model).__name__} is not an HF model (needs .config and .device); "
            "ReFT interventions are not supported by lm-evaluation-harness's HF wrapper"
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    lm = HFLM(pretrained=model.eval(), tokenizer=tokenizer, batch_size=batch_size)
    raw = simple_evaluate(
        model=lm,
        tasks=list(tasks),
        task_manager=TaskManager(include_path=include_path),
        limit=limit,
        num_fewshot=num_fewshot,
        log_samples=log_samples,
        bootstrap_iters=0,
    )
    metrics = {}
    for task, values in (raw or {}).get("results", {}).items():
        for key, value in values.items():
            name = key.split(",")[0]  # "acc,none" -> "acc"
            name = "n" if name == "sample_len" else name
            if "stderr" in name or not isinstance(value, int | float) or isinstance(value, bool):
                continue
            if not math.isnan(float(value)):
                metrics[f"lm_eval/{task}/{name}"] = float(value)
    return metrics, raw
