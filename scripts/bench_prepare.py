"""Benchmark fmlab-prepare on a generated corpus: documents/s and MB/s per stage, and the whole
pipeline's cost as a ratio to tokenization alone (goal: at most 2x).

    python scripts/bench_prepare.py --megabytes 300 --num-proc 2 --json bench_prepare.json

Tokenization alone runs the segment stage's tokenizer call (same tokenizer, worker processes and
batches) over every raw document; the pipeline's "core" is clean + filter + dedup + split +
tokenize + pack, "all" adds read/structure, decontamination and writing. Training the BPE
tokenizer is a one-off cost reported separately.
"""

from __future__ import annotations

import argparse
import functools
import glob
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

CORE = ("clean", "filter", "dedup", "split", "segment")
ALL = ("structure", "clean", "filter", "dedup", "split", "decontaminate", "segment", "write")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--megabytes", type=float, default=300.0, help="corpus size")
    parser.add_argument("--num-proc", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--block-size", type=int, default=2048)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--tokenizer-docs", type=int, default=20000, help="BPE training docs")
    parser.add_argument("--work-dir", default=None, help="default: a temporary directory")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", default="bench_prepare.json", help="where to write the results")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from fmlab.data.pipeline import (
        Clean,
        Decontaminate,
        Dedup,
        Filter,
        Pack,
        Split,
        Structure,
        Write,
        prepare_dataset,
    )
    from fmlab.data.pipeline.bench import generate_corpus, time_tokenization
    from fmlab.data.tokenizer import bpe, pretrained

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="fmlab-bench-"))
    load_before = os.getloadavg()  # other work on the machine skews every figure: record it
    console = Console()
    try:
        t0 = time.perf_counter()
        corpus = generate_corpus(work / "corpus", args.megabytes)
        gen_s = time.perf_counter() - t0
        console.print(
            f"corpus: {corpus['documents']:,} documents, {corpus['bytes'] / 1e6:.0f} MB "
            f"in {gen_s:.0f}s; planted {corpus['planted']}"
        )
        t0 = time.perf_counter()
        card = prepare_dataset(
            [{"path": str(work / "corpus"), "domain_field": "domain", "date_field": "date"}],
            str(work / "out"),
            structure=Structure(),
            clean=Clean(pii=["email", "ip", "phone"]),
            filter=Filter(),
            dedup=Dedup(),
            split=Split(),
            decontaminate=Decontaminate(),
            segment=Pack(block_size=args.block_size),
            write=Write(),
            tokenizer=functools.partial(bpe, vocab_size=args.vocab_size),
            work_dir=work / "stages",
            cache_dir=work / "cache",
            num_proc=args.num_proc,
            tokenizer_train_docs=args.tokenizer_docs,
            name=f"bench-{args.megabytes:g}MB",
        )
        wall = time.perf_counter() - t0
        tok = pretrained(name_or_path=str(work / "out" / "tokenizer"))
        records = glob.glob(str(work / "stages" / "stages" / "structure-*" / "data.arrow"))[0]
        alone = time_tokenization(records, tok, args.num_proc)

        stages = card["stages"]
        raw_mb = corpus["bytes"] / 1e6
        rows = {}
        for name in ALL:
            st = stages[name]
            rows[name] = {
                "seconds": st.get("seconds", 0.0),
                "docs_in": st.get("in"),
                "docs_out": st.get("out"),
                "docs_per_s": st.get("docs_per_s"),
                "mb_per_s": st.get("mb_per_s"),
                "removed": st.get("removed", {}),
                "cpu_seconds": st.get("cpu_seconds"),
            }
        core = sum(rows[n]["seconds"] for n in CORE)
        total = sum(rows[n]["seconds"] for n in ALL)
        core_cpu = sum(stages[n].get("cpu_seconds", 0.0) for n in CORE)
        total_cpu = sum(stages[n].get("cpu_seconds", 0.0) for n in ALL)
        result = {
            "machine": {
                "cpus": os.cpu_count(),
                "num_proc": args.num_proc,
                "loadavg_before": load_before,
                "loadavg_after": os.getloadavg(),
            },
            "corpus": {**corpus, "megabytes": raw_mb, "generate_s": gen_s},
            "stages": rows,
            "tokenizer_training_s": stages["segment"].get("tokenizer_seconds", 0.0),
            "tokenization_alone": alone,
            "pipeline_core_s": core,
            "pipeline_all_s": total,
            "ratio_core_to_tokenization": core / alone["seconds"],
            "ratio_all_to_tokenization": total / alone["seconds"],
            # CPU time is not inflated by other jobs on the machine: the sturdier cost measure
            "ratio_core_to_tokenization_cpu": core_cpu / alone["cpu_seconds"],
            "ratio_all_to_tokenization_cpu": total_cpu / alone["cpu_seconds"],
            "core_mb_per_s": raw_mb / core,
            "all_mb_per_s": raw_mb / total,
            "wall_s": wall,
            "splits": card["splits"],
        }
        table = Table(title=f"fmlab-prepare on {raw_mb:.0f} MB, num_proc={args.num_proc}")
        for col in ("stage", "s", "docs in", "docs out", "docs/s", "MB/s"):
            table.add_column(col, justify="left" if col == "stage" else "right")
        for name, r in rows.items():
            cells = [r["docs_in"], r["docs_out"], r["docs_per_s"]]
            table.add_row(
                name,
                f"{r['seconds']:.1f}",
                *(f"{c:,.0f}" if c else "" for c in cells),
                f"{r['mb_per_s']:.1f}" if r["mb_per_s"] else "",
            )
        table.add_row(
            "tokenization alone",
            f"{alone['seconds']:.1f}",
            f"{alone['documents']:,}",
            "",
            f"{alone['docs_per_s']:,.0f}",
            f"{alone['mb_per_s']:.1f}",
        )
        console.print(table)
        console.print(
            f"core pipeline (clean+filter+dedup+split+tokenize+pack): {core:.1f}s = "
            f"[bold]{result['ratio_core_to_tokenization']:.2f}x[/bold] tokenization alone "
            f"({alone['seconds']:.1f}s); all stages incl. read, decontaminate, write: {total:.1f}s "
            f"= {result['ratio_all_to_tokenization']:.2f}x; BPE training (once): "
            f"{result['tokenizer_training_s']:.1f}s"
        )
        console.print(
            f"in CPU time: core {core_cpu:.1f}s = [bold]"
            f"{result['ratio_core_to_tokenization_cpu']:.2f}x[/bold] tokenization alone "
            f"({alone['cpu_seconds']:.1f}s), all stages {total_cpu:.1f}s = "
            f"{result['ratio_all_to_tokenization_cpu']:.2f}x; load average before/after "
            f"{load_before[0]:.1f}/{os.getloadavg()[0]:.1f}"
        )
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"results: {args.json}")
    finally:
        if not args.keep and not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
