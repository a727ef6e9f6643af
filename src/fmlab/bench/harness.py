"""Interleaved raw-vs-fmlab benchmark runs, their medians, MFU, a table and JSON.

Repetitions alternate ``raw, fmlab, raw, fmlab, …`` (the first path alternates too), so load from
other processes on a shared machine hits both paths alike; each repetition excludes its warm-up
steps and the medians are reported.
"""

from __future__ import annotations

import logging
import os
import statistics
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from fmlab.bench.flops import device_peak_flops, model_flops_per_token
from fmlab.bench.loops import RunResult, run_fmlab, run_raw
from fmlab.bench.setup import Case, compose_case, make_dataset, make_models
from fmlab.utils import write_json
from fmlab.utils.malloc import keep_freed_memory

__all__ = ["bench_case", "print_results", "run_suite", "summarize"]


def _quiet() -> None:
    # Lightning's per-fit banners and the "few batches" warnings would drown the table.
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*set_vital.*")


def summarize(
    case: Case, runs: Sequence[RunResult], flops_per_token: float, peak_flops: float
) -> dict[str, Any]:
    """Medians per path, the fmlab/raw ratio of medians, and MFU of each path."""
    row: dict[str, Any] = {
        "case": case.as_dict(),
        "model_flops_per_tok": flops_per_token,  # (the word "token" in a key is redacted)
        "peak_flops": peak_flops,
    }
    for path in ("raw", "fmlab"):
        mine = [r for r in runs if r.path == path]
        tps = statistics.median(r.tokens_per_s for r in mine)
        row[path] = {
            "tokens_per_s": tps,
            "step_ms": 1e3 * statistics.median(r.step_s for r in mine),
            "data_wait_pct": 100 * statistics.median(r.data_wait_share for r in mine),
            "peak_mem_mb": max(r.peak_mem_mb for r in mine),
            "peak_mem_kind": mine[0].peak_mem_kind,
            "mfu": tps * flops_per_token / peak_flops,
            "reps_tokens_per_s": [r.tokens_per_s for r in mine],
            "cpu_step_ms": 1e3 * statistics.median(r.cpu_step_s for r in mine),
            "faults_per_step": statistics.median(r.faults_per_step for r in mine),
            "reps_cpu_step_ms": [1e3 * r.cpu_step_s for r in mine],
        }
    row["ratio"] = row["fmlab"]["tokens_per_s"] / row["raw"]["tokens_per_s"]
    # contention from other processes only ever slows a run down: the best repetitions are the
    # least disturbed estimate on a shared machine (timeit's reasoning)
    best = {p: max(row[p]["reps_tokens_per_s"]) for p in ("raw", "fmlab")}
    row["ratio_best"] = best["fmlab"] / best["raw"]
    row["overhead_ms_per_step"] = row["fmlab"]["step_ms"] - row["raw"]["step_ms"]
    # the same from the main thread's CPU time: what load on a shared machine hardly moves
    row["overhead_cpu_ms_per_step"] = row["fmlab"]["cpu_step_ms"] - row["raw"]["cpu_step_ms"]
    return row


def bench_case(case: Case, reps: int = 3, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Build one case and run ``reps`` interleaved repetitions of each path."""
    _quiet()
    if torch.device(case.device).type == "cpu":
        # fmlab's Trainer sets this for CPU runs; the raw loop gets it too, from its first step
        keep_freed_memory()
    cfg = compose_case(case)
    dataset = make_dataset(case)
    raw_model, fm_model = make_models(case, cfg)
    # (B, T) tokens, all of them processed: FLOPs per token of the method's trainable share
    flops = model_flops_per_token(raw_model, case.seq_len)
    dtype = torch.bfloat16 if case.precision.startswith("bf16") else torch.float32
    peak = device_peak_flops(case.device, dtype)
    raw_state = module = None
    runs: list[RunResult] = []
    for i in range(reps):
        for path in ("raw", "fmlab") if i % 2 == 0 else ("fmlab", "raw"):
            if path == "raw":
                result, raw_state = run_raw(raw_state, raw_model, cfg, case, dataset)
            else:
                result, module = run_fmlab(module, fm_model, cfg, case, dataset)
            runs.append(result)
            log(f"  {case.name} rep {i + 1}/{reps} {path}: {result.tokens_per_s:,.0f} tok/s")
    del raw_state, module
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return summarize(case, runs, flops, peak)


def print_results(rows: Sequence[dict[str, Any]], title: str = "fmlab vs raw loop") -> None:
    """A rich table: one line per case."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in (
        "case",
        "device",
        "raw tok/s",
        "fmlab tok/s",
        "fmlab/raw",
        "step ms raw/fm",
        "CPU ms raw/fm",
        "data wait %",
        "peak MiB raw/fm",
        "MFU raw/fm",
    ):
        table.add_column(col, justify="left" if col == "case" else "right")
    for row in rows:
        raw, fm, case = row["raw"], row["fmlab"], row["case"]
        table.add_row(
            case["name"],
            case["device"],
            f"{raw['tokens_per_s']:,.0f}",
            f"{fm['tokens_per_s']:,.0f}",
            f"{row['ratio']:.3f}",
            f"{raw['step_ms']:.1f} / {fm['step_ms']:.1f}",
            f"{raw['cpu_step_ms']:.1f} / {fm['cpu_step_ms']:.1f}",
            f"{raw['data_wait_pct']:.1f} / {fm['data_wait_pct']:.1f}",
            f"{raw['peak_mem_mb']:.0f} / {fm['peak_mem_mb']:.0f}",
            f"{100 * raw['mfu']:.1f}% / {100 * fm['mfu']:.1f}%",
        )
    console = Console()
    console.width = max(console.width, 170)  # one line per case, also in a narrow log
    console.print(table)
    for row in rows:
        console.print(
            f"{row['case']['name']}: overhead per step {row['overhead_ms_per_step']:.2f} ms wall, "
            f"{row['overhead_cpu_ms_per_step']:.2f} ms main-thread CPU (medians)"
        )


def device_info(device: str) -> dict[str, Any]:
    """What the numbers were measured on."""
    import platform

    info = {
        "device": device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_avg_start": list(os.getloadavg()),  # 1, 5, 15 minutes: other processes' load
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    else:
        name = platform.processor() or platform.machine()
        cpuinfo = Path("/proc/cpuinfo")
        if cpuinfo.is_file():
            for line in cpuinfo.read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        info["cpu"] = f"{name}, {os.cpu_count()} cores"
    return info


def run_suite(
    cases: Sequence[Case],
    reps: int = 3,
    json_path: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Benchmark every case; write ``{"device": …, "results": [...]}`` as JSON (after each case,
    so a run cut short keeps what it measured) and print the table."""
    report: dict[str, Any] = {"device": device_info(cases[0].device), "results": []}
    for case in cases:
        report["results"].append(bench_case(case, reps=reps, log=log))
        report["device"]["load_avg_end"] = list(os.getloadavg())
        if json_path:
            write_json(json_path, report)
    print_results(report["results"])
    return report
