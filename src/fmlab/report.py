"""``fmlab-report <sweep dir>``: one table of a sweep, selection on validation, test for the winner.

1. Collects every run's ``summary.json`` (failed runs included, with their error).
2. Groups runs by configuration over seeds: mean ± std (n) of every ``val/`` metric.
3. Selects the best configuration(s) by a validation metric only (``--metric``, default the
   sweep's ``optimized_metric``).
4. Evaluates the test split for the selected configuration(s) only, once, through fmlab-eval on
   each run's evaluated checkpoint. Test numbers that runs computed during the sweep
   (``run_test=true``) are ignored and reported as such.

Writes ``<sweep dir>/report/``: ``report.md``, ``runs.csv``, ``configs.csv``, ``test.csv``,
``report.json``, ``val_by_config.png``, ``learning_curves.png``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from fmlab.cli import guard
from fmlab.evaluation.plots import plot_learning_curves, plot_metric_by_config
from fmlab.evaluation.report import (
    collect_runs,
    group_runs,
    higher_is_better,
    markdown_table,
    mean_std,
    select_best,
    write_csv,
)
from fmlab.utils import atomic_write_text, write_json

__all__ = ["main", "report"]

log = logging.getLogger(__name__)
INFO = ("params_trainable", "tokens_per_s")  # shown as plain means


def _default_metric(rows: Sequence[dict[str, Any]]) -> str:
    """The ``optimized_metric`` the sweep's runs were configured with (else ``val/loss``)."""
    found = set()
    for r in rows:
        config = Path(r["run_dir"]) / "config.yaml"
        if config.is_file():
            found.add((yaml.safe_load(config.read_text()) or {}).get("optimized_metric"))
    found.discard(None)
    return found.pop() if len(found) == 1 else "val/loss"


def _test_runs(groups: Sequence[dict[str, Any]], out: Path, overrides: Sequence[str]) -> list:
    """fmlab-eval (validation + test) on the evaluated checkpoint of every run of ``groups``."""
    from fmlab.config import compose_config
    from fmlab.eval import evaluate

    results = []
    for g in groups:
        for r in g["runs"]:
            ckpt = r.get("evaluated_checkpoint")
            if not ckpt or not Path(ckpt).is_file():
                raise FileNotFoundError(
                    f"{r['run_dir']}: its evaluated checkpoint {ckpt!r} is gone; "
                    "the test split of this run cannot be evaluated"
                )
            target = out / "test" / r["run"].replace("/", "_")
            cfg = compose_config(
                "eval", [f"ckpt_path={ckpt}", "run_test=true", *overrides], output_dir=target
            )
            s = evaluate(cfg)
            results.append(
                {
                    "config": g["config"],
                    "run": r["run"],
                    "seed": r["seed"],
                    "evaluated": s["evaluated"],
                    **{k: v for k, v in s.items() if k.startswith(("test/", "val/"))},
                    "eval_dir": str(target),
                }
            )
    return results


