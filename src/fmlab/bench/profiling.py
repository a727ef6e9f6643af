"""Where fmlab's per-step host time goes: cProfile of the measured window of each path.

One extra repetition of each path runs under ``cProfile`` switched on only between the end of
the warm-up and the last measured step, with the main thread's CPU clock as the timer (other
processes on a shared machine barely move it). Reported per step: Python function calls (a
deterministic count, the most load-proof figure), CPU time under the profiler (inflated by its
per-call cost, so compare paths, not absolute values), and fmlab's framework functions —
Lightning, callbacks, logging, data loading — with their cumulative time and calls per step.

    python scripts/benchmark.py --presets tiny --methods lora --batch-size 2 --seq-len 32 \\
        --threads 1 --profile benchmarks/profile
"""

from __future__ import annotations

import cProfile
import pstats
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fmlab.bench.loops import run_fmlab, run_raw
from fmlab.bench.measure import StepClock
from fmlab.bench.setup import Case, compose_case, make_dataset, make_models

__all__ = ["framework_rows", "profile_case"]

# where framework code lives (files of the model, torch and the optimizer are both paths' own)
FRAMEWORK = ("lightning/", "lightning_utilities/", "torchmetrics/", "torchdata/", "rich/", "fmlab/")


class _WindowProfile(StepClock):
    """A step clock that profiles exactly its measured window."""

    def __init__(self, warmup: int, steps: int, device: str) -> None:
        super().__init__(warmup, steps, device)
        self.profiler = cProfile.Profile(time.thread_time)

    def step_end(self) -> None:
        super().step_end()
        if self.done == self.warmup:
            self.profiler.enable()
        elif self.done == self.warmup + self.steps:
            self.profiler.disable()


def _calls(stats: pstats.Stats) -> int:
    return sum(nc for _, nc, _, _, _ in stats.stats.values())


def framework_rows(stats: pstats.Stats, steps: int, top: int = 20) -> list[dict[str, Any]]:
    """Framework functions per step: the largest self times, then every hook (``on_*``), ``log``
    and data fetch with its cumulative time (what removing it would save)."""
    rows = []
    for (file, line, name), (_, calls, selftime, cumtime, _) in stats.stats.items():
        if any(part in file for part in FRAMEWORK):
            short = file.split("site-packages/")[-1].split("/src/")[-1]
            rows.append(
                {
                    "function": f"{short}:{line}({name})",
                    "self_us_per_step": 1e6 * selftime / steps,
                    "cum_us_per_step": 1e6 * cumtime / steps,
                    "calls_per_step": calls / steps,
                    "hook": name.startswith("on_") or name in ("log", "__next__"),
                }
            )
    by_self = sorted(rows, key=lambda r: r["self_us_per_step"], reverse=True)[:top]
    hooks = sorted((r for r in rows if r["hook"]), key=lambda r: -r["cum_us_per_step"])[:top]
    return [{**r, "ranked_by": "self"} for r in by_self] + [
        {**r, "ranked_by": "cumulative"} for r in hooks
    ]


def profile_case(
    case: Case, out_dir: str | Path, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Profile one warmed-up repetition of each path; write ``<name>.{raw,fmlab}.prof``."""
    from fmlab.bench.harness import _quiet

    _quiet()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = compose_case(case)
    dataset = make_dataset(case)
    raw_model, fm_model = make_models(case, cfg)
    _, state = run_raw(None, raw_model, cfg, case, dataset)  # warm: lazy init, allocator
    _, module = run_fmlab(None, fm_model, cfg, case, dataset)
    summary: dict[str, Any] = {"case": case.name, "steps": case.steps}
    for path in ("raw", "fmlab"):
        clock = _WindowProfile(case.warmup, case.steps, case.device)
        if path == "raw":
            run_raw(state, raw_model, cfg, case, dataset, clock=clock)
        else:
            run_fmlab(module, fm_model, cfg, case, dataset, clock=clock)
        stats = pstats.Stats(clock.profiler)
        stats.dump_stats(out / f"{case.name.replace('/', '_')}.{path}.prof")
        summary[path] = {
            "python_calls_per_step": _calls(stats) / case.steps,
            "profiled_cpu_ms_per_step": 1e3 * stats.total_tt / case.steps,
        }
        if path == "fmlab":
            summary["framework"] = framework_rows(stats, case.steps)
    raw, fm = summary["raw"], summary["fmlab"]
    log(
        f"{case.name}: Python calls per step raw {raw['python_calls_per_step']:,.0f}, fmlab "
        f"{fm['python_calls_per_step']:,.0f}; CPU ms per step under the profiler "
        f"raw {raw['profiled_cpu_ms_per_step']:.2f}, fmlab {fm['profiled_cpu_ms_per_step']:.2f}"
    )
    for kind in ("self", "cumulative"):
        log(f"  fmlab's framework functions by {kind} time, µs per step (calls per step):")
        for row in summary["framework"]:
            if row["ranked_by"] == kind:
                us = row["self_us_per_step" if kind == "self" else "cum_us_per_step"]
                log(f"  {us:9.0f} ({row['calls_per_step']:5.1f}x)  {row['function']}")
    return summary
