"""Streaming from object storage vs a local prepared dataset, on fmlab's own training path.

One corpus is prepared twice with the same stages and tokenizer: as a local Arrow dataset
(``data=prepared``) and as litdata chunks uploaded to an S3 server (``data=streaming``; a local
moto server in its own process unless ``--endpoint`` names another). Repetitions alternate
local, streaming, streaming, local, ... so load from other processes hits both. Each run is
``fmlab.train.train`` with validation, checkpoints and export off; per run, after the warm-up
steps:

- tokens/s: training tokens over the wall time from one batch end to the next;
- data wait: the time from a batch's end to the next batch's start (Lightning fetching the next
  batch: the loader's ``next``, plus a few hooks), as a share of step time;
- CPU time per step of the whole process (litdata's download thread included): on a machine
  shared with other jobs, wall time mostly measures the others, CPU time this run's own work.

python scripts/bench_streaming.py --reps 3 --steps 40
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L

__all__ = ["DataWait", "main"]


class DataWait(L.Callback):
    """Step time and the part of it spent between batches (fetching the next one), after
    ``warmup`` steps; written to ``path`` (JSON) at the end of training.

    Args:
        path: Where the figures go.
        warmup: Steps not measured.
    """

    def __init__(self, path: str, warmup: int = 3) -> None:
        self.path, self.warmup = Path(path), warmup
        self.wait = self.step = self.cpu = 0.0
        self.steps = self.tokens = 0
        self._end: float | None = None
        self._start = self._cpu_end = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        if self._end is not None and trainer.global_step > self.warmup:
            self.wait += self._start - self._end
            self.step += now - self._end
            self.cpu += cpu - self._cpu_end
            self.steps += 1
            self.tokens += int(batch["input_ids"].numel())
        self._end, self._cpu_end = now, cpu

    def on_train_end(self, trainer, pl_module) -> None:
        if not self.steps:
            return
        figures = {
            "tokens_per_s": self.tokens / self.step,
            "step_ms": 1000 * self.step / self.steps,
            "data_wait_pct": 100 * self.wait / self.step,
            "cpu_ms_per_step": 1000 * self.cpu / self.steps,
            "tokens_per_cpu_s": self.tokens / self.cpu,
            "steps": self.steps,
        }
        self.path.write_text(json.dumps(figures))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _moto_server() -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, endpoint
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the moto S3 server did not start")


def _prepare(args: argparse.Namespace, root: Path, fmt: str, out: str, options: Any) -> dict:
    from fmlab.config import compose_config
    from fmlab.prepare import prepare

    overrides = [
        f"sources=[{args.source}]",
        f"output_dir={out}",
        f"output_format={fmt}",
        f"segment.block_size={args.block_size}",
        f"write.chunk_bytes={args.chunk_bytes}",
        "print_config=false",
        "progress=false",
        f"paths.cache_dir={root / 'cache'}",
        f"work_dir={root / 'work'}",
    ]
    if options:
        overrides.append(f"storage_options={_options(options)}")
    return prepare(compose_config("prepare", overrides, output_dir=root / f"prepare-{fmt}"))


def _options(options: dict[str, Any]) -> str:
    inner = ", ".join(f"{k}: '{v}'" for k, v in options.items() if k != "client_kwargs")
    return f"{{{inner}, client_kwargs: {{region_name: us-east-1}}}}"


def _run(args: argparse.Namespace, root: Path, data: list[str], name: str) -> dict[str, float]:
    from fmlab.config import compose_config
    from fmlab.train import train

    out = root / "runs" / name
    overrides = [
        *data,
        f"data.batch_size={args.batch_size}",
        f"trainer.max_steps={args.warmup + args.steps + 1}",
        "+trainer.limit_val_batches=0",  # validation off (not in the cpu preset)
        "trainer.log_every_n_steps=10",
        "run_test=false",
        "export.hf=false",
        "print_config=false",
        "callbacks.progress_bar=null",
        "callbacks.checkpoint_best=null",
        "callbacks.checkpoint_last=null",
        "+callbacks.data_wait._target_=fmlab.bench.streaming.DataWait",
        f"+callbacks.data_wait.path={out / 'data_wait.json'}",
        f"+callbacks.data_wait.warmup={args.warmup}",
        f"paths.cache_dir={root / 'cache'}",
        *args.override,
    ]
    train(compose_config("train", overrides, output_dir=out))
    return json.loads((out / "data_wait.json").read_text())


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--source", default="embedded:english", help="corpus for fmlab-prepare")
    p.add_argument("--block-size", type=int, default=128, help="the default data's block size")
    p.add_argument("--batch-size", type=int, default=16)
    # the embedded corpus is ~0.6 MB of training blocks: small chunks and a cache that holds a
    # third of them, so the runs download and evict as a large corpus does
    p.add_argument("--chunk-bytes", default="32KB", help="streaming chunk size")
    p.add_argument("--cache-limit", default="400KB", help="data.cache_limit of the streaming runs")
    p.add_argument("--steps", type=int, default=40, help="measured steps per run")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--reps", type=int, default=3, help="runs per kind (interleaved)")
    p.add_argument("--endpoint", default=None, help="an S3 endpoint (default: a local moto)")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--override", action="append", default=[], help="train override (repeat)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print and return its report."""
    args = parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="fmlab-bench-stream-"))
    server, endpoint = (None, args.endpoint) if args.endpoint else _moto_server()
    options = {"endpoint_url": endpoint, "key": "bench", "secret": "bench-secret"}
    try:
        import boto3

        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=options["key"],
            aws_secret_access_key=options["secret"],
            region_name="us-east-1",
        )
        if "bench" not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
            s3.create_bucket(Bucket="bench")
        local = _prepare(args, root, "arrow", str(root / "local"), None)
        stream = _prepare(args, root, "streaming", "s3://bench/corpus", options)
        data = {
            "local": ["data=prepared", f"data.path={root / 'local'}"],
            "streaming": [
                "data=streaming",
                "data.path=s3://bench/corpus",
                f"data.cache_limit={args.cache_limit}",
                f"paths.storage_options={_options(options)}",
            ],
        }
        results: dict[str, list[dict[str, float]]] = {"local": [], "streaming": []}
        for rep in range(args.reps):
            order = ("local", "streaming") if rep % 2 == 0 else ("streaming", "local")
            for kind in order:
                results[kind].append(_run(args, root, data[kind], f"{kind}-{rep}"))
                print(kind, rep, results[kind][-1], flush=True)
    finally:
        if server is not None:
            server.kill()
    med = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in results.items()}
    best = {k: max(r["tokens_per_s"] for r in v) for k, v in results.items()}
    report = {
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "train_rows": local["splits"]["train"]["rows"],
        "chunks_bytes": stream["stages"]["write"]["settings"]["chunk_bytes"],
        "load_avg": os.getloadavg(),
        "runs": results,
        "median": med,
        "ratio_median": med["streaming"]["tokens_per_s"] / med["local"]["tokens_per_s"],
        "ratio_best": best["streaming"] / best["local"],
        "ratio_cpu": med["streaming"]["tokens_per_cpu_s"] / med["local"]["tokens_per_cpu_s"],
    }
    keys = ("median", "ratio_median", "ratio_best", "ratio_cpu", "load_avg")
    print(json.dumps({k: report[k] for k in keys}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return report
