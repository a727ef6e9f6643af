"""The multi-task study (docs/results/multitask.md): logic (generative) and topic (classification
head), trained together vs. one after another; how much of the first task is forgotten.

    python scripts/multitask_study.py --out docs/multitask --seeds 1 2 3   # ~15 min per seed
    python scripts/multitask_study.py --base <export dir> --steps 200 method=lora

Pre-trains the default base model first unless ``--base`` is given. Runs the four conditions once
per seed (finished runs are reused) and writes ``results.json``, ``table.md`` (mean ± std over the
seeds) and ``study.png`` (see :mod:`fmlab.evaluation.multitask_study`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fmlab.evaluation.multitask_study import run_study, write_study
from fmlab.evaluation.seeds import default_base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/multitask"))
    parser.add_argument("--runs", type=Path, default=Path("logs/multitask_study"))
    parser.add_argument("--base", help="base model export dir (default: pre-train one)")
    parser.add_argument("--steps", type=int, default=400, help="N: steps per task stage")
    parser.add_argument("--first", default="logic")
    parser.add_argument("--second", default="topic")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--metric", action="append", default=[], help="task=metric compared")
    parser.add_argument("overrides", nargs="*", help="extra overrides for every run")
    args = parser.parse_args()
    base = args.base
    if base is None:  # the default pre-trained model (fmlab-train with no arguments)
        base = default_base(args.runs)
    metrics = {"logic": "exact_match", "topic": "accuracy", "count": "pearson"}
    metrics.update(dict(m.split("=", 1) for m in args.metric))
    per_seed = [
        run_study(
            base,
            args.runs,
            first=args.first,
            second=args.second,
            steps=args.steps,
            overrides=args.overrides,
            seed=seed,
        )
        for seed in args.seeds
    ]
    print(write_study(per_seed, args.out, args.first, args.second, metrics))


if __name__ == "__main__":
    main()
