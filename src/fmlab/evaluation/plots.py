"""PNG plots: of a sweep (the validation metric per configuration, learning curves per run) and
of one run (`plot_run`: loss, learning rate, throughput from its metrics.csv)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_learning_curves", "plot_metric_by_config", "plot_run", "read_metrics_csv"]


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


def _columns(path: Path) -> list[str]:
    with open(path, newline="") as fh:
        return next(csv.reader(fh), [])


def _plot_series(
    plt: Any,
    series: dict[str, tuple[list[int], list[float]]],
    title: str,
    ylabel: str,
    path: Path,
    log_y: bool = False,
) -> Path | None:
    series = {name: sv for name, sv in series.items() if sv[0]}
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (steps, values) in series.items():
        marker = "o" if len(steps) < 30 or name.startswith("val/") else None
        ax.plot(steps, values, label=name, lw=1.2, marker=marker, ms=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    every = [v for _, values in series.values() for v in values]
    if log_y and min(every) > 0 and max(every) / min(every) > 10:  # spans a decade or more
        ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_run(metrics_csv: str | Path | None, out_dir: str | Path) -> dict[str, str]:
    """PNGs of one run from its ``metrics.csv``: ``loss.png`` (train/val loss), ``lr.png``,
    ``throughput.png`` (tokens/s) and ``val_metrics.png`` (other ``val/`` metrics, if any).

    Best effort: a run's results matter more than its pictures, so a problem only warns.

    Returns:
        ``{"plot_<name>": path}`` of the files written (a plot without data is skipped).
    """
    if not metrics_csv or not Path(metrics_csv).is_file():
        return {}
    try:
        return _plot_run(Path(metrics_csv), Path(out_dir))
    except Exception as err:
        import logging

        logging.getLogger(__name__).warning("could not plot %s: %s", metrics_csv, err)
        return {}


def _plot_run(metrics_csv: Path, out: Path) -> dict[str, str]:
    columns = _columns(metrics_csv)
    if "step" not in columns:
        return {}
    out.mkdir(parents=True, exist_ok=True)
    plt = _pyplot()

    trained = read_metrics_csv(metrics_csv, "train/loss")[0]
    last = max(trained, default=None)

    def read(names: Sequence[str]) -> dict[str, tuple[list[int], list[float]]]:
        series = {n: read_metrics_csv(metrics_csv, n) for n in names if n in columns}
        if last is None:
            return series
        # val/ rows after the last training step are the evaluation of the chosen checkpoint
        # after fit (logged at the final step), not a point of the learning curve
        return {
            n: tuple(map(list, zip(*[(s, v) for s, v in zip(*sv) if s <= last]))) or ([], [])
            for n, sv in series.items()
        }

    val_other = [c for c in columns if c.startswith("val/") and c not in ("val/loss", "val/ppl")]
    plots = {
        "loss": (read(["train/loss", "val/loss"]), "training and validation loss", "loss", True),
        "lr": (read([c for c in columns if c.startswith("lr-")]), "learning rate", "lr", False),
        "throughput": (read(["perf/tokens_per_s"]), "throughput", "tokens/s", False),
        "val_metrics": (read(val_other), "validation metrics", "value", False),
    }
    written = {}
    for name, (series, title, ylabel, log_y) in plots.items():
        path = _plot_series(plt, series, title, ylabel, out / f"{name}.png", log_y)
        if path is not None:
            written[f"plot_{name}"] = str(path)
    return written
