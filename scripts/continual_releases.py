"""The release-chain study: frozen vs. updates without/with replay vs. retraining, by quarter.

Generates a dated news corpus with drift (names, facts and trend words that change every
quarter), trains release 1 and the chains of updates and retrainings (see
:mod:`fmlab.evaluation.releases_study`), writes ``continual-releases.json`` (all numbers and
the table) and ``continual-releases.png`` into ``--out``, and prints the table.

    python scripts/continual_releases.py        # 384 CPU s (~7 min idle; 44 min at load 12-41)
    python scripts/continual_releases.py --update-steps 60 --replay 0.25

One torch thread by default (``--threads``): on a shared machine with more runnable processes
than cores, two OpenMP threads spin-wait for each other (a tiny-model step measured 16x slower
in CPU time at a load of 25 on 2 cores).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from fmlab.evaluation.releases_study import StudyPlan, run_study, write_study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/results"))
    parser.add_argument("--runs", type=Path, default=Path("logs/continual_releases"))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    for f in dataclasses.fields(StudyPlan):
        flag = "--" + f.name.replace("_", "-")
        parser.add_argument(flag, type=type(f.default), default=f.default)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    plan = StudyPlan(**{f.name: getattr(args, f.name) for f in dataclasses.fields(StudyPlan)})
    results = run_study(plan, args.runs)
    print(write_study(results, args.out))
    print(f"wall time {results['wall_s']:.0f} s; results in {args.out}")


if __name__ == "__main__":
    main()
