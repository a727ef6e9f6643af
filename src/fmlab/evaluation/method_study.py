"""Fine-tuning methods compared on one base and one task, over several seeds.

Every method (full, LoRA, DoRA, LoReFT, DiReFT) fine-tunes the same base with
``experiment=sft_logic`` once per seed (``seed=``: the task's examples, the data order, the
adapter's initial weights), without looking at the test split. The method with the best mean
validation exact match is chosen, and only its runs are then evaluated on the test split
(``fmlab.eval.evaluate``, once per seed) — validation for choosing, test for reporting.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fmlab.evaluation.seeds import aggregate, band, fmt, separated, train_once

__all__ = ["METHODS", "evaluate_chosen", "plot_curves", "run_methods", "summarize", "write_study"]

# method -> fine-tuning steps: ReFT trains only prompt-position interventions and needs about
# twice LoRA's steps on the tiny base (docs/results/methods.md).
METHODS = {"full": 400, "lora": 400, "dora": 400, "loreft": 800, "direft": 800}
VAL_KEYS = ("val/exact_match", "val/loss")


def run_methods(
    base: str,
    runs: Path,
    methods: Mapping[str, int],
    seeds: Sequence[int],
    *,
    overrides: Sequence[str] = (),
    train_fn: Callable[[Path, list[str]], dict[str, Any]] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Fine-tune with every method and seed; returns ``method -> [summary per seed]``.

    Args:
        base: The base model (an export directory).
        runs: Where the runs go (``runs/<method>/seed<s>``); finished runs are reused.
        methods: Method → fine-tuning steps.
        seeds: The seeds.
        overrides: Extra overrides for every run.
        train_fn: ``train_fn(run_dir, overrides) -> summary`` (default: in-process fmlab-train).
    """
    train_fn = train_fn or train_once
    out: dict[str, list[dict[str, Any]]] = {}
    for seed in seeds:
        for method, steps in methods.items():
            cfg = [
                "experiment=sft_logic",
                f"model.name_or_path={base}",
                f"method={method}",
                f"seed={seed}",
                f"trainer.max_steps={steps}",
                "run_test=false",
                *overrides,
            ]
            out.setdefault(method, []).append(train_fn(runs / method / f"seed{seed}", cfg))
    return out


def summarize(results: Mapping[str, Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per method: trainable parameters and ``mean ± std`` of the validation metrics."""
    rows = []
    for method, runs in results.items():
        row = {
            "method": method,
            "steps": runs[0].get("global_step"),
            "params_trainable": runs[0]["params_trainable"],
            "params_trainable_pct": runs[0]["params_trainable_pct"],
            **aggregate(runs, VAL_KEYS),
        }
        rows.append(row)
    return rows


def evaluate_chosen(
    rows: Sequence[dict[str, Any]],
    results: Mapping[str, Sequence[dict[str, Any]]],
    out: Path,
    eval_fn: Callable[[str, Path], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Choose the method with the best mean ``val/exact_match``; test each of its seeds once."""
    eval_fn = eval_fn or _eval_in_process
    chosen = max(rows, key=lambda r: (r["val/exact_match"][0], -r["val/loss"][0]))["method"]
    tests = [  # one directory per run: <method>-<its run directory's name, e.g. seed2>
        eval_fn(r["evaluated_checkpoint"], out / f"{chosen}-{_run_name(r, i)}")
        for i, r in enumerate(results[chosen])
    ]
    return {"method": chosen, "per_seed": tests, **aggregate(tests, ["test/exact_match"])}


def _run_name(summary: dict[str, Any], index: int) -> str:
    output_dir = summary.get("paths", {}).get("output_dir")
    return Path(output_dir).name if output_dir else f"run{index}"


def _eval_in_process(ckpt: str, out: Path) -> dict[str, Any]:
    from fmlab.config import compose_config
    from fmlab.eval import evaluate

    done = out / "summary.json"
    if done.is_file():
        return json.loads(done.read_text())
    return evaluate(compose_config("eval", [f"ckpt_path={ckpt}"], output_dir=out))


def plot_curves(results: Mapping[str, Sequence[dict[str, Any]]], path: Path) -> Path:
    """``train/loss`` and ``val/exact_match`` over steps: mean line, ± std band over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fmlab.evaluation.plots import read_metrics_csv

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for i, (method, runs) in enumerate(results.items()):
        for ax, name in zip(axes, ("train/loss", "val/exact_match"), strict=True):
            curves = [read_metrics_csv(r["paths"]["metrics_csv"], name) for r in runs]
            steps, mean, std = band(curves)
            ax.plot(steps, mean, color=f"C{i}", marker="o" if "val" in name else None, label=method)
            lo = [m - s for m, s in zip(mean, std, strict=True)]
            hi = [m + s for m, s in zip(mean, std, strict=True)]
            ax.fill_between(steps, lo, hi, color=f"C{i}", alpha=0.15, lw=0)
    for ax, name in zip(axes, ("train/loss", "val/exact_match"), strict=True):
        ax.set(xlabel="step", ylabel=name, title=f"{name} (band: ± std over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_study(
    results: Mapping[str, Sequence[dict[str, Any]]], test: dict[str, Any], out: Path
) -> str:
    """Write ``results.json``, ``table.md`` and ``learning_curves.png``; returns the table."""
    out.mkdir(parents=True, exist_ok=True)
    rows = summarize(results)
    plot_curves(results, out / "learning_curves.png")
    best = next(r for r in rows if r["method"] == test["method"])
    for r in rows:  # is the chosen method ahead of each other one by more than the seed spread?
        r["separated_from_chosen"] = separated(r["val/exact_match"], best["val/exact_match"])
    lines = [
        "| method | trainable params | share | steps | val exact match | val loss "
        "| differs from the chosen one beyond the seed spread |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        chosen = r["method"] == test["method"]
        verdict = "(chosen)" if chosen else ("yes" if r["separated_from_chosen"] else "no")
        lines.append(
            f"| {r['method']} | {r['params_trainable']:,} | {r['params_trainable_pct']:.2f}% "
            f"| {r['steps']} | {fmt(r['val/exact_match'])} | {fmt(r['val/loss'])} | {verdict} |"
        )
    test_line = (
        f"\nTest exact match of the chosen method ({test['method']}, evaluated once per seed "
        f"after the choice): {fmt(test['test/exact_match'])} (n={test['test/exact_match'][2]}).\n"
    )
    text = "\n".join(lines) + "\n" + test_line
    runs = {m: [_small(s) for s in ss] for m, ss in results.items()}
    dump = {"rows": rows, "test": test, "runs": runs}
    (out / "results.json").write_text(json.dumps(dump, indent=2, default=str))
    (out / "table.md").write_text(text)
    return text


def _small(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if not isinstance(v, dict)}
