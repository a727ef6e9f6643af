"""A chain of releases over a corpus with temporal drift: update with or without replay, or retrain.

On the drift corpus (:mod:`fmlab.evaluation.drift_corpus`), release ``k`` has the data cutoff
at the end of quarter ``k``. Four ways to keep a model current, every model evaluated on the
held-out set of every quarter (``val/period/<q>/ppl``, the same sets and tokenizer for all):

- ``frozen``: release 1 (trained from scratch on quarter 1), never updated;
- ``no replay``: each release continues the previous one on the new quarter only;
- ``replay``: as ``no replay``, with a share of the rows replayed from the previous release's data;
- ``retrain``: release ``k`` trained from scratch on quarters ``1..k`` for the same total tokens
  as the update chain spent up to ``k`` (release 1's tokenizer, so perplexities compare).

Compute per model: training tokens, FLOPs (``6 * parameters * tokens``), CPU seconds of the whole
run and fit wall time (which swings with other jobs on a shared machine);
``cumulative`` adds what the arm spent on earlier releases (an update costs its own tokens, a
retraining all of them again).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fmlab.data.pipeline.dates import period_bounds
from fmlab.data.pipeline.engine import cpu_seconds
from fmlab.evaluation.drift_corpus import write_drift_corpus
from fmlab.evaluation.periods import period_values

__all__ = ["ARMS", "StudyPlan", "plot_study", "run_study", "study_rows", "write_study"]

ARMS = ("frozen", "no replay", "replay", "retrain")


@dataclass(frozen=True)
class StudyPlan:
    """Sizes of the study (the defaults: about 380 CPU seconds with one torch thread)."""

    quarters: int = 5  # of data; the last ones are the future for early releases
    releases: int = 4
    docs_per_quarter: int = 300
    first_steps: int = 200  # release 1 (and the from-scratch part of every retraining)
    update_steps: int = 100
    replay: float = 0.1
    block_size: int = 64
    batch_size: int = 16
    vocab_size: int = 1024
    seed: int = 0


def _quarters(n: int, start: str = "2023Q1") -> list[str]:
    year, q = int(start[:4]), int(start[5:])
    out = []
    for _ in range(n):
        out.append(f"{year}Q{q}")
        year, q = (year + 1, 1) if q == 4 else (year, q + 1)
    return out


def _common(plan: StudyPlan, corpus: Path, steps: int) -> list[str]:
    return [
        "print_config=false",
        "callbacks=continual",
        "callbacks.progress_bar=null",
        "callbacks.forgetting.kl=false",
        f"data.sources=[{{path: '{corpus}', date_field: date}}]",
        f"data.block_size={plan.block_size}",
        f"data.batch_size={plan.batch_size}",
        "data.val_fraction=0.1",
        "data.test_fraction=0.05",
        "data.periods=quarter",
        "data.dedup=null",  # templated news: near-duplicates by design
        "data.decontaminate=null",  # (and shared 13-grams between quarters)
        f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={steps}",
        f"callbacks.checkpoint_last.every_n_train_steps={steps}",
        "trainer.log_every_n_steps=10",
        "export.which=last",
        "run_test=false",
        f"seed={plan.seed}",
    ]


def _record(summary: dict[str, Any], cpu_s: float) -> dict[str, Any]:
    tokens = int(summary["tokens_seen"])
    return {
        "ppl": period_values(summary),
        "tokens": tokens,
        "flops": 6 * int(summary["params_total"]) * tokens,
        "fit_s": round(float(summary["fit_s"]), 1),
        "cpu_s": round(cpu_s, 1),
    }


def run_study(
    plan: StudyPlan,
    runs: Path,
    train_fn: Callable[[list[str], Path], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Train every model of the study under ``runs``; return the per-model records.

    Args:
        plan: Sizes.
        runs: Where the corpus and the run directories go.
        train_fn: ``(overrides, output_dir) → summary`` (default: :func:`fmlab.train.train`
            on the composed config).
    """
    if train_fn is None:
        from fmlab.config import compose_config
        from fmlab.train import train

        def train_fn(overrides: list[str], out: Path) -> dict[str, Any]:
            return train(compose_config("train", overrides, output_dir=out))

    def run(overrides: list[str], out: Path) -> dict[str, Any]:
        """One model: its record, with the CPU seconds of the whole run (preparation,
        training, evaluation, export): unlike wall time, about the same on a busy machine."""
        c0 = cpu_seconds()
        summary = train_fn(overrides, out)
        return {**_record(summary, cpu_seconds() - c0), "export": summary["paths"]["export_dir"]}

    if plan.releases > plan.quarters:
        raise ValueError("StudyPlan: more releases than quarters of data")
    runs.mkdir(parents=True, exist_ok=True)
    quarters = _quarters(plan.quarters)
    corpus = write_drift_corpus(
        runs / "news.jsonl",
        periods=plan.quarters,
        docs_per_period=plan.docs_per_quarter,
        seed=plan.seed,
    )
    cutoffs = [period_bounds(q)[1] for q in quarters[: plan.releases]]
    t0 = time.time()
    first = run(
        [
            "data=release",
            f"data.until={cutoffs[0]}",
            f"tokenizer.vocab_size={plan.vocab_size}",
            *_common(plan, corpus, plan.first_steps),
        ],
        runs / "release1",
    )
    tokenizer = first["export"]
    models: dict[str, list[dict[str, Any]]] = {arm: [first] for arm in ARMS}
    for arm, replay in (("no replay", 0.0), ("replay", plan.replay)):
        parent = tokenizer
        for k in range(2, plan.releases + 1):
            rec = run(
                [
                    "experiment=continual_update",
                    f"init_from={parent}",
                    f"data.until={cutoffs[k - 1]}",
                    f"data.replay={replay}",
                    *_common(plan, corpus, plan.update_steps),
                ],
                runs / f"{arm.replace(' ', '_')}{k}",
            )
            models[arm].append(rec)
            parent = rec["export"]
    for k in range(2, plan.releases + 1):
        steps = plan.first_steps + (k - 1) * plan.update_steps  # the chain's tokens up to k
        rec = run(
            [
                "data=release",
                f"data.until={cutoffs[k - 1]}",
                "tokenizer=pretrained",
                f"tokenizer.name_or_path={tokenizer}",
                *_common(plan, corpus, steps),
            ],
            runs / f"retrain{k}",
        )
        models["retrain"].append(rec)
    models["frozen"] = models["frozen"] * plan.releases  # release 1 at every release
    return {
        "plan": asdict(plan),
        "quarters": quarters,
        "cutoffs": cutoffs,
        "models": models,
        "wall_s": round(time.time() - t0, 1),
    }


