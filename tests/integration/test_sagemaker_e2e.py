"""``fmlab-sagemaker`` in a simulated SageMaker container: the ``/opt/ml`` tree and ``SM_*``
environment as SageMaker's training toolkit lays them out, a spot interruption (SIGTERM → 143)
and the restarted job resuming from the checkpoint directory."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.conftest import ROOT

from fmlab.reliability import inspect_checkpoint

pytestmark = pytest.mark.slow
MAX_STEPS = 16
SCRIPT = Path(sys.executable).parent / "fmlab-sagemaker"


def _to_cmd_args(hps: dict) -> list[str]:
    """The command line SageMaker's training toolkit gives a script: sorted, values by str()."""
    return [a for k in sorted(hps) for a in (f"--{k}", "" if hps[k] is None else str(hps[k]))]


def _container(tmp_path: Path, small_jsonl: Path) -> tuple[dict[str, str], list[str], Path]:
    """``/opt/ml`` (under tmp_path) with a train channel, and the job's environment and argv."""
    root = tmp_path / "opt" / "ml"
    train = root / "input/data/train"
    train.mkdir(parents=True)
    docs = [json.loads(line)["body"] for line in small_jsonl.read_text().splitlines()]
    (train / "part-00000.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    progress = tmp_path / "step"
    hps = {
        "debug": "fast",
        "print_config": False,
        "callbacks.progress_bar": None,
        "data.block_size": 64,
        "data.batch_size": 8,
        "data.val_fraction": 0.2,
        "tokenizer.vocab_size": 300,
        "trainer.max_steps": MAX_STEPS,
        "trainer.val_check_interval": 8,
        "callbacks.checkpoint_last.every_n_train_steps": 4,
        "run_test": False,
        # test-only: steps slow enough to be interrupted at a known point
        "+callbacks.slow._target_": "tests.helpers.SlowSteps",
        "+callbacks.slow.seconds": 0.1,
        "+callbacks.slow.progress_file": str(progress),
    }
    config = root / "input/config"
    config.mkdir(parents=True)
    sdk = {k: json.dumps(v) for k, v in hps.items()} | {"sagemaker_program": '"train.py"'}
    (config / "hyperparameters.json").write_text(json.dumps(sdk))
    resources = {"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "eth0"}
    (config / "resourceconfig.json").write_text(json.dumps(resources))
    (config / "inputdataconfig.json").write_text(
        json.dumps({"train": {"TrainingInputMode": "File"}})
    )
    for d in ("model", "output/data", "checkpoints"):
        (root / d).mkdir(parents=True)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),  # tests.helpers for the slow-step callback
        "FMLAB_SM_ROOT": str(root),
        "SM_HPS": json.dumps(hps),
        "SM_CHANNELS": '["train"]',
        "SM_CHANNEL_TRAIN": str(train),
        "SM_MODEL_DIR": str(root / "model"),
        "SM_OUTPUT_DIR": str(root / "output"),
        "SM_OUTPUT_DATA_DIR": str(root / "output/data"),
        "SM_NUM_GPUS": "0",
        "SM_HOSTS": '["algo-1"]',
        "SM_CURRENT_HOST": "algo-1",
        "SM_TRAINING_ENV": json.dumps({"hyperparameters": hps, "job_name": "fmlab-test"}),
    }
    return env, _to_cmd_args(hps), root


def _wait_for_step(progress: Path, step: int, proc: subprocess.Popen) -> None:
    deadline = time.time() + 300
    while time.time() < deadline:
        if progress.exists() and int(progress.read_text() or 0) >= step:
            return
        if proc.poll() is not None:
            raise AssertionError(f"the job ended (rc {proc.returncode}) before step {step}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for step {step}")


def test_spot_interruption_then_restart_resumes_from_the_checkpoint_dir(small_jsonl, tmp_path):
    assert SCRIPT.is_file(), "fmlab-sagemaker is not installed: pip install -e ."
    env, argv, root = _container(tmp_path, small_jsonl)
    ckpts = root / "checkpoints"

    # The spot instance is reclaimed mid-run: SIGTERM → last.ckpt at the end of the step, exit 143.
    job = subprocess.Popen(
        [str(SCRIPT), *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    _wait_for_step(tmp_path / "step", 6, job)
    job.send_signal(signal.SIGTERM)
    out, _ = job.communicate(timeout=120)
    assert job.returncode == 143, out[-3000:]
    stopped = inspect_checkpoint(ckpts / "checkpoints/last.ckpt").global_step
    assert 6 <= stopped < MAX_STEPS
    assert f"SIGTERM at step {stopped}" in (root / "output/failure").read_text()
    assert json.loads((root / "output/data/summary.json").read_text())["status"] == "preempted"
    assert not list((root / "model").iterdir()), "no model from an interrupted job"

    # SageMaker restarts the job on a new instance: same hyperparameters and channels, fresh
    # model/ and output/, /opt/ml/checkpoints restored from checkpoint_s3_uri.
    for d in ("model", "output"):
        shutil.rmtree(root / d)
        (root / d).mkdir()
    (root / "output/data").mkdir()
    job = subprocess.run([str(SCRIPT), *argv], env=env, capture_output=True, text=True, timeout=600)
    out = job.stdout + job.stderr
    assert job.returncode == 0, out[-3000:]
    assert f"last.ckpt (step {stopped})" in out  # resumed, not started over
    summary = json.loads((root / "output/data/summary.json").read_text())
    assert (summary["status"], summary["global_step"]) == ("ok", MAX_STEPS)
    with (root / "output/data/metrics.csv").open() as fh:
        steps = [int(r["step"]) for r in csv.DictReader(fh) if r["train/loss"]]
    assert steps == list(range(MAX_STEPS)), "each step trained (and logged) exactly once"
    assert f"fmlab-metric val/loss={summary['val/loss']}" in out

    # checkpoints stay in the synced directory; the export is the model SageMaker uploads
    assert inspect_checkpoint(ckpts / "checkpoints/last.ckpt").global_step == MAX_STEPS
    assert list((ckpts / "checkpoints").glob("best-step*.ckpt"))
    model = root / "model"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in model.iterdir()
    }
    assert json.loads((model / "config.json").read_text())["model_type"] == "llama"
    plan = json.loads((root / "output/data/sagemaker_plan.json").read_text())
    assert f"data.sources=['{root / 'input/data/train'}']" in plan["overrides"]
    assert not (root / "output/failure").exists()
