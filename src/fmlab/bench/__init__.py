"""Benchmarks: fmlab's training path against a plain PyTorch loop, FLOPs and MFU.

    from fmlab.bench import Case, run_suite
    run_suite([Case(method="lora", preset="small")], reps=3, json_path="bench.json")

``scripts/benchmark.py`` is the command line; ``scripts/gpu_bench.sh`` the GPU suite. The
harness is imported lazily: the training callbacks import :mod:`fmlab.bench.flops` only.
"""

from typing import Any

from fmlab.bench.flops import (
    device_peak_flops,
    flops_per_token,
    matmul_params,
    measure_cpu_peak_flops,
    model_flops_per_token,
)

__all__ = [
    "METHODS",
    "Case",
    "bench_case",
    "device_peak_flops",
    "flops_per_token",
    "matmul_params",
    "measure_cpu_peak_flops",
    "model_flops_per_token",
    "print_results",
    "run_suite",
    "summarize",
]

_LAZY = {
    "METHODS": "fmlab.bench.setup",
    "Case": "fmlab.bench.setup",
    "bench_case": "fmlab.bench.harness",
    "print_results": "fmlab.bench.harness",
    "run_suite": "fmlab.bench.harness",
    "summarize": "fmlab.bench.harness",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fmlab.bench' has no attribute {name!r}")
