"""Per-step training losses and final weights of fmlab's training path, for bitwise checks.

A change that is meant to cut overhead must not change numerics: record before the change, check
after it (exit status 1 and the first differing step on any difference)::

    python -m fmlab.bench.losses --out /tmp/losses_before.json
    python -m fmlab.bench.losses --check /tmp/losses_before.json

Each case trains the benchmark's model and rows (:mod:`fmlab.bench.setup`) through
``trainer.fit`` with the callbacks and logger ``fmlab-train`` builds, gradient clipping and the NaN
guard on, LoRA with dropout (so the global RNG stream is part of what is compared). Recorded:
every step's loss and a SHA-256 of the final weights, as exact hex strings. Results are only
comparable on the same machine, torch build and thread count.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch

from fmlab.bench.setup import BenchData, Case, compose_case, make_dataset, make_models
from fmlab.workflow import build_module, build_trainer

__all__ = ["compare", "main", "record"]

# training steps per case; batch 4x64 keeps each case at a few seconds on one CPU core
CASES = [
    Case(
        method=m,
        preset="tiny",
        batch_size=4,
        seq_len=64,
        vocab_size=512,
        warmup=1,
        steps=24,
        overrides=["callbacks.progress_bar=null", "+trainer.enable_progress_bar=false"],
    )
    for m in ("pretrain", "full", "lora", "loreft")
]


class _Losses(L.Callback):
    def __init__(self) -> None:
        self.losses: list[str] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]).hex())


def _digest(module: torch.nn.Module) -> str:
    sha = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        sha.update(name.encode())
        sha.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()


def record(case: Case) -> dict[str, Any]:
    """Train one case through fmlab's path; its per-step losses and final-weights digest."""
    cfg = compose_case(case)
    _, model = make_models(case, cfg)
    module = build_module(cfg, model)
    trainer = build_trainer(cfg)
    losses = _Losses()
    trainer.callbacks.append(losses)
    trainer.fit(module, datamodule=BenchData(make_dataset(case), case))
    return {"case": case.name, "losses": losses.losses, "weights_sha256": _digest(module)}


def compare(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Differences between two recordings (empty: bitwise equal)."""
    problems = []
    for old, new in zip(before["results"], after["results"], strict=True):
        name = old["case"]
        for step, (a, b) in enumerate(zip(old["losses"], new["losses"], strict=True)):
            if a != b:
                problems.append(f"{name}: loss at step {step} {a} != {b}")
                break
        if old["weights_sha256"] != new["weights_sha256"]:
            problems.append(f"{name}: final weights differ")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fmlab.bench.losses", description=__doc__)
    p.add_argument("--out", help="write the recording here (JSON)")
    p.add_argument("--check", help="compare with this earlier recording; exit 1 on a difference")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (results depend)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from fmlab.bench.harness import _quiet

    _quiet()
    report = {
        "torch": torch.__version__,
        "threads": args.threads,
        "results": [record(case) for case in CASES],
    }
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    if args.check:
        problems = compare(json.loads(Path(args.check).read_text()), report)
        for line in problems:
            print(line)
        status = "DIFFERENT" if problems else "bitwise equal"
        print(f"{len(CASES)} cases x {CASES[0].warmup + CASES[0].steps} steps: {status}")
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
