"""The command line as a researcher meets it, through the console scripts.

Every expected failure exits 2 with one short message and no traceback, and leaves no run
directory; a tiny run writes train.log, plots/ and an MLflow run; Ctrl-C saves, says how to
resume, and the printed command resumes bitwise. The error cases and the tiny runs share one
pre-imported interpreter that forks a process per command line (tests/cli_zygote.py).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.conftest import ROOT, synthetic_overrides

pytestmark = pytest.mark.slow
STEPS = 16
# The tiny run (+ logger=mlflow, which changes no number) and the interrupted run share these:
# the tiny run's losses are the reference of the resumed one.
RUN = [
    "debug=fast",
    f"trainer.max_steps={STEPS}",
    "trainer.val_check_interval=8",
    "callbacks.checkpoint_last.every_n_train_steps=100",
    "data.batch_size=8",
    "+model.attention_dropout=0.1",  # resume must restore the global RNG too
]


def _corpora(root: Path) -> dict[str, Path]:
    files = {"empty": root / "empty.jsonl", "binary": root / "binary.txt"}
    files["empty"].write_text("")
    files["binary"].write_bytes(bytes(range(256)) * 12)
    return files


def _cases(tmp: Path, jsonl: Path) -> tuple[list[dict], dict[str, tuple[int, str]]]:
    """Command lines and, per error case, (exit code, key phrase of the message)."""
    files = _corpora(tmp)
    data = synthetic_overrides(jsonl)
    errors = {
        "typo_key": (["trainer.max_stpes=5"], "did you mean trainer.max_steps=5?"),
        "plus_unknown": (["+foo=1"], "foo: unknown key"),
        "negative_lr": (["optim.lr=-0.001"], "optim.lr: Input should be greater than 0"),
        "not_an_int": (["trainer.max_steps=abc"], "trainer.max_steps: Input should be a valid"),
        "group_bool": (["method=false"], "'method' is a config group"),
        "group_typo": (["method=lorra"], "did you mean method=lora?"),
        "run_dir": (["hydra.run.dir=/proc/forbidden/run"], "cannot create the run directory"),
        "init_from": (["init_from=/nonexistent/model"], "no model at /nonexistent/model"),
        "empty_corpus": (
            ["data=files", f"data.sources=[{{path: '{files['empty']}', text_field: body}}]"],
            "no rows",
        ),
        "binary_corpus": (["data=files", f"data.sources=['{files['binary']}']"], "UTF-8"),
        "missing_package": (["logger=mlflow", *data], "pip install 'fmlab[mlflow]'"),
    }
    env = {"FMLAB_LOG_DIR": str(tmp / "error-logs")}
    cases = [
        {
            "id": name,
            "script": "fmlab-train",
            "args": args,
            "cwd": str(tmp),
            "env": env,
            "block": ["mlflow"] if name == "missing_package" else [],
        }
        for name, (args, _) in errors.items()
    ]
    logs = {"FMLAB_LOG_DIR": str(tmp / "logs")}
    runs = [
        ("tiny", "fmlab-train", [*RUN, "logger=mlflow", *data, "run_name=tiny"]),
        ("sweep", "fmlab-train", ["-m", "debug=fast", "trainer.max_steps=4", *data, "seed=1,2"]),
        # a LoReFT adapter on the tiny model, then lm-eval on it: refused before any compute
        (
            "reft",
            "fmlab-train",
            [
                "experiment=sft_logic",
                "method=loreft",
                "model.name_or_path=${paths.log_dir}/train/runs/tiny/export",
                "trainer.max_steps=2",
                "trainer.val_check_interval=2",
                "data.n_train=16",
                "data.batch_size=4",
                "data.n_val=8",
                "data.n_test=8",
                "data.task=arithmetic",  # short prompts: the tiny model has 64 positions
                "run_name=reft",
            ],
        ),
        (
            "reft_lm_eval",
            "fmlab-eval",
            ["model_path=${paths.log_dir}/sft_logic/runs/reft", "lm_eval={tasks: [x]}"],
        ),
        # metrics computed before a failing step are on disk
        (
            "eval_partial",
            "fmlab-eval",
            [
                "model_path=${paths.log_dir}/train/runs/tiny",
                *[o for o in data if not o.startswith("tokenizer.")],
                "run_name=partial",
                "sets={broken: {sources: [/nonexistent.jsonl]}}",
            ],
        ),
    ]
    cases += [{"id": i, "script": s, "args": a, "cwd": str(tmp), "env": logs} for i, s, a in runs]
    expected = {name: (2, phrase) for name, (_, phrase) in errors.items()}
    return cases, expected


@pytest.fixture(scope="module")
def cli(tmp_path_factory, small_jsonl) -> dict:
    tmp = tmp_path_factory.mktemp("cli")
    cases, expected = _cases(tmp, small_jsonl)
    (tmp / "cases.json").write_text(json.dumps(cases))
    proc = subprocess.run(
        [sys.executable, "-m", "tests.cli_zygote", str(tmp / "cases.json"), str(tmp / "r.json")],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"tmp": tmp, "results": json.loads((tmp / "r.json").read_text()), "expected": expected}


ERRORS = [
    "typo_key",
    "plus_unknown",
    "negative_lr",
    "not_an_int",
    "group_bool",
    "group_typo",
    "run_dir",
    "init_from",
    "empty_corpus",
    "binary_corpus",
    "missing_package",
]


@pytest.mark.parametrize("case", ERRORS)
def test_expected_failures_exit_2_with_one_message_and_no_run_dir(cli, case):
    result, (code, phrase) = cli["results"][case], cli["expected"][case]
    err = result["stderr"]
    assert result["code"] == code, (result["stdout"][-2000:], err[-3000:])
    assert phrase in err and "fmlab-train: error:" in err, err[-3000:]
    assert "Traceback" not in err + result["stdout"]
    assert "Error executing job" not in err  # Hydra's own extra line
    runs = cli["tmp"] / "error-logs" / "train" / "runs"
    assert not runs.exists() or not list(runs.iterdir()), list(runs.iterdir())


def test_a_tiny_run_writes_its_log_plots_and_mlflow_run(cli):
    result = cli["results"]["tiny"]
    out = result["stdout"] + result["stderr"]
    assert result["code"] == 0, out[-3000:]
    run = cli["tmp"] / "logs" / "train" / "runs" / "tiny"  # run_name=tiny
    summary = json.loads((run / "summary.json").read_text())
    for name in ("loss", "lr", "throughput"):
        png = Path(summary["paths"][f"plot_{name}"])
        assert png == run / "plots" / f"{name}.png" and png.read_bytes()[:4] == b"\x89PNG"
    # the terminal: overrides and run dir, no config tree, no ads, no dependency warnings
    assert f"run directory {run}" in out and "overrides: debug=fast" in out
    assert "_target_" not in out  # no config tree (print_config=false)
    assert "Tip:" not in out and "set_vital" not in out and "GPU available" not in out
    assert re.search(rf"step {STEPS}/{STEPS} .*100% .*loss [0-9.]+ .*tok/s", out) or (
        f"trained {STEPS} steps" in out
    )
    # train.log holds the run's log: Lightning's lines (filtered from the console), the tables
    log = (run / "train.log").read_text()
    assert "GPU available" in log and "set_vital" not in out
    assert "step 8: val/loss" in log and "summary" in log and "test/loss" in log
    assert "Tip:" not in log
    # MLflow: a real local store; the metrics read back equal metrics.csv
    import mlflow

    store = f"sqlite:///{cli['tmp'] / 'logs' / 'mlflow.db'}"
    run_id = json.loads((run / "mlflow_run.json").read_text())["run_id"]
    client = mlflow.MlflowClient(tracking_uri=store)
    history = {m.step: m.value for m in client.get_metric_history(run_id, "train/loss")}
    assert history == pytest.approx(_losses(run, float))
    params = client.get_run(run_id).data.params
    assert params["trainer.max_steps"] == str(STEPS) and "optim.lr" in params


def _losses(run: Path, kind=str) -> dict[int, object]:
    with (run / "csv" / "metrics.csv").open() as fh:
        return {
            int(r["step"]): kind(r["train/loss"]) for r in csv.DictReader(fh) if r["train/loss"]
        }


def test_multirun_prints_each_line_once_and_records_jobs(cli):
    result = cli["results"]["sweep"]
    assert result["code"] == 0, result["stderr"][-3000:]
    lines = [ln for ln in result["stdout"].splitlines() if ln.startswith("overrides:")]
    assert len(lines) == len(set(lines)) == 2, result["stdout"][-3000:]
    assert "Restoring states" not in result["stdout"] + result["stderr"]
    sweep = next((cli["tmp"] / "logs" / "train" / "multiruns").iterdir())
    for job, seed in (("0", "seed=1"), ("1", "seed=2")):
        assert json.loads((sweep / job / "summary.json").read_text())["status"] == "ok"
        log = (sweep / job / "train.log").read_text()  # its own lines, each once
        assert log.count("overrides: ") == 1 and log.count(seed) == 1, log
        assert log.count("run directory ") == 1 and "Restoring states" in log


def test_reft_under_lm_eval_is_refused_before_any_compute(cli):
    assert cli["results"]["reft"]["code"] == 0, cli["results"]["reft"]["stderr"][-3000:]
    result = cli["results"]["reft_lm_eval"]
    assert result["code"] == 2 and "Traceback" not in result["stderr"]
    assert "ReFT models are not supported by lm-evaluation-harness" in result["stderr"]
    assert not (cli["tmp"] / "logs" / "eval" / "runs").exists() or not [
        p for p in (cli["tmp"] / "logs" / "eval" / "runs").iterdir() if p.name != "partial"
    ]


def test_eval_keeps_the_metrics_computed_before_a_later_step_fails(cli):
    result = cli["results"]["eval_partial"]
    assert result["code"] == 2 and "/nonexistent.jsonl" in result["stderr"]
    summary = json.loads(
        (cli["tmp"] / "logs" / "eval" / "runs" / "partial" / "summary.json").read_text()
    )
    assert summary["status"] == "failed" and "nonexistent" in summary["error"]
    assert summary["val/loss"] > 0 and summary["test/loss"] > 0


def test_ctrl_c_saves_prints_the_resume_command_and_it_resumes_bitwise(cli, small_jsonl, tmp_path):
    reference = _losses(cli["tmp"] / "logs" / "train" / "runs" / "tiny")
    assert sorted(reference) == list(range(STEPS))
    progress = tmp_path / "step"
    script = Path(sys.executable).with_name("fmlab-train")
    args = [
        *RUN,
        *synthetic_overrides(small_jsonl),
        "run_name=exp",
        "+callbacks.slow._target_=tests.helpers.SlowSteps",
        "+callbacks.slow.seconds=0.2",
        f"+callbacks.slow.progress_file={progress}",
    ]
    env = {**os.environ, "FMLAB_LOG_DIR": str(tmp_path / "logs"), "PYTHONPATH": str(ROOT)}
    env["PYTHONPATH"] += os.pathsep + os.environ.get("PYTHONPATH", "")
    job = subprocess.Popen(
        [str(script), *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while not (progress.exists() and progress.read_text() and int(progress.read_text()) >= 5):
        assert job.poll() is None and time.time() < deadline, job.communicate()
        time.sleep(0.05)
    job.send_signal(signal.SIGINT)
    out, err = job.communicate(timeout=300)
    run = tmp_path / "logs" / "train" / "runs" / "exp"
    assert job.returncode == 130, (out[-2000:], err[-3000:])
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in out + err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and 5 <= summary["global_step"] < STEPS
    assert summary["checkpoint"] == str(run / "checkpoints" / "last.ckpt")
    # the printed command is the same command (run_name=exp): run it as printed
    command = summary["resume_command"]
    assert f"resume with:\n  {command}" in out and shlex.split(command)[1:] == args
    again = subprocess.run(
        [str(script), *shlex.split(command)[1:]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"last.ckpt (step {summary['global_step']})" in again.stdout + again.stderr
    assert _losses(run) == reference  # every step, bitwise (the strings Lightning wrote)
