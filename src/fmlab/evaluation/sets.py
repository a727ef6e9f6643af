"""fmlab-eval extras: several evaluation sets at once, and lm-evaluation-harness tasks.

``sets``: name -> data overrides, merged onto the data config the evaluation uses (the run's own
with ``ckpt_path``), e.g. one set per domain or task::

    fmlab-eval ckpt_path=<run> 'sets={news: {sources: [news.jsonl]}, code: {sources: [c.jsonl]}}'
    fmlab-eval model_path=<sft run> data=sft 'sets={logic: {task: logic}, sum: {task: arithmetic}}'

Each set reports ``val/<name>/<metric>`` (and ``test/<name>/<metric>`` with ``run_test``).

``lm_eval``: ``{tasks: [...], include_path: <dir of task YAMLs>, limit, num_fewshot, batch_size}``
runs lm-evaluation-harness on the evaluated weights (``lm_eval/<task>/<metric>``).
"""

from __future__ import annotations

import copy
from typing import Annotated, Any

import lightning as L
from omegaconf import DictConfig, OmegaConf, open_dict
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fmlab.config import ConfigError, validate_config
from fmlab.data.tokenizer import fixed_tokenizer
from fmlab.workflow import build_data

__all__ = ["LmEvalSchema", "evaluate_sets", "run_lm_eval"]


class LmEvalSchema(BaseModel):
    """Keys of fmlab-eval's ``lm_eval`` node."""

    model_config = ConfigDict(extra="forbid")
    tasks: list[str] = Field(min_length=1)
    include_path: str | None = None
    limit: Annotated[float, Field(gt=0)] | None = None
    num_fewshot: Annotated[int, Field(ge=0)] | None = None
    batch_size: Annotated[int, Field(gt=0)] = 8


def _renamed(metrics: dict[str, Any], name: str) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        split, _, rest = key.partition("/")
        out[f"{split}/{name}/{rest}"] = float(value)
    return out


def evaluate_sets(
    cfg: DictConfig,
    base: DictConfig,
    tokenizer: Any,
    module: L.LightningModule,
    trainer: L.Trainer,
    ckpt: str | None,
) -> dict[str, float]:
    """Validation (and test, with ``cfg.run_test``) metrics of ``module`` on every ``cfg.sets``.

    Args:
        cfg: The eval config (``sets``, ``run_test``).
        base: The config whose ``data`` node each set's overrides are merged onto.
        tokenizer: The model's tokenizer.
        module: The LightningModule under evaluation.
        trainer: The trainer to validate/test with.
        ckpt: Checkpoint to load (``None``: the module's weights as they are).
    """
    results: dict[str, float] = {}
    for name, overrides in (cfg.get("sets") or {}).items():
        if "/" in str(name):
            raise ConfigError(f"sets.{name}: a set name cannot contain '/'")
        sub = copy.deepcopy(base)
        with open_dict(sub):
            sub.data = OmegaConf.merge(sub.data, overrides)
        try:
            validate_config(sub, groups=("data",))
        except ConfigError as err:
            raise ConfigError(f"sets.{name}: {err}") from err
        datamodule, _ = build_data(sub, tokenizer_factory=fixed_tokenizer(tokenizer))
        metrics = trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False)[0]
        if cfg.run_test:
            metrics = {
                **metrics,
                **trainer.test(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False)[0],
            }
        results.update(_renamed(metrics, str(name)))
    return results


def run_lm_eval(node: Any, model: Any, tokenizer: Any) -> dict[str, float]:
    """lm-evaluation-harness metrics of ``model`` for the ``lm_eval`` config ``node``."""
    from fmlab.evaluation.lm_eval import lm_eval_tasks

    plain = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    try:
        opts = LmEvalSchema.model_validate(plain)
    except ValidationError as err:
        raise ConfigError(f"lm_eval: {err}") from err
    limit = opts.limit
    if limit is not None and limit >= 1:
        limit = int(limit)
    metrics, _ = lm_eval_tasks(
        model,
        tokenizer,
        opts.tasks,
        include_path=opts.include_path,
        limit=limit,
        num_fewshot=opts.num_fewshot,
        batch_size=opts.batch_size,
    )
    return metrics
