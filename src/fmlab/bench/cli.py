"""Command line of ``scripts/benchmark.py``: a grid of cases or the GPU suite, table + JSON + MD."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fmlab.bench.harness import run_suite
from fmlab.bench.setup import METHODS, Case
from fmlab.bench.suites import SUITES, shrink
from fmlab.utils import atomic_write_text, write_json

__all__ = ["main", "markdown_table", "parse_args"]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="benchmark.py",
        description="fmlab's training path vs a plain PyTorch loop: tokens/s, ratio, MFU, memory.",
    )
    p.add_argument("--suite", choices=sorted(SUITES), help="a named list of cases (else a grid)")
    p.add_argument("--methods", default="pretrain,lora", help=f"comma list of {sorted(METHODS)}")
    p.add_argument("--presets", default="tiny", help="comma list of model presets")
    p.add_argument("--device", default=None, help="cpu or cuda[:i] (default: cuda if available)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--rank", type=int, default=8, help="LoRA r / ReFT rank")
    p.add_argument("--steps", type=int, default=10, help="measured steps per repetition")
    p.add_argument("--warmup", type=int, default=3, help="excluded steps per repetition")
    p.add_argument("--reps", type=int, default=3, help="repetitions of each path (interleaved)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (both paths)")
    p.add_argument("--fused", action="store_true", help="fused AdamW (CUDA; both paths)")
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave)")
    p.add_argument("--tiny", action="store_true", help="dry run: every case at preset tiny, T=64")
    p.add_argument("--json", default="benchmarks/results.json", help="output JSON path")
    p.add_argument("--markdown", default=None, help="also write a markdown table here")
    p.add_argument(
        "--profile",
        default=None,
        metavar="DIR",
        help="then profile each case's measured window (fmlab.bench.profiling) into DIR",
    )
    p.add_argument("overrides", nargs="*", help="extra fmlab config overrides (key=value)")
    return p.parse_args(argv)


def grid(args: argparse.Namespace, device: str) -> list[Case]:
    common = dict(
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        vocab_size=args.vocab_size,
        rank=args.rank,
        warmup=args.warmup,
        steps=args.steps,
        device=device,
        compile=args.compile,
        fused=args.fused,
        grad_clip=args.grad_clip,
        num_workers=args.num_workers,
        overrides=list(args.overrides),
    )
    return [
        Case(method=m, preset=p, **common)
        for p in args.presets.split(",")
        for m in args.methods.split(",")
    ]


def markdown_table(report: dict[str, Any]) -> str:
    """The results as a GitHub markdown table (what ``benchmarks/README.md`` quotes)."""
    dev = report["device"]
    load = dev.get("load_avg_start"), dev.get("load_avg_end")
    lines = [
        f"Device: {dev.get('gpu') or dev.get('cpu')} ({dev['device']}, torch {dev['torch']}, "
        f"{dev['threads']} threads)"
        + (f", load average {load[0][0]:.1f} → {load[1][0]:.1f}" if all(load) else ""),
        "",
        "| case | B×T | raw tok/s | fmlab tok/s | fmlab/raw | step ms raw / fmlab "
        "| CPU ms raw / fmlab | data wait % | peak MiB raw / fmlab | MFU raw / fmlab |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["results"]:
        c, raw, fm = row["case"], row["raw"], row["fmlab"]
        lines.append(
            f"| {c['name']} | {c['batch_size']}×{c['seq_len']} | {raw['tokens_per_s']:,.0f} "
            f"| {fm['tokens_per_s']:,.0f} | {row['ratio']:.3f} "
            f"| {raw['step_ms']:.1f} / {fm['step_ms']:.1f} "
            f"| {raw['cpu_step_ms']:.1f} / {fm['cpu_step_ms']:.1f} "
            f"| {raw['data_wait_pct']:.2f} / {fm['data_wait_pct']:.2f} "
            f"| {raw['peak_mem_mb']:,.0f} / {fm['peak_mem_mb']:,.0f} "
            f"| {100 * raw['mfu']:.1f}% / {100 * fm['mfu']:.1f}% |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.suite:
        cases = [dataclasses.replace(c, device=device) for c in SUITES[args.suite]]
    else:
        cases = grid(args, device)
    if args.tiny:
        cases = [shrink(c) for c in cases]
    reps = 1 if args.tiny else args.reps
    report = run_suite(cases, reps=reps, json_path=args.json)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.markdown, markdown_table(report))
    if args.profile:
        from fmlab.bench.profiling import profile_case

        profiles = [profile_case(case, args.profile) for case in cases]
        write_json(Path(args.profile) / "profile.json", profiles)
        report["profiles"] = profiles
    return report