def report(
    sweep_dir: str | Path,
    *,
    metric: str | None = None,
    maximize: bool | None = None,
    top: int = 1,
    run_test: bool = True,
    eval_overrides: Sequence[str] = (),
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Build the report of ``sweep_dir``; returns what ``report.json`` holds.

    Args:
        sweep_dir: A Hydra multirun directory (or any directory of run directories).
        metric: Validation metric to select by (default: the runs' ``optimized_metric``).
        maximize: Direction (default: minimise losses/perplexities, maximise the rest).
        top: How many configurations to select (and test).
        run_test: Evaluate the test split of the selected configuration(s).
        eval_overrides: Extra fmlab-eval overrides for the test evaluation.
        out_dir: Where to write (default ``<sweep_dir>/report``).
    """
    sweep = Path(sweep_dir)
    rows = collect_runs(sweep)
    metric = metric or _default_metric(rows)
    up = higher_is_better(metric) if maximize is None else maximize
    ok = [r for r in rows if r["status"] == "ok"]
    val_metrics = sorted({k for r in ok for k in r if k.startswith("val/")})
    groups = group_runs(rows, val_metrics)
    for g in groups:
        g.update({k: mean_std(r.get(k) for r in g["runs"])[0] for k in INFO})
    selected = select_best(groups, metric, maximize=up, top=top)
    chosen = [g["config"] for g in selected]
    leaked = [r["run"] for r in ok if any(k.startswith("test/") for k in r)]
    out = Path(out_dir) if out_dir else sweep / "report"
    out.mkdir(parents=True, exist_ok=True)
    for g in groups:
        g["n"], g["failed_n"] = len(g["runs"]), len(g["failed"])
        g["selected"] = "yes" if g["config"] in chosen else ""
    tests = _test_runs(selected, out, eval_overrides) if run_test else []
    test_metrics = sorted({k for t in tests for k in t if k.startswith("test/")})
    test_rows = list(tests)
    for config in chosen:
        mine = [t for t in tests if t["config"] == config]
        if mine:
            summary = {k: mean_std(t.get(k) for t in mine) for k in test_metrics}
            test_rows.append({"config": config, "run": "mean ± std", **summary})

    run_cols = ["run", "config", "seed", "status", *val_metrics, *INFO, "error"]
    group_cols = ["config", "selected", *val_metrics, "n", "failed_n", *INFO]
    test_cols = ["config", "run", "seed", *test_metrics]
    write_csv(out / "runs.csv", rows, run_cols)
    write_csv(out / "configs.csv", groups, group_cols)
    if tests:
        write_csv(out / "test.csv", test_rows, test_cols)
    plots = {
        "val_by_config": str(
            plot_metric_by_config(groups, metric, out / "val_by_config.png", chosen)
        )
    }
    curves = plot_learning_curves(ok, metric, out / "learning_curves.png")
    if curves:
        plots["learning_curves"] = str(curves)

    failed = [r for r in rows if r["status"] != "ok"]
    common = rows[0]["common"] if rows else ""
    md = [
        f"# Sweep report: `{sweep}`",
        "",
        f"{len(rows)} runs: {len(ok)} ok, {len(failed)} failed · "
        f"common overrides: `{common or '-'}`",
        "",
        "## Validation (every configuration; the only numbers used for selection)",
        "",
        f"Selection: **{metric}**, {'higher' if up else 'lower'} is better, mean over seeds; "
        f"selected: {', '.join(f'`{c}`' for c in chosen)}.",
        "",
        markdown_table(groups, group_cols),
        "",
        "## Test (selected configuration only, evaluated once after selection by fmlab-eval)",
        "",
        markdown_table(test_rows, test_cols) if tests else "Not evaluated (--no-test).",
    ]
    if leaked:
        md += [
            "",
            f"Note: {len(leaked)} runs computed test metrics during the sweep (run_test=true); "
            "this report ignores them. Sweep with run_test=false.",
        ]
    if failed:
        md += [
            "",
            "## Failed (or unfinished) runs",
            "",
            markdown_table(failed, ["run", "config", "seed", "error"]),
        ]
    md += ["", "Plots: " + ", ".join(f"`{Path(p).name}`" for p in plots.values())]
    text = "\n".join(md) + "\n"
    atomic_write_text(out / "report.md", text)
    result = {
        "sweep_dir": str(sweep),
        "metric": metric,
        "maximize": up,
        "selected": chosen,
        "n_runs": len(rows),
        "n_failed": len(failed),
        "groups": [
            {k: v for k, v in g.items() if k not in ("runs", "failed")}
            | {"runs": [r["run"] for r in g["runs"]], "failed": [r["run"] for r in g["failed"]]}
            for g in groups
        ],
        "test": tests,
        "ignored_sweep_test_metrics": leaked,
        "failed": [{"run": r["run"], "error": r.get("error")} for r in failed],
        "plots": plots,
        "markdown": text,
    }
    write_json(out / "report.json", result)
    return result


@guard
def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point (``fmlab-report``)."""
    parser = argparse.ArgumentParser(prog="fmlab-report", description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", help="a multirun directory, e.g. logs/train/multiruns/<time>")
    parser.add_argument("--metric", help="validation metric to select by (val/...)")
    direction = parser.add_mutually_exclusive_group()
    direction.add_argument("--maximize", dest="maximize", action="store_true", default=None)
    direction.add_argument("--minimize", dest="maximize", action="store_false")
    parser.add_argument("--top", type=int, default=1, help="configurations to select and test")
    parser.add_argument("--no-test", dest="run_test", action="store_false")
    parser.add_argument(
        "--eval-override", action="append", default=[], help="extra fmlab-eval override"
    )
    parser.add_argument("--out", help="output directory (default: <sweep_dir>/report)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        result = report(
            args.sweep_dir,
            metric=args.metric,
            maximize=args.maximize,
            top=args.top,
            run_test=args.run_test,
            eval_overrides=args.eval_override,
            out_dir=args.out,
        )
    except (FileNotFoundError, ValueError) as err:
        parser.exit(2, f"fmlab-report: {err}\n")
    print(result["markdown"])
    print(f"written: {Path(result['plots']['val_by_config']).parent}")


if __name__ == "__main__":
    main()
