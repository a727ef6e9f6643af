"""``fmlab-generate``: greedy or sampled continuations from any fmlab export or HF model.

Writes ``generations.jsonl`` (prompt, completion) into the run directory and prints a table.
From Python use :func:`fmlab.methods.adapters.load_trained` and
:func:`fmlab.evaluation.generation.generate_text`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from omegaconf import DictConfig
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fmlab.cli import hydra_main
from fmlab.config import ConfigError
from fmlab.utils import atomic_write_text, write_json

__all__ = ["generate", "main"]


class GenerateSchema(BaseModel):
    """Keys of ``conf/generate.yaml``."""

    model_config = ConfigDict(extra="forbid")
    task_name: str
    seed: Annotated[int, Field(ge=0)]
    paths: dict[str, Any]
    model_path: str
    base_model: str | None = None
    allow_base_mismatch: bool = False
    prompts: list[str]
    prompts_file: str | None = None
    template: str
    chat_template: bool
    max_new_tokens: Annotated[int, Field(gt=0)]
    do_sample: bool
    temperature: Annotated[float, Field(gt=0)]
    top_p: Annotated[float, Field(gt=0, le=1)]
    batch_size: Annotated[int, Field(gt=0)]


def generate(cfg: DictConfig, lineage: dict[str, Any] | None = None) -> list[dict[str, str]]:
    """Generate for every prompt of ``cfg``; returns ``[{"prompt", "completion"}]``.

    Args:
        cfg: A composed ``generate`` config.
        lineage: Filled with the base an adapter/ReFT model was loaded onto (see
            :func:`fmlab.methods.adapters.load_trained`).
    """
    from omegaconf import OmegaConf

    from fmlab.data.sft import encode_prompt
    from fmlab.evaluation.generation import generate_text
    from fmlab.methods.adapters import load_trained
    from fmlab.models.positions import check_generation, loaded_positions

    plain = {k: v for k, v in OmegaConf.to_container(cfg, resolve=False).items() if k != "hydra"}
    try:
        opts = GenerateSchema.model_validate(plain)
    except ValidationError as err:
        raise ConfigError(f"invalid generate config: {err}") from err
    prompts = list(opts.prompts)
    if opts.prompts_file:
        prompts += [ln for ln in Path(opts.prompts_file).read_text().splitlines() if ln.strip()]
    if not prompts:
        raise ConfigError("fmlab-generate: give prompts=[...] or prompts_file=<file>")
    model, tokenizer = load_trained(
        opts.model_path,
        base=opts.base_model,
        allow_base_mismatch=opts.allow_base_mismatch,
        lineage=lineage,
    )
    ids = [
        encode_prompt(p, tokenizer, template=opts.template, chat_template=opts.chat_template)
        for p in prompts
    ]
    limit = loaded_positions(model, opts.model_path)
    check_generation([len(i) for i in ids], opts.max_new_tokens, limit, "max_new_tokens")
    completions = generate_text(
        model,
        tokenizer,
        ids,
        max_new_tokens=opts.max_new_tokens,
        do_sample=opts.do_sample,
        temperature=opts.temperature,
        top_p=opts.top_p,
        batch_size=opts.batch_size,
        seed=opts.seed,
    )
    return [{"prompt": p, "completion": c} for p, c in zip(prompts, completions)]


@hydra_main("generate")
def main(cfg: DictConfig) -> None:
    """Console entry point."""
    from rich.console import Console
    from rich.table import Table

    lineage: dict[str, Any] = {}
    rows = generate(cfg, lineage)
    out = Path(cfg.paths.output_dir)
    atomic_write_text(out / "generations.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    write_json(out / "summary.json", {"model_path": cfg.model_path, "lineage": lineage})
    table = Table("prompt", "completion", title=f"generations ({out / 'generations.jsonl'})")
    for r in rows:
        table.add_row(r["prompt"], r["completion"])
    Console().print(table)


if __name__ == "__main__":
    main()
