"""Preference study: every method × objective after one SFT model, on the built-in logic task.

1. SFT: a model fine-tuned on ``logic`` (or ``--base``, an existing one), whose test exact match
   is the "before" column;
2. for each method (full, LoRA, LoReFT, ...) and objective (DPO, IPO, SimPO): ``experiment=
   dpo_logic`` from that model for N steps; its held-out reward accuracy, test exact match
   ("after") on the same 200 prompts, trainable parameters, wall time of fit and CPU seconds of
   the whole run (less sensitive than wall time to other jobs on a shared machine).

Results go to ``results.json``, ``table.md`` and ``study.png`` in the output directory.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fmlab.data.pipeline.engine import cpu_seconds

__all__ = ["evaluate_base", "plot_study", "run_study", "study_rows", "write_study"]

# Held-out sizes shared by the SFT and preference runs: the same prompts per split.
LOGIC = ["data.task=logic", "data.n_train=2000", "data.n_val=200", "data.n_test=200"]
TrainFn = Callable[[Path, list[str]], dict[str, Any]]


def _train_in_process(run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    from fmlab.config import compose_config
    from fmlab.train import train

    quiet = ["print_config=false", "callbacks.progress_bar=null"]
    return train(compose_config("train", [*quiet, *overrides], output_dir=run_dir))


def _metrics(summary: dict[str, Any]) -> dict[str, Any]:
    keep = (
        "params_trainable",
        "params_trainable_pct",
        "fit_s",
        "wall_s",
        "global_step",
        "evaluated",
    )
    return {k: v for k, v in summary.items() if "/" in k or k in keep}


def evaluate_base(base: str, out: Path) -> dict[str, Any]:
    """The starting model on the preference data (its own reference: rewards are 0): test exact
    match before preference training, on the prompts every run is tested on."""
    from fmlab.config import compose_config
    from fmlab.eval import evaluate

    overrides = [f"model_path={base}", "data=preference", *LOGIC, f"module.reference_model={base}"]
    return evaluate(compose_config("eval", overrides, output_dir=out))


def run_study(
    runs: Path,
    *,
    methods: Sequence[str] = ("full", "lora", "loreft"),
    losses: Sequence[str] = ("dpo", "ipo", "simpo"),
    steps: int = 200,
    sft_steps: int = 400,
    base: str | None = None,
    overrides: Sequence[str] = (),
    train_fn: TrainFn | None = None,
) -> dict[str, Any]:
    """Train the SFT model (unless ``base``) and every (method, objective) run from it.

    Args:
        runs: Where the runs go (``runs/sft``, ``runs/<method>_<loss>``).
        methods: Method config names.
        losses: ``module.loss`` values.
        steps: Preference steps per run.
        sft_steps: SFT steps (full fine-tuning of the default tiny model from scratch on logic).
        base: An SFT model directory to start from instead.
        overrides: Extra overrides for every preference run.
        train_fn: ``train_fn(run_dir, overrides) -> summary`` (default: in-process fmlab-train).
    """
    train_fn = train_fn or _train_in_process
    if base is None:
        sft = train_fn(  # the default tiny model, from scratch, its own BPE tokenizer
            runs / "sft",
            ["data=sft", *LOGIC, "tokenizer.vocab_size=300", "method=full", "optim.lr=3e-3",
             f"trainer.max_steps={sft_steps}", f"trainer.val_check_interval={sft_steps}",
             f"callbacks.checkpoint_last.every_n_train_steps={sft_steps}"],
        )  # fmt: skip
        base = sft["paths"]["export_dir"]
    sft = evaluate_base(base, runs / "sft_eval")
    out: dict[str, Any] = {"base": base, "sft": _metrics(sft), "runs": {}}
    for method in methods:
        for loss in losses:
            t0, c0 = time.time(), cpu_seconds()
            s = train_fn(
                runs / f"{method}_{loss}",
                [
                    "experiment=dpo_logic",
                    f"model.name_or_path={base}",
                    f"method={method}",
                    f"module.loss={loss}",
                    *LOGIC,
                    f"trainer.max_steps={steps}",
                    f"trainer.val_check_interval={max(steps // 2, 1)}",
                    *overrides,
                ],
            )
            out["runs"][f"{method}/{loss}"] = {
                **_metrics(s),
                "run_wall_s": time.time() - t0,
                "run_cpu_s": cpu_seconds() - c0,
            }
    return out


def study_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (method, objective): parameters, reward accuracy, exact match, time."""
    before = results["sft"].get("test/exact_match")
    rows = []
    for name, r in results["runs"].items():
        method, loss = name.split("/")
        rows.append(
            {
                "method": method,
                "objective": loss,
                "trainable_params": r["params_trainable"],
                "trainable_pct": r["params_trainable_pct"],
                "val_reward_acc": r.get("val/rewards/accuracy"),
                "test_reward_acc": r.get("test/rewards/accuracy"),
                "test_margin": r.get("test/rewards/margin"),
                "test_kl": r.get("test/kl"),
                "exact_match_before": before,
                "exact_match_after": r.get("test/exact_match"),
                "fit_s": r["fit_s"],
                "run_cpu_s": r.get("run_cpu_s"),
            }
        )
    return rows


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
    return "–" if value is None else str(value)


def plot_study(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Bars per (method, objective): test reward accuracy and exact match before/after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['method']}\n{r['objective']}" for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows)), 4))
    width = 0.27
    series = (
        ("test reward accuracy", "test_reward_acc", -width),
        ("exact match before (SFT)", "exact_match_before", 0.0),
        ("exact match after", "exact_match_after", width),
    )
    for label, key, shift in series:
        ax.bar([i + shift for i in x], [r[key] or 0 for r in rows], width, label=label)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set(xticks=list(x), ylim=(0, 1.05), ylabel="share of held-out prompts")
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_title("preference fine-tuning after SFT (logic task, tiny model)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_study(results: dict[str, Any], out: Path, command: str = "") -> str:
    """``results.json``, ``table.md`` (returned) and ``study.png`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    rows = study_rows(results)
    (out / "results.json").write_text(json.dumps({**results, "rows": rows}, indent=2) + "\n")
    cols = list(rows[0]) if rows else []
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in rows]
    table = "\n".join(lines) + "\n"
    if command:
        table = f"`{command}`\n\n{table}"
    (out / "table.md").write_text(table)
    plot_study(rows, out / "study.png")
    return table
