"""The preference study of docs/tutorials/preference.md: method × objective (DPO, IPO, SimPO)
after one SFT model on the built-in logic task.

    python scripts/preference_study.py --out docs/results/preference
    python scripts/preference_study.py --base <SFT export> --methods lora,loreft --steps 100

Trains the SFT model first unless ``--base`` is given. Writes ``results.json``, ``table.md`` and
``study.png`` (see :mod:`fmlab.evaluation.preference_study`).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from fmlab.evaluation.preference_study import run_study, write_study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/results/preference"))
    parser.add_argument("--runs", type=Path, default=Path("logs/preference_study"))
    parser.add_argument("--base", help="SFT model directory (default: train one)")
    parser.add_argument("--methods", default="full,lora,loreft")
    parser.add_argument("--losses", default="dpo,ipo,simpo")
    parser.add_argument("--steps", type=int, default=200, help="preference steps per run")
    parser.add_argument("--sft-steps", type=int, default=400)
    parser.add_argument("overrides", nargs="*", help="extra overrides for every preference run")
    args = parser.parse_args()
    results = run_study(
        args.runs,
        methods=args.methods.split(","),
        losses=args.losses.split(","),
        steps=args.steps,
        sft_steps=args.sft_steps,
        base=args.base,
        overrides=args.overrides,
    )
    command = "python scripts/preference_study.py " + shlex.join(sys.argv[1:])
    print(write_study(results, args.out, command.strip()))


if __name__ == "__main__":
    main()
