"""The benchmark harness and the GPU suite's entry, run for real at a tiny size on the CPU."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest

from fmlab.bench.cli import main
from fmlab.bench.suites import SUITES

ROOT = Path(__file__).resolve().parents[2]


def _check_row(row: dict) -> None:
    for path in ("raw", "fmlab"):
        m = row[path]
        assert m["tokens_per_s"] > 0 and m["step_ms"] > 0
        assert 0 < m["mfu"] < 1, (row["case"]["name"], path, m["mfu"])
        assert 0 <= m["data_wait_pct"] < 100
        assert m["peak_mem_mb"] >= 0
    # the ratio is reported, not judged: tiny steps on a shared CPU (and a compile case whose
    # first timed steps may recompile) swing it by 10x; speed targets live in benchmarks/README.md
    assert math.isfinite(row["ratio"]) and row["ratio"] > 0, row["ratio"]
    assert row["model_flops_per_tok"] > 0 and row["peak_flops"] > 0


def test_harness_tiny(tmp_path):
    out = tmp_path / "bench.json"
    md = tmp_path / "bench.md"
    report = main(
        [
            "--presets",
            "tiny",
            "--methods",
            "pretrain,loreft",
            "--device",
            "cpu",
            "--batch-size",
            "4",
            "--seq-len",
            "64",
            "--vocab-size",
            "512",
            "--steps",
            "4",
            "--warmup",
            "1",
            "--reps",
            "2",
            "--json",
            str(out),
            "--markdown",
            str(md),
        ]
    )
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(report))
    assert [r["case"]["method"] for r in written["results"]] == ["pretrain", "loreft"]
    for row in written["results"]:
        _check_row(row)
        assert len(row["raw"]["reps_tokens_per_s"]) == len(row["fmlab"]["reps_tokens_per_s"]) == 2
    # LoReFT trains far fewer weights: fewer FLOPs per token than pre-training the same model
    pre, reft = written["results"]
    assert reft["model_flops_per_tok"] < pre["model_flops_per_tok"]
    assert md.read_text().count("\n| ") == 3  # header + 2 rows


def test_gpu_suite_script_syntax():
    subprocess.run(["bash", "-n", str(ROOT / "scripts" / "gpu_bench.sh")], check=True)


@pytest.mark.slow
def test_gpu_suite_dry_run_on_cpu(tmp_path):
    # the entry gpu_bench.sh runs, every case shrunk to tiny (compile cases included)
    out = tmp_path / "gpu.json"
    main(["--suite", "gpu", "--device", "cpu", "--tiny", "--json", str(out)])
    rows = json.loads(out.read_text())["results"]
    assert [r["case"]["method"] for r in rows] == [c.method for c in SUITES["gpu"]]
    for row in rows:
        _check_row(row)