def _cumulative(arm: str, recs: list[dict[str, Any]], key: str) -> list[float]:
    """What the arm has spent up to each release (frozen: release 1 only)."""
    out, total = [], 0.0
    for k, r in enumerate(recs):
        total += r[key] if (arm != "frozen" or k == 0) else 0.0
        out.append(total)
    return out


def study_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (arm, release): per-quarter perplexity, its mean over the quarters up to the
    release's cutoff (``past_mean``) and after it (``future_mean``), compute."""
    quarters = results["quarters"]
    rows = []
    for arm, recs in results["models"].items():
        tokens = _cumulative(arm, recs, "tokens")
        flops = _cumulative(arm, recs, "flops")
        wall = _cumulative(arm, recs, "fit_s")
        cpu = _cumulative(arm, recs, "cpu_s")
        for k, rec in enumerate(recs, 1):
            past = [rec["ppl"][q] for q in quarters[:k] if q in rec["ppl"]]
            future = [rec["ppl"][q] for q in quarters[k:] if q in rec["ppl"]]
            rows.append(
                {
                    "arm": arm,
                    "release": k,
                    **{q: rec["ppl"].get(q) for q in quarters},
                    "past_mean": sum(past) / len(past) if past else None,
                    "future_mean": sum(future) / len(future) if future else None,
                    "tokens": rec["tokens"] if arm != "frozen" or k == 1 else 0,
                    "cumulative_tokens": tokens[k - 1],
                    "cumulative_flops": flops[k - 1],
                    "cumulative_fit_s": wall[k - 1],
                    "cumulative_cpu_s": cpu[k - 1],
                }
            )
    return rows


def _table(rows: list[dict[str, Any]], quarters: list[str]) -> list[str]:
    head = ["arm", "release", *quarters, "mean ≤ cutoff", "tokens", "cumulative tokens"]
    head += ["cumulative FLOPs", "cumulative CPU s", "cumulative fit s (wall)"]
    out = ["| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * (len(head) - 2)]
    fmt = lambda v: "-" if v is None else f"{v:.2f}"
    for r in rows:
        cells = [r["arm"], str(r["release"]), *(fmt(r[q]) for q in quarters), fmt(r["past_mean"])]
        cells += [f"{r['tokens']:,}", f"{r['cumulative_tokens']:,.0f}"]
        cells += [f"{r['cumulative_flops']:.2e}", f"{r['cumulative_cpu_s']:.0f}"]
        cells.append(f"{r['cumulative_fit_s']:.0f}")
        out.append("| " + " | ".join(cells) + " |")
    return out


def plot_study(results: dict[str, Any], path: Path) -> Path:
    """Per-quarter perplexity after each release (one panel per release, one line per arm),
    and the mean over the quarters up to the cutoff against cumulative training tokens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quarters, rows = results["quarters"], study_rows(results)
    n = results["plan"]["releases"]
    fig, axes = plt.subplots(1, n + 1, figsize=(3.6 * (n + 1), 3.4))
    for k in range(1, n + 1):
        ax = axes[k - 1]
        for i, arm in enumerate(ARMS):
            r = next(r for r in rows if r["arm"] == arm and r["release"] == k)
            ax.plot(quarters, [r[q] for q in quarters], marker="o", ms=3, color=f"C{i}", label=arm)
        ax.axvspan(k - 0.5, len(quarters) - 0.5, color="0.92")  # the future of release k
        ax.set(title=f"after release {k}", xlabel="quarter", ylabel="held-out ppl", yscale="log")
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    ax = axes[-1]
    for i, arm in enumerate(ARMS):
        pts = [(r["cumulative_tokens"], r["past_mean"]) for r in rows if r["arm"] == arm]
        ax.plot(*zip(*pts), marker="o", ms=3, color=f"C{i}", label=arm)
    ax.set(xscale="log", yscale="log", xlabel="cumulative training tokens")
    ax.set_ylabel("mean ppl, quarters up to the cutoff")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_title("quality vs. compute", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_study(results: dict[str, Any], out: Path, stem: str = "continual-releases") -> str:
    """Write ``<stem>.json`` (results, rows and the table) and ``<stem>.png``; return the
    Markdown table (what the results page shows)."""
    out.mkdir(parents=True, exist_ok=True)
    rows = study_rows(results)
    table = "\n".join(_table(rows, results["quarters"])) + "\n"
    payload = {**results, "rows": rows, "table": table}
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=2))
    plot_study(results, out / f"{stem}.png")
    return table
