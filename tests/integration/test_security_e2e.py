"""End to end: planted secrets appear in no output; concurrent runs never share a directory."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.conftest import FAST, synthetic_overrides

pytestmark = pytest.mark.slow

SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAFAKEKEYID0001",
    "AWS_SECRET_ACCESS_KEY": "fake-aws-secret-value-0002",
    "WANDB_API_KEY": "fake-wandb-key-0003" + "0" * 40,  # wandb checks the length
    "HF_TOKEN": "hf_fake_token_0004",
}
LITERAL = "literal-token-on-the-command-line-0005"


def _train(run_dir: Path, jsonl: Path, *extra: str, env=None, **kw) -> subprocess.Popen:
    flags = [a for a in extra if a.startswith("-")]  # Hydra flags go before the overrides
    overrides = [a for a in extra if not a.startswith("-")]
    cmd = [sys.executable, "-m", "fmlab.train", *flags, *FAST, *synthetic_overrides(jsonl)]
    cmd += overrides
    if run_dir is not None:
        cmd.append(f"hydra.run.dir={run_dir}")
    return subprocess.Popen(cmd, env=env or os.environ, text=True, **kw)


def test_planted_secrets_never_reach_configs_logs_cards_or_summaries(small_jsonl, tmp_path):
    env = {**os.environ, **SECRETS, "FMLAB_CACHE_DIR": str(tmp_path / "cache")}
    run = tmp_path / "run"
    sources = (
        f"data.sources=[{{path: '{small_jsonl}', text_field: body, storage_options: "
        "{key: '${oc.env:AWS_ACCESS_KEY_ID}', secret: '${oc.env:AWS_SECRET_ACCESS_KEY}', "
        f"token: {LITERAL}}}}}]"
    )
    proc = _train(
        run,
        small_jsonl,
        sources,
        "print_config=true",
        "logger=wandb",  # a key is set, but offline: nothing leaves the machine
        "logger.wandb.mode=offline",
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    planted = [*SECRETS.values(), LITERAL]
    leaks = [s for s in planted if s in out or s in err]
    for path in [*run.rglob("*"), *(tmp_path / "cache").rglob("*")]:
        if path.is_file() and path.suffix not in (".arrow", ".safetensors", ".ckpt"):
            data = path.read_bytes()
            leaks += [f"{s} in {path}" for s in planted if s.encode() in data]
    assert not leaks, leaks
    assert "<redacted>" in (run / "config.yaml").read_text()

    # weights are exported as safetensors only: nothing that unpickles
    export = run / "export"
    assert (export / "model.safetensors").is_file()
    assert not [p for p in export.rglob("*") if p.suffix in (".bin", ".pt", ".pkl", ".pickle")]


def test_two_runs_on_one_directory_the_second_stops_at_once(small_jsonl, tmp_path):
    run = tmp_path / "shared"
    progress = tmp_path / "step"
    first = _train(
        run,
        small_jsonl,
        "+callbacks.slow._target_=tests.helpers.SlowSteps",
        "+callbacks.slow.seconds=0.2",
        f"+callbacks.slow.progress_file={progress}",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not progress.exists() and time.time() < deadline and first.poll() is None:
        time.sleep(0.1)
    second = _train(run, small_jsonl, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = second.communicate(timeout=300)
    assert second.returncode != 0
    assert f"{run} is in use by another fmlab run (pid {first.pid}" in err
    assert first.wait(timeout=300) == 0
    assert (run / "summary.json").is_file()


def test_concurrent_runs_and_sweeps_get_their_own_directories(small_jsonl, tmp_path):
    env = {**os.environ, "FMLAB_LOG_DIR": str(tmp_path / "logs")}
    procs = [
        _train(None, small_jsonl, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE),
        _train(
            None,
            small_jsonl,
            "-m",
            "seed=1,2",
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        ),
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    summaries = sorted((tmp_path / "logs").rglob("summary.json"))
    assert len(summaries) == 3 and len({s.parent for s in summaries}) == 3
