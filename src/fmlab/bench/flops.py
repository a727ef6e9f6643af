"""Model FLOPs per token (PaLM convention) and device peak FLOP/s, for MFU.

MFU = achieved model FLOP/s / device peak FLOP/s, where model FLOPs count the matmuls a training
step must do (PaLM, Chowdhery et al. 2022, appendix B): ``6N + 12·L·H·Q·T`` per token, N the
parameters that take part in matmuls, L layers, H heads, Q head size, T sequence length.
Recomputation (activation checkpointing) and padding are not counted: they are overhead.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = [
    "GPU_PEAK_FLOPS",
    "attention_shape",
    "device_peak_flops",
    "flops_counter",
    "flops_per_token",
    "matmul_params",
    "measure_cpu_peak_flops",
    "model_flops_per_token",
]

# Dense (no sparsity) tensor-core peaks in FLOP/s from the vendor datasheets, by a substring of
# torch.cuda.get_device_name(); the first match wins, so more specific names come first.
GPU_PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989.4e12, "fp32": 66.9e12},
    "H100 PCIe": {"bf16": 756.0e12, "fp32": 51.2e12},
    "H100 NVL": {"bf16": 835.0e12, "fp32": 60.0e12},
    "H100": {"bf16": 989.4e12, "fp32": 66.9e12},  # SXM ("NVIDIA H100 80GB HBM3")
    "A100": {"bf16": 312.0e12, "fp32": 19.5e12},
    "L40S": {"bf16": 362.1e12, "fp32": 91.6e12},
    "L4": {"bf16": 121.0e12, "fp32": 30.3e12},
    "A10": {"bf16": 125.0e12, "fp32": 31.2e12},
}


def flops_per_token(
    n_params: float, n_layers: int, n_heads: int, head_dim: int, seq_len: int
) -> float:
    """Training FLOPs per token with every weight trained: ``6N + 12·L·H·Q·T``.

    6N: 2N for the forward matmuls, 4N for the backward (gradients of activations and weights).
    12·L·H·Q·T: attention scores and weighted values (2 · 2·H·Q·T per layer forward), times 3.

    Example: GPT-2 124M (N = 123.65M without position embeddings), T = 1024 → 8.55e8.
    """
    return 6.0 * n_params + 12.0 * n_layers * n_heads * head_dim * seq_len


def matmul_params(model: nn.Module) -> tuple[int, int]:
    """(all, trainable) parameters that take part in matmuls, each tensor counted once.

    Embedding tables are lookups, not matmuls, and are left out, except one tied to the output
    head (GPT-2, tied Llama), which is counted once as the head.
    """
    get_out = getattr(model, "get_output_embeddings", None)
    head = get_out() if callable(get_out) else None
    head_ids = {id(head.weight)} if head is not None and hasattr(head, "weight") else set()
    lookups = {
        id(m.weight)
        for m in model.modules()
        if isinstance(m, nn.Embedding) and id(m.weight) not in head_ids
    }
    total = trainable = 0
    seen: set[int] = set()
    for p in model.parameters():
        if id(p) in seen or id(p) in lookups:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return total, trainable


def attention_shape(model: nn.Module) -> tuple[int, int, int]:
    """(layers, heads, head size) from a HF config (Llama-style or GPT-2-style field names)."""
    cfg: Any = getattr(model, "config", None)
    if cfg is None:
        raise ValueError(f"{type(model).__name__} has no HF config: cannot count attention FLOPs")
    cfg = getattr(cfg, "get_text_config", lambda: cfg)()
    layers = getattr(cfg, "num_hidden_layers", None) or cfg.n_layer
    heads = getattr(cfg, "num_attention_heads", None) or cfg.n_head
    hidden = getattr(cfg, "hidden_size", None) or cfg.n_embd
    head_dim = getattr(cfg, "head_dim", None) or hidden // heads
    return int(layers), int(heads), int(head_dim)


def model_flops_per_token(model: nn.Module, seq_len: int) -> float:
    """Training FLOPs per token of ``model`` (a HF causal LM, a PEFT or ReFT wrapper of one).

    With frozen weights (LoRA, ReFT) the backward still propagates activation gradients through
    every weight (2N) but computes weight gradients only for trainable ones: ``4N + 2N_train``.
    With everything trainable this is the PaLM ``6N`` of :func:`flops_per_token`.
    """
    return flops_counter(model)(seq_len)


def flops_counter(model: nn.Module) -> Callable[[int], float]:
    """:func:`model_flops_per_token` as a function of the sequence length, with the model's
    modules walked once, now (a LoRA model has hundreds: ~ms of Python)."""
    total, trainable = matmul_params(model)
    layers, heads, head_dim = attention_shape(model)
    frozen_saving = 2.0 * (total - trainable)  # weight gradients not computed

    def per_token(seq_len: int) -> float:
        return flops_per_token(total, layers, heads, head_dim, seq_len) - frozen_saving

    return per_token


@functools.lru_cache(maxsize=8)
def measure_cpu_peak_flops(n: int = 1024, seconds: float = 0.2, threads: int = 0) -> float:
    """Achievable fp32 FLOP/s of this CPU: the best of 3 timed ``n×n`` matmuls loops.

    A measured ceiling, not the datasheet peak (which needs core count, clock and SIMD width that
    Python cannot read portably); it is what a dense matmul reaches with torch's current thread
    count (``threads``: only part of the cache key), so CPU MFU reads "share of the matmul
    roofline". Cached per process.
    """
    # a private generator: training calls this after seeding, and must draw the same numbers
    # with or without it
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    a @ b  # warm-up: thread pool, allocator
    best = 0.0
    for _ in range(3):
        reps, t0 = 0, time.perf_counter()
        while (dt := time.perf_counter() - t0) < seconds / 3 or reps == 0:
            a @ b
            reps += 1
        best = max(best, 2.0 * n**3 * reps / dt)
    return best


def device_peak_flops(device: torch.device | str, dtype: torch.dtype = torch.bfloat16) -> float:
    """Peak FLOP/s MFU is measured against, on ``device`` for matmuls in ``dtype``.

    ``FMLAB_PEAK_FLOPS`` (a number, e.g. ``989e12``) overrides. CUDA: the datasheet table
    :data:`GPU_PEAK_FLOPS` (``bf16`` for 16-bit dtypes, else ``fp32``). CPU: a matmul measured
    once per process (:func:`measure_cpu_peak_flops`).

    Raises:
        ValueError: An unknown GPU without ``FMLAB_PEAK_FLOPS``.
    """
    if env := os.environ.get("FMLAB_PEAK_FLOPS"):
        return float(env)
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        kind = "bf16" if dtype in (torch.bfloat16, torch.float16) else "fp32"
        for key, peaks in GPU_PEAK_FLOPS.items():
            if key in name:
                return peaks[kind]
        raise ValueError(f"no peak FLOP/s known for GPU {name!r}: set FMLAB_PEAK_FLOPS")
    return measure_cpu_peak_flops(threads=torch.get_num_threads())
