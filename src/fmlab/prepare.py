"""``fmlab-prepare``: compose → validate → build the stages → run the pipeline → data card.

Turns raw sources into a training-ready dataset (see :mod:`fmlab.data.pipeline`) in
``output_dir``, and a ``summary.json`` into the Hydra run directory.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Annotated, Any, Literal

from omegaconf import DictConfig, OmegaConf
from pydantic import BaseModel, ConfigDict, Field

from fmlab.cli import hydra_main
from fmlab.config import build, validate_config
from fmlab.config.validate import PathsSchema
from fmlab.data.pipeline.records import SourceSpec  # pydantic + pyarrow only, no torch
from fmlab.utils import print_config, print_table, write_json

__all__ = ["STAGES", "PrepareSchema", "main", "prepare"]

STAGES = ("structure", "clean", "filter", "dedup", "split", "decontaminate", "segment", "write")


class PrepareSchema(BaseModel):
    """Top-level keys of ``conf/prepare.yaml`` (stage nodes are checked by signature)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    task_name: str
    sources: list[str | SourceSpec] = Field(min_length=1)
    output_dir: str
    output_format: Literal["arrow", "parquet", "streaming"] = "arrow"
    name: str | None = None
    work_dir: str
    num_proc: Annotated[int, Field(ge=1)] = 1
    batch_size: Annotated[int, Field(ge=1)] = 1000
    progress: bool = True
    force: bool = False
    storage_options: dict[str, Any] | None = None
    tokenizer_train_docs: Annotated[int, Field(ge=1)] | None = None
    print_config: bool = False
    engine: Literal["local", "spark"] = "local"
    spark: Any = None
    paths: PathsSchema
    tokenizer: Any = None
    structure: Any = None
    clean: Any = None
    filter: Any = None
    dedup: Any = None
    split: Any = None
    decontaminate: Any = None
    segment: Any = None
    write: Any = None


def prepare(cfg: DictConfig) -> dict[str, Any]:
    """Run the preparation pipeline described by ``cfg``; return the data card.

    Args:
        cfg: A composed ``prepare`` config.
    """
    t0 = time.time()
    validate_config(cfg, root=PrepareSchema, groups=(*STAGES, "tokenizer", "spark"))
    if cfg.print_config:
        print_config(cfg, order=("sources", "output_dir", *STAGES, "tokenizer"))
    stages = {name: build(cfg.get(name), name) for name in STAGES}
    tokenizer = build(cfg.tokenizer, "tokenizer") if stages["segment"] is not None else None
    from fmlab.data.pipeline import prepare_dataset

    run = prepare_dataset
    if cfg.engine == "spark":  # same stages and settings, run as a Spark job
        from fmlab.utils.optional import require

        require("pyspark", "spark", "fmlab-prepare engine=spark")
        from fmlab.data.spark import prepare_on_spark

        run = functools.partial(prepare_on_spark, spark=build(cfg.get("spark"), "spark"))
    card = run(
        OmegaConf.to_container(cfg.sources, resolve=True),
        cfg.output_dir,
        **stages,
        tokenizer=tokenizer,
        work_dir=cfg.work_dir,
        cache_dir=cfg.paths.cache_dir,
        num_proc=cfg.num_proc,
        batch_size=cfg.batch_size,
        progress=cfg.progress,
        storage_options=OmegaConf.to_container(cfg.storage_options, resolve=True)
        if cfg.storage_options
        else None,
        tokenizer_train_docs=cfg.tokenizer_train_docs,
        name=cfg.name,
        force=cfg.force,
    )
    rows: dict[str, Any] = {"output_dir": card["path"], "up_to_date": card["up_to_date"]}
    for stage, st in card["stages"].items():
        if st.get("enabled", True) and "in" in st:
            removed = sum(st.get("removed", {}).values())
            rows[stage] = f"{st['in']:,} → {st['out']:,} (-{removed:,}) {st.get('seconds', 0):.1f}s"
    for split, info in card["splits"].items():
        rows[split] = f"{info.get('documents', 0):,} docs, {info.get('rows', 0):,} rows" + (
            f", {info['tokens']:,} tokens" if "tokens" in info else ""
        )
    print_table("prepared" if not card["up_to_date"] else "up to date (nothing to do)", rows)
    out = cfg.paths.get("output_dir")
    if out:
        summary = {"status": "ok", "wall_s": time.time() - t0, "path": card["path"],
                   "up_to_date": card["up_to_date"], "fingerprint": card["fingerprint"],
                   "splits": card["splits"]}  # fmt: skip
        write_json(Path(out) / "summary.json", summary)
    return card


@hydra_main("prepare")
def main(cfg: DictConfig) -> None:
    """Console entry point."""
    prepare(cfg)


if __name__ == "__main__":
    main()
