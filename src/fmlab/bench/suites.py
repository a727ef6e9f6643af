"""Named benchmark suites. ``gpu``: everything issue 8 asks of one H100/H200, in priority order
(results are written after each case, so a run cut short keeps what it finished)."""

from __future__ import annotations

import dataclasses

from fmlab.bench.setup import Case

__all__ = ["SUITES", "shrink"]

# 32k vocabulary: the "124M" preset is then GPT-2-small sized (DESIGN.md §6 anchors)
_124M = dict(preset="124m", batch_size=16, seq_len=1024, vocab_size=32000, warmup=5, steps=20)
_1B = dict(preset="1b", batch_size=8, seq_len=1024, vocab_size=32000, warmup=3, steps=10)

SUITES: dict[str, list[Case]] = {
    "gpu": [
        # 124M pre-training: eager (target ≥0.99× raw), then compile + fused AdamW + clipping
        Case(method="pretrain", **_124M),
        Case(method="pretrain", compile=True, fused=True, **_124M),
        # the same without the per-step host syncs of the NaN guard (float(loss), isfinite of the
        # grad norms) and the progress bar (.item() of train/loss): how much they cost fmlab
        Case(
            method="pretrain",
            compile=True,
            fused=True,
            overrides=[
                "callbacks.nan_guard=null",
                "callbacks.progress_bar=null",
                "+trainer.enable_progress_bar=false",
            ],
            tag="no-syncs",
            **_124M,
        ),
        # 1.1B: full fine-tuning vs LoRA r16 (speed and memory, eager), LoReFT at equal rank
        Case(method="full", fused=True, **_1B),
        Case(method="lora", rank=16, fused=True, **_1B),
        Case(method="loreft", rank=16, fused=True, **_1B),
        # 1.1B pre-training with compile + fused AdamW (target ≥57% MFU), LoRA with compile
        Case(method="pretrain", compile=True, fused=True, **_1B),
        Case(method="lora", rank=16, compile=True, fused=True, **_1B),
    ],
    "cpu": [
        Case(method=m, preset=p, batch_size=8, seq_len=128, warmup=3, steps=10)
        for p in ("tiny", "small")
        for m in ("pretrain", "full", "lora", "loreft")
    ],
}


def shrink(case: Case) -> Case:
    """The same case at a size any CPU runs in seconds (a dry run of a suite)."""
    return dataclasses.replace(
        case, preset="tiny", batch_size=2, seq_len=64, vocab_size=512, warmup=1, steps=2
    )
