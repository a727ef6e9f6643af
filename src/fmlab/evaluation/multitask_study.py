"""Multi-task vs. sequential training of two tasks, and how much the first task is forgotten.

Four runs from one base model, all multi-task runs over the same two tasks (so every run
evaluates both tasks with the same heads and metrics); only the sampling weights and the
starting point differ:

- ``first only``: N steps on the first task (the second's weight is 0);
- ``second only``: N steps on the second task;
- ``sequential``: ``first only``, then N steps on the second task from its export;
- ``multi-task``: 2N steps, both tasks round-robin (the same total steps as sequential).

Forgetting of the first task = its test metric after ``first only`` minus its test metric after
training on the second task too (``sequential`` or ``multi-task``). Every run evaluates its last
checkpoint (``export.which=last``): a best-by-val/loss pick would mix in the untrained task.

With several seeds (``seed=``: the built-in tasks' examples, the data order, the new heads), every
condition runs once per seed and :func:`write_study` reports ``mean ± std`` over the seeds.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fmlab.evaluation.seeds import aggregate, fmt, train_once

__all__ = [
    "CONDITIONS",
    "aggregate_rows",
    "forgetting_rows",
    "plot_study",
    "run_study",
    "write_study",
]

CONDITIONS = ("first only", "second only", "sequential", "multi-task")


def _weights(first: str, second: str, w1: float, w2: float) -> list[str]:
    return [
        "data.sampling=weights",
        f"task.{first}.sampling_weight={w1}",
        f"task.{second}.sampling_weight={w2}",
    ]


def run_study(
    base: str,
    runs: Path,
    *,
    first: str = "logic",
    second: str = "topic",
    steps: int = 400,
    overrides: Sequence[str] = (),
    seed: int | None = None,
    train_fn: Callable[[Path, list[str]], dict[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run the four conditions; returns each run's summary (metrics only).

    A condition whose run directory already holds a ``summary.json`` is read, not repeated.

    Args:
        base: The base model (an HF/fmlab export directory).
        runs: Where the runs go (``runs/<condition>``).
        first: The task trained first (generative in the shipped study).
        second: The task trained second.
        steps: N (see the module docstring).
        overrides: Extra overrides for every run (e.g. ``method=lora``).
        seed: ``seed=`` of every run (runs then go to ``runs/seed<seed>/<condition>``).
        train_fn: ``train_fn(run_dir, overrides) -> summary`` (default: in-process fmlab-train).
    """
    if train_fn is None:
        train_fn = train_once
    if seed is not None:
        runs, overrides = runs / f"seed{seed}", [f"seed={seed}", *overrides]
    common = [
        "experiment=multitask",
        f"task=[{first},{second}]",
        "export.which=last",
        f"trainer.val_check_interval={steps}",
        f"callbacks.checkpoint_last.every_n_train_steps={steps}",
        *overrides,
    ]
    from_base = [f"model.name_or_path={base}"]
    plan = {
        "first only": [*from_base, *_weights(first, second, 1, 0), f"trainer.max_steps={steps}"],
        "second only": [*from_base, *_weights(first, second, 0, 1), f"trainer.max_steps={steps}"],
        "multi-task": [*from_base, "data.sampling=round_robin", f"trainer.max_steps={2 * steps}"],
    }
    out: dict[str, dict[str, Any]] = {}
    for name in ("first only", "second only", "multi-task"):
        out[name] = train_fn(runs / name.replace(" ", "_"), [*common, *plan[name]])
    stage1 = runs / "first_only" / "export"
    if (stage1 / "merged").is_dir():  # LoRA family: continue from the merged weights
        stage1 = stage1 / "merged"
    sequential = [
        f"model.name_or_path={stage1}",
        *_weights(first, second, 0, 1),
        f"trainer.max_steps={steps}",
    ]
    out["sequential"] = train_fn(runs / "sequential", [*common, *sequential])
    return {k: {m: v for m, v in s.items() if not isinstance(v, dict)} for k, s in out.items()}


