"""Continued pre-training study: domain gain vs. forgetting per variant, over several seeds.

Every variant (replay share, KL to the base, ...) continues one base model with
``experiment=continual_code`` once per seed; the seed sets the data order of the mixture. Each run's
forgetting report (``<run>/forgetting/report.json``) gives one row of
:func:`fmlab.callbacks.forgetting.comparison_rows`; the rows of a variant's seeds are aggregated
into ``mean ± std`` (:mod:`fmlab.evaluation.seeds`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fmlab.callbacks.forgetting import comparison_rows
from fmlab.evaluation.seeds import aggregate, band, fmt, separated, train_once

__all__ = ["COLUMNS", "aggregate_rows", "plot_seeds", "run_variants", "table", "write_study"]

COLUMNS = (
    "domain_ppl_end",
    "domain_gain_pct",
    "retention_ppl_end",
    "retention_loss_pct",
    "kl_to_base",
)


def run_dir(runs: Path, label: str, seed: int) -> Path:
    """``runs/<label as a file name>/seed<seed>``."""
    name = label.replace(" ", "_").replace("%", "pct").replace("+", "").replace("__", "_")
    return runs / name / f"seed{seed}"


def run_variants(
    base: str,
    runs: Path,
    variants: Mapping[str, Sequence[str]],
    seeds: Sequence[int],
    *,
    overrides: Sequence[str] = (),
    train_fn: Callable[[Path, list[str]], Any] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Run every variant with every seed; returns ``label -> [report.json per seed]``.

    A run whose ``forgetting/report.json`` exists already is read, not repeated, so an interrupted
    study continues where it stopped.

    Args:
        base: The model every variant continues (``init_from``: run dir, export or .ckpt).
        runs: Where the runs go (``runs/<label>/seed<s>``).
        variants: Label → overrides of that variant.
        seeds: The seeds (``seed=``) each variant runs with.
        overrides: Extra overrides for every run.
        train_fn: ``train_fn(run_dir, overrides)`` (default: in-process fmlab-train).
    """
    train_fn = train_fn or train_once
    reports: dict[str, list[dict[str, Any]]] = {}
    for seed in seeds:
        for label, extra in variants.items():
            run = run_dir(runs, label, seed)
            report = run / "forgetting" / "report.json"
            if not report.is_file():
                cfg = ["experiment=continual_code", f"init_from={base}", f"seed={seed}"]
                train_fn(run, [*cfg, *extra, *overrides])
            reports.setdefault(label, []).append(json.loads(report.read_text()))
    return reports


def aggregate_rows(reports: Mapping[str, Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per variant: ``mean ± std`` of every :data:`COLUMNS` entry over its seeds."""
    rows = []
    for label, per_seed in reports.items():
        seed_rows = comparison_rows({f"{label} #{i}": r for i, r in enumerate(per_seed)})
        row: dict[str, Any] = {"run": label, "n": len(seed_rows)}
        row.update(aggregate(seed_rows, COLUMNS))
        row["domain_ppl_start"] = seed_rows[0]["domain_ppl_start"]
        row["retention_ppl_start"] = seed_rows[0]["retention_ppl_start"]
        row["per_seed"] = seed_rows
        rows.append(row)
    return rows


def table(rows: Sequence[dict[str, Any]]) -> str:
    """The Markdown table of the results page (``mean ± std`` over seeds)."""
    lines = [
        "| run | seeds | code ppl start → end | domain gain | English ppl start → end "
        "| general loss | KL to base |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['n']} | {r['domain_ppl_start']:.1f} → "
            f"{fmt(r['domain_ppl_end'], 1)} "
            f"| {fmt(r['domain_gain_pct'], 1, suffix='%')} | {r['retention_ppl_start']:.1f} → "
            f"{fmt(r['retention_ppl_end'], 1)} "
            f"| {fmt(r['retention_loss_pct'], 1, sign=True, suffix='%')} "
            f"| {fmt(r['kl_to_base'], 3)} |"
        )
    return "\n".join(lines) + "\n"


def differences(rows: Sequence[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Every pair of variants on ``key``: difference of means, and whether it beats the spread."""
    out = []
    for i, a in enumerate(rows):
        for b in rows[i + 1 :]:
            out.append(
                {
                    "a": a["run"],
                    "b": b["run"],
                    "metric": key,
                    "diff": a[key][0] - b[key][0],
                    "separated": separated(a[key], b[key]),
                }
            )
    return out


def plot_seeds(reports: Mapping[str, Sequence[dict[str, Any]]], path: Path) -> Path:
    """Left: domain gain (solid) and English loss (dashed) over steps, mean ± std band per variant;
    right: where each variant ends (domain gain vs. retention loss), error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (label, per_seed) in enumerate(reports.items()):
        color = f"C{i}"
        ratio = _retention_key(per_seed[0])
        gain = [_curve(r, "forget/domain/gain", 100, 0) for r in per_seed]
        loss = [_curve(r, ratio, 100, 1) for r in per_seed]
        for curves, style, what in ((gain, "-", "domain gain"), (loss, "--", "English loss")):
            steps, mean, std = band(curves)
            ax1.plot(steps, mean, color=color, ls=style, label=f"{label}: {what}")
            lo = [m - s for m, s in zip(mean, std, strict=True)]
            hi = [m + s for m, s in zip(mean, std, strict=True)]
            ax1.fill_between(steps, lo, hi, color=color, alpha=0.15, lw=0)
        end_gain = aggregate([{"v": c[1][-1]} for c in gain], ["v"])["v"]
        end_loss = aggregate([{"v": c[1][-1]} for c in loss], ["v"])["v"]
        ax2.errorbar(
            end_loss[0], end_gain[0], xerr=end_loss[1], yerr=end_gain[1], fmt="o", color=color,
            capsize=4, label=label,
        )  # fmt: skip
    ax1.set(xlabel="step", ylabel="% vs. start", title="over steps (band: ± std over seeds)")
    ax2.set(xlabel="English ppl loss (%)", ylabel="code ppl gain (%)", title="at the end")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _retention_key(report: dict[str, Any]) -> str:
    sets = [n for n in report["base_ppl"] if n != "domain"]
    return f"forget/{sets[0]}/ppl_ratio"


def _curve(report: dict[str, Any], key: str, scale: float, offset: float) -> tuple[list, list]:
    rows = [h for h in report["history"] if key in h]
    return [0] + [h["step"] for h in rows], [0.0] + [scale * (h[key] - offset) for h in rows]


def write_study(
    reports: Mapping[str, Sequence[dict[str, Any]]], out: Path, meta: dict[str, Any]
) -> str:
    """Write ``results.json``, ``table.md`` and ``forgetting.png`` to ``out``; return the table."""
    out.mkdir(parents=True, exist_ok=True)
    rows = aggregate_rows(reports)
    plot_seeds(reports, out / "forgetting.png")
    diffs = [d for k in ("domain_gain_pct", "retention_loss_pct") for d in differences(rows, k)]
    results = {**meta, "rows": rows, "differences": diffs, "reports": reports}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    text = table(rows)
    (out / "table.md").write_text(text)
    return text
