"""Print a Markdown table of the runs of a sweep directory (one row per summary.json).

python scripts/sweep_table.py logs/sft_logic/multiruns/<time>
"""

from __future__ import annotations

import argparse

from fmlab.evaluation.report import collect_runs, markdown_table

COLUMNS = [
    "method",
    "params_trainable",
    "params_trainable_pct",
    "tokens_per_s",
    "peak_mem_mb",
    "val/loss",
    "test/loss",
    "val/exact_match",
    "test/exact_match",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("sweep_dir")
    parser.add_argument("--columns", nargs="*", default=COLUMNS)
    args = parser.parse_args()
    print(markdown_table(collect_runs(args.sweep_dir), args.columns))


if __name__ == "__main__":
    main()