def forgetting_rows(
    results: dict[str, dict[str, Any]], first: str, second: str, metrics: dict[str, str]
) -> list[dict[str, Any]]:
    """One row per condition: both tasks' test metrics and the first task's forgetting.

    Args:
        results: Summaries by condition (:func:`run_study`).
        first: The first task.
        second: The second task.
        metrics: Task → the metric compared (e.g. ``{"logic": "exact_match"}``).
    """
    key1, key2 = f"test/{first}/{metrics[first]}", f"test/{second}/{metrics[second]}"
    reference = results["first only"][key1]
    rows = []
    for cond in CONDITIONS:
        if cond not in results:
            continue
        r = results[cond]
        trained_second = cond in ("sequential", "multi-task")
        rows.append(
            {
                "condition": cond,
                first: r[key1],
                second: r[key2],
                f"{first}_loss": r[f"test/{first}/loss"],
                "forgetting": reference - r[key1] if trained_second else None,
                "steps": r.get("global_step"),
            }
        )
    return rows


def aggregate_rows(per_seed: Sequence[list[dict[str, Any]]], first: str, second: str) -> list:
    """One row per condition: ``mean ± std`` over seeds of each :func:`forgetting_rows` column."""
    keys = (first, second, f"{first}_loss", "forgetting")
    out = []
    for cond in CONDITIONS:
        rows = [r for seed_rows in per_seed for r in seed_rows if r["condition"] == cond]
        if rows:
            out.append({"condition": cond, "steps": rows[0]["steps"], **aggregate(rows, keys)})
    return out


def plot_study(
    rows: list[dict[str, Any]], first: str, second: str, path: Path, labels: Sequence[str] = ()
) -> None:
    """Grouped bars: each task's test metric per condition, mean with ± std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["condition"] for r in rows]
    xs = range(len(rows))
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    names1, names2 = labels or (first, second)
    for shift, task, label in ((-0.2, first, names1), (0.2, second, names2)):
        means, stds = [r[task][0] for r in rows], [r[task][1] for r in rows]
        ax.bar([x + shift for x in xs], means, yerr=stds, width=0.4, capsize=3, label=label)
    ax.set_xticks(list(xs), names)
    n = max(r[first][2] for r in rows)
    title = f"multi-task vs. sequential (test; mean ± std, {n} seeds)"
    ax.set(ylabel="test metric", ylim=(0, 1.1), title=title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_study(
    per_seed: Sequence[dict[str, dict[str, Any]]],
    out: Path,
    first: str,
    second: str,
    metrics: dict[str, str],
) -> str:
    """Write ``results.json``, ``table.md`` and ``study.png`` into ``out``; returns the table.

    Args:
        per_seed: :func:`run_study`'s result for each seed.
        out: The output directory.
        first: The first task.
        second: The second task.
        metrics: Task → the metric compared.
    """
    out.mkdir(parents=True, exist_ok=True)
    seed_rows = [forgetting_rows(results, first, second, metrics) for results in per_seed]
    rows = aggregate_rows(seed_rows, first, second)
    labels = (f"{first} ({metrics[first]})", f"{second} ({metrics[second]})")
    plot_study(rows, first, second, out / "study.png", labels)
    dump = {"rows": rows, "per_seed": seed_rows, "runs": list(per_seed)}
    (out / "results.json").write_text(json.dumps(dump, indent=2))
    lines = [
        f"| condition | steps | {first} {metrics[first]} | {first} loss | {second} "
        f"{metrics[second]} | {first} forgotten |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        forgot = "" if r["forgetting"][2] == 0 else fmt(r["forgetting"], sign=True)
        lines.append(
            f"| {r['condition']} | {r['steps']} | {fmt(r[first])} | {fmt(r[f'{first}_loss'])} "
            f"| {fmt(r[second])} | {forgot} |"
        )
    table = "\n".join(lines) + "\n"
    (out / "table.md").write_text(table)
    return table
