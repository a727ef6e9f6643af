"""``fmlab-train``: compose → validate → build → fit → validate/test best → export → summary."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

# Only Hydra (through fmlab.cli) at module level: `fmlab-train --help` and `--cfg job` are
# answered by @hydra.main before train() runs, without importing torch or Lightning (start-up,
# tests/unit/test_startup_imports.py). What a run needs is imported inside the functions.
from fmlab.cli import hydra_main

__all__ = ["main", "train"]

log = logging.getLogger(__name__)


def _metrics(results: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(v) for k, v in (results[0] if results else {}).items()}


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job described by ``cfg``; return (and write) its summary.

    The run directory is locked for the whole run: a second run pointed at it stops at once.

    Args:
        cfg: A composed ``train`` config (``paths.output_dir`` must be set).

    Returns:
        The summary dict also written to ``<output_dir>/summary.json``.
    """
    from fmlab.reliability import run_dir_lock

    with run_dir_lock(Path(cfg.paths.output_dir)):
        return _train(cfg)


def _train(cfg: DictConfig) -> dict[str, Any]:
    t0 = time.time()
    from fmlab.config import validate_config
    from fmlab.lineage import check_resumed, pin_config

    # model references resolved once (absolute, fingerprinted) and pinned in cfg: config.yaml,
    # summary and export record what the run really started from (fmlab.lineage)
    refs = pin_config(cfg)
    validate_config(cfg)  # before anything is read or built (imports the _target_ callables)
    import lightning as L
    from lightning.pytorch.utilities import rank_zero_only
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from fmlab.callbacks.progress import schedule_warnings
    from fmlab.callbacks.startup import StartupTime
    from fmlab.callbacks.throughput import Throughput
    from fmlab.continual import init_tokenizer_factory, provenance
    from fmlab.distributed import unsharded_model
    from fmlab.evaluation.baselines import unigram_perplexity
    from fmlab.evaluation.periods import period_card
    from fmlab.evaluation.plots import plot_run
    from fmlab.methods.adapters import save_trained
    from fmlab.models.positions import check_data_lengths, check_lengths, starting_positions
    from fmlab.reliability import resolve_resume
    from fmlab.reliability.interrupts import stopped_by_signal
    from fmlab.utils import print_config, print_table, write_json
    from fmlab.utils.printing import relative_paths
    from fmlab.utils.remote import publish_run, remote_settings
    from fmlab.utils.secrets import protect_run_dir
    from fmlab.workflow import (
        build_data,
        build_model,
        build_module,
        build_trainer,
        checkpoint_paths,
        link_latest,
        metric_files,
        parameter_report,
        preflight,
        save_resolved_config,
    )

    preflight(cfg)
    positions = starting_positions(refs)  # lengths vs the starting model's positions
    check_lengths(cfg, positions)
    out = Path(cfg.paths.output_dir)
    check_resumed(out / "config.yaml", refs)  # a restarted run: still the same base
    out.mkdir(parents=True, exist_ok=True)
    rank_zero_only(protect_run_dir)(out)  # no credential in .hydra/, logs or anything written
    # paths.remote_dir (S3): checked writable here, searched for checkpoints (fmlab.utils.remote)
    remote = remote_settings(cfg)
    ckpt_path = resolve_resume(cfg.ckpt_path, cfg.get("resume", "auto"), out, **remote)
    if cfg.print_config:
        rank_zero_only(print_config)(cfg)
    rank_zero_only(save_resolved_config)(cfg, out)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule, tokenizer = build_data(
        cfg, init_tokenizer_factory(cfg.get("init_from"), cfg.get("extend_tokenizer"))
    )
    check_data_lengths(datamodule, positions)  # held-out prompts + generation budget
    rank_zero_only(tokenizer.save_pretrained)(str(out / "tokenizer"))
    # Re-seed: model and adapter initialisation then depend on the seed only, not on how much
    # randomness data preparation happened to draw.
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model = build_model(cfg, tokenizer, datamodule.block_size)
    params = parameter_report(model)
    rank_zero_only(print_table)("parameters", params)
    module = build_module(cfg, model)
    trainer = build_trainer(cfg)
    rank_zero_only(schedule_warnings)(trainer)  # e.g. max_steps < val_check_interval

    t_fit = time.time()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException as err:  # SIGTERM or Ctrl-C: checkpoint saved; exit 143 / 130
        raise stopped_by_signal(trainer, out) from err  # (Lightning alone would exit 0)
    fit_s = time.time() - t_fit
    tokens_seen = int(module.tokens_seen)  # before validate/test load another checkpoint
    ckpts = checkpoint_paths(trainer)
    chosen = ckpts.get((cfg.export or {}).get("which", "best")) or ckpts["last"]

    # Numbers are reported for one set of weights: the chosen checkpoint, on validation and test.
    val = _metrics(trainer.validate(module, datamodule=datamodule, ckpt_path=chosen, verbose=False))
    test = {}
    if cfg.run_test:
        test = _metrics(
            trainer.test(module, datamodule=datamodule, ckpt_path=chosen, verbose=False)
        )
        if hasattr(datamodule, "blocks"):  # pre-training data: the baseline the LM must beat
            test["test/unigram_ppl"] = unigram_perplexity(
                datamodule.blocks["train"], datamodule.blocks["test"], len(tokenizer)
            )
    throughput = next((cb for cb in trainer.callbacks if isinstance(cb, Throughput)), None)
    summary: dict[str, Any] = {
        "status": "ok",
        "method": str(cfg.method._target_).rsplit(".", 1)[-1],
        **val,
        **test,
        "tokens_seen": tokens_seen,
        "tokens_per_s": (
            throughput.tokens_per_s if throughput and throughput.tokens else tokens_seen / fit_s
        ),
        **params,
        **(throughput.peak_memory() if throughput else {}),
        # startup_s: process start -> first training step (fmlab.callbacks.startup)
        **next((cb.summary() for cb in trainer.callbacks if isinstance(cb, StartupTime)), {}),
        "global_step": int(trainer.global_step),
        "fit_s": fit_s,
        "data": datamodule.stats,
        "evaluated_checkpoint": chosen,
        "lineage": {
            "run_id": out.name,
            "run_dir": str(out.resolve()),
            **{role: ref.to_dict() for role, ref in refs.items()},
        },
    }
    base_ref = refs.get("init_from") or refs.get("model")
    # FSDP: each rank holds a shard of the weights; gather a full copy on rank 0 for the export
    # (a collective, so every rank calls it; without FSDP it is module.model itself)
    export_model = None
    if cfg.export and cfg.export.hf:
        export_model = unsharded_model(
            trainer, module.model, lambda: build_model(cfg, tokenizer, datamodule.block_size)
        )
    if trainer.is_global_zero:
        paths = {
            "output_dir": str(out),
            "config": str(out / "config.yaml"),
            "best_ckpt": ckpts["best"],
            "last_ckpt": ckpts["last"],
        }
        if cfg.export and cfg.export.hf:
            card = {
                "base": base_ref.path if base_ref else f"random init ({cfg.model.get('preset')})",
                "base_fingerprint": base_ref.fingerprint if base_ref else None,
                "base_ref": base_ref.to_dict() if base_ref else None,
                "run_id": out.name,
                "run_dir": str(out.resolve()),
                "method": summary["method"],
                "data_sources": datamodule.stats.get("sources"),
                "tokens_seen": tokens_seen,
                "checkpoint": chosen,
                **provenance(cfg, datamodule, tokens_seen),
                **{k: v for k, v in summary.items() if "/" in k},
            }
            card.update(period_card(summary, getattr(datamodule, "period_info", None)))
            loader = datamodule.val_dataloader()
            loader = loader[0] if isinstance(loader, list) else loader  # multi-task: per task
            sample = next(iter(loader))["input_ids"][:4]
            exported = save_trained(
                export_model,
                tokenizer,
                out / "export",
                card,
                sample,
                base=base_ref,
                include_base=bool(cfg.export.get("include_base", False)),
            )
            if hasattr(module, "save_heads"):  # multi-task heads beside the backbone export
                exported.update(module.save_heads(out / "export"))
            paths.update({f"export_{k}": v for k, v in exported.items()})
            paths["export_dir"] = str(out / "export")
        paths.update(metric_files(trainer))
        paths.update(plot_run(paths.get("metrics_csv"), out / "plots"))  # plots/*.png
        summary["paths"] = paths
        summary["wall_s"] = time.time() - t0
        write_json(out / "summary.json", summary)
        publish_run(out, summary, **remote)  # export/, config, summary.json -> paths.remote_dir
        link_latest(out, Path(cfg.paths.log_dir) / cfg.task_name)
        print_table("summary", {k: v for k, v in summary.items() if not isinstance(v, dict)})
        print_table("files", relative_paths(paths, out))
        if "export_dir" in paths:  # what the next command (a fine-tune, an eval) starts from
            print(f"export: {paths['export_dir']}  (e.g. FMLAB_BASE_MODEL={paths['export_dir']})")
    return summary


@hydra_main("train")
def main(cfg: DictConfig) -> float | None:
    """Console entry point; returns ``cfg.optimized_metric`` (a ``val/`` metric, never a test
    one) for Hydra sweepers. A failing job of a multirun is recorded as failed in its
    ``summary.json`` and returns ``None`` instead of stopping the sweep (see :mod:`fmlab.sweeps`).
    """
    from fmlab.sweeps import run_job

    return run_job(cfg, train)


if __name__ == "__main__":
    main()
