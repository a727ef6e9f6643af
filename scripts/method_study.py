"""The fine-tuning method study (docs/results/methods.md): full, LoRA, DoRA, LoReFT, DiReFT on the
built-in ``logic`` task from one base, over several seeds; test only for the method chosen on
validation.

    python scripts/method_study.py --out docs/finetune --seeds 1 2 3
    python scripts/method_study.py --base <export dir> --methods full=400 lora=400

Pre-trains the default base model first unless ``--base`` is given. Writes ``results.json``,
``table.md`` (mean ± std over the seeds) and ``learning_curves.png``
(see :mod:`fmlab.evaluation.method_study`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fmlab.evaluation.method_study import (
    METHODS,
    evaluate_chosen,
    run_methods,
    summarize,
    write_study,
)
from fmlab.evaluation.seeds import default_base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/finetune"))
    parser.add_argument("--runs", type=Path, default=Path("logs/method_study"))
    parser.add_argument("--base", help="base model export dir (default: pre-train one)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--methods", nargs="+", help="method=steps ... (default: all five)")
    parser.add_argument("overrides", nargs="*", help="extra overrides for every run")
    args = parser.parse_args()
    base = args.base
    if base is None:  # the default pre-trained model (fmlab-train with no arguments)
        base = default_base(args.runs)
    methods = METHODS
    if args.methods:
        methods = {m: int(s) for m, s in (x.split("=", 1) for x in args.methods)}
    results = run_methods(base, args.runs, methods, args.seeds, overrides=args.overrides)
    test = evaluate_chosen(summarize(results), results, args.runs / "test")
    print(write_study(results, test, args.out))


if __name__ == "__main__":
    main()
