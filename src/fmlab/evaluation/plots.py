"""PNG plots of a sweep: the validation metric per configuration, and learning curves per run."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_learning_curves", "plot_metric_by_config", "read_metrics_csv"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display, in tests and on clusters
    import matplotlib.pyplot as plt

    return plt


def read_metrics_csv(path: str | Path, metric: str) -> tuple[list[int], list[float]]:
    """``(steps, values)`` of ``metric`` from a Lightning ``metrics.csv`` (blank cells skipped)."""
    steps, values = [], []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            if row.get(metric) not in (None, ""):
                steps.append(int(float(row["step"])))
                values.append(float(row[metric]))
    return steps, values


def plot_metric_by_config(
    groups: Sequence[dict[str, Any]], metric: str, path: str | Path, selected: Sequence[str] = ()
) -> Path:
    """Each run's ``metric`` (dots) and the mean ± std per configuration; selected in bold."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(groups) + 1.6))
    for i, g in enumerate(groups):
        xs = [float(r[metric]) for r in g["runs"] if r.get(metric) is not None]
        mean, std, n = g[metric]
        color = "tab:red" if g["config"] in selected else "tab:blue"
        ax.scatter(xs, [i] * len(xs), color=color, alpha=0.5, s=18, zorder=2)
        if n:
            ax.errorbar(mean, i, xerr=std, fmt="o", color=color, capsize=4, zorder=3)
        else:
            ax.text(
                0.01,
                i,
                "no successful run",
                transform=ax.get_yaxis_transform(),
                color="gray",
                fontsize=8,
                va="center",
            )
    ax.set_yticks(range(len(groups)))
    ax.set_yticklabels(
        [("* " if g["config"] in selected else "") + g["config"] for g in groups], fontsize=8
    )
    ax.invert_yaxis()
    ax.set_xlabel(f"{metric} (validation; dots: runs, bar: mean ± std over seeds)")
    ax.set_title("validation metric per configuration (* = selected)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_learning_curves(
    rows: Sequence[dict[str, Any]], metric: str, path: str | Path
) -> Path | None:
    """``train/loss`` and ``metric`` over steps for every run with a metrics CSV, by config."""
    runs = [r for r in rows if Path(str((r.get("paths") or {}).get("metrics_csv", ""))).is_file()]
    if not runs:
        return None
    plt = _pyplot()
    configs = list(dict.fromkeys(r["config"] for r in runs))
    colors = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r in runs:
        color = colors(configs.index(r["config"]) % 10)
        for ax, name in zip(axes, ("train/loss", metric)):
            steps, values = read_metrics_csv(r["paths"]["metrics_csv"], name)
            marker = "o" if name.startswith("val/") else None
            ax.plot(steps, values, color=color, alpha=0.7, lw=1, marker=marker, ms=3)
    for ax, name in zip(axes, ("train/loss", metric)):
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=colors(i % 10)) for i in range(len(configs))]
    fig.legend(handles, configs, loc="lower center", ncol=min(3, len(configs)), fontsize=8)
    fig.suptitle("learning curves (one line per run, colour = configuration)")
    fig.tight_layout(rect=(0, 0.06 + 0.04 * (len(configs) // 3), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
