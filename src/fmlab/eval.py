"""``fmlab-eval``: validation/test loss and perplexity of a checkpoint or an HF model directory.

- ``ckpt_path=<.ckpt | run dir | last>``: rebuilds the model from the training run's own config
  and tokenizer (``<run>/config.yaml``, ``<run>/tokenizer``), and by default its data settings, so
  the splits are the ones the run held out. ``data_from_run=false`` evaluates on this config's
  data. A run directory means the checkpoint its summary reported (``evaluated_checkpoint``),
  ``last`` the last checkpoint of the latest training run; the file used is printed and recorded
  (``evaluated``, ``checkpoint_choice``).
- ``model_path=<dir>``: an fmlab export (full model, LoRA adapter, ReFT interventions), a run
  directory, or any HF causal LM directory / hub name, with its tokenizer. An adapter/ReFT export
  loads onto the base it recorded (``base_model=...`` when it moved; a base with another
  fingerprint is refused unless ``allow_base_mismatch=true``, then recorded in ``lineage``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

# torch/Lightning are imported inside evaluate(): --help and --cfg job stay fast (see train.py)
from fmlab.cli import hydra_main
from fmlab.config import ConfigError, build, validate_config

__all__ = ["evaluate", "main"]


def _run_dir_of(ckpt: Path) -> Path:
    run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    if not (run / "config.yaml").is_file() or not (run / "tokenizer").is_dir():
        raise ConfigError(
            f"ckpt_path={ckpt}: expected the training run's config.yaml and tokenizer/ in {run}"
        )
    return run


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate the model named by ``cfg.ckpt_path`` or ``cfg.model_path``; write summary.json."""
    t0 = time.time()
    validate_config(cfg)
    if cfg.get("lm_eval"):  # before any compute: lm-evaluation-harness is the [eval] extra
        from fmlab.utils.optional import require

        require("lm_eval", "eval", "fmlab-eval lm_eval=...")
    import lightning as L

    from fmlab.data.tokenizer import fixed_tokenizer
    from fmlab.data.tokenizer import pretrained as load_tokenizer
    from fmlab.evaluation.baselines import unigram_perplexity
    from fmlab.evaluation.lm_eval import check_lm_eval
    from fmlab.methods.adapters import load_trained
    from fmlab.models.positions import check_data_lengths, check_lengths, loaded_positions
    from fmlab.reliability.checkpoints import resolve_eval_checkpoint
    from fmlab.utils import print_table, write_json
    from fmlab.workflow import build_data, build_model, parameter_report

    if (cfg.ckpt_path is None) == (cfg.model_path is None):
        raise ConfigError("fmlab-eval: give exactly one of ckpt_path=... or model_path=...")
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, verbose=False)
    ckpt, choice, loaded = None, None, {}
    if cfg.ckpt_path is not None:
        ckpt, choice = resolve_eval_checkpoint(str(cfg.ckpt_path), cfg.paths.log_dir)
        print(f"evaluating {ckpt} ({choice})")
        run = _run_dir_of(Path(ckpt))
        train_cfg = OmegaConf.load(run / "config.yaml")
        tokenizer = load_tokenizer(name_or_path=str(run / "tokenizer"))
        datamodule, _ = build_data(
            train_cfg if cfg.data_from_run else cfg, tokenizer_factory=fixed_tokenizer(tokenizer)
        )
        model = build_model(train_cfg, tokenizer, datamodule.block_size)
        check_lm_eval(cfg.get("lm_eval"), model)  # before any evaluation runs
        check_data_lengths(datamodule, loaded_positions(model, str(run)))
        module = build(train_cfg.module, "module", model=model, optimizer=None)
        source = ckpt
    else:
        model, tokenizer = load_trained(
            cfg.model_path,
            base=cfg.get("base_model"),
            allow_base_mismatch=bool(cfg.get("allow_base_mismatch")),
            lineage=loaded,
        )
        check_lm_eval(cfg.get("lm_eval"), model)  # before any evaluation runs
        positions = loaded_positions(model, str(cfg.model_path))
        check_lengths(cfg, positions)  # before the data is read
        datamodule, _ = build_data(cfg, tokenizer_factory=fixed_tokenizer(tokenizer))
        check_data_lengths(datamodule, positions)
        module = build(cfg.module, "module", model=model, optimizer=None)
        source = cfg.model_path
    from fmlab.cli.console import adopt_lightning_logging

    adopt_lightning_logging()  # Lightning's records into the job's console and eval.log
    trainer = build(cfg.trainer, "trainer", logger=False)
    results: dict[str, Any] = dict(
        trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False)[0]
    )
    if cfg.run_test:
        results.update(
            trainer.test(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False)[0]
        )
        if hasattr(datamodule, "blocks"):
            results["test/unigram_ppl"] = unigram_perplexity(
                datamodule.blocks["train"], datamodule.blocks["test"], len(tokenizer)
            )
    summary = {
        "status": "ok",
        "evaluated": str(source),
        "checkpoint_choice": choice,
        "lineage": loaded or None,
        **results,
        **parameter_report(model),
        "data": datamodule.stats,
        "paths": {"output_dir": str(out)},
    }
    if cfg.get("sets") or cfg.get("lm_eval"):  # more sets / harness tasks: fmlab.evaluation.sets
        from fmlab.evaluation.sets import evaluate_sets, run_lm_eval

        # what is computed is on disk before a later step can fail (status: partial until done)
        if trainer.is_global_zero:
            write_json(out / "summary.json", {**summary, "status": "partial"})
        base = train_cfg if cfg.ckpt_path is not None and cfg.data_from_run else cfg
        try:
            results = evaluate_sets(cfg, base, tokenizer, module, trainer, ckpt)
            if cfg.get("lm_eval"):  # on the weights just evaluated (loaded from ckpt if given)
                results.update(run_lm_eval(cfg.lm_eval, module.model, tokenizer))
        except Exception as err:
            if trainer.is_global_zero:
                failed = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
                write_json(out / "summary.json", {**summary, **failed})
            raise
        summary.update(results)
    summary["wall_s"] = time.time() - t0
    if trainer.is_global_zero:
        write_json(out / "summary.json", summary)
        print_table("evaluation", {k: v for k, v in summary.items() if not isinstance(v, dict)})
    return summary


@hydra_main("eval")
def main(cfg: DictConfig) -> float | None:
    """Console entry point; returns ``val/loss``."""
    return evaluate(cfg).get("val/loss")


if __name__ == "__main__":
    main()
