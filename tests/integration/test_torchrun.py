"""The launch side of multi-process training: the run directory every rank of one launch agrees on
(``fmlab_run_id``), scripts/torchrun.sh's checks, the SLURM script's syntax, and the early refusal
of a strategy whose package is missing. The 2-process torchrun run itself is in test_ddp.py."""

from __future__ import annotations

import datetime
import hashlib
import os
import subprocess
import sys
import time

import psutil
import pytest
from tests.conftest import ROOT

from fmlab.config import ConfigError, compose_config
from fmlab.config.compose import _run_id

_LAUNCH_VARS = (
    "SLURM_JOB_ID",
    "SLURM_ARRAY_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
    "TORCHELASTIC_RUN_ID",
    "GROUP_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
)


@pytest.fixture
def no_launcher(monkeypatch):
    for var in _LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_run_id_under_torchrun_is_shared_by_the_ranks_of_one_launch(no_launcher):
    env = no_launcher
    assert _run_id("%Y") == time.strftime("%Y")  # no launcher: the start time

    # one machine, torchrun's default id "none": the torchrun agent's (the parent's) start time,
    # which every worker of the launch has in common
    env.setenv("TORCHELASTIC_RUN_ID", "none")
    env.setenv("GROUP_WORLD_SIZE", "1")
    parent = datetime.datetime.fromtimestamp(psutil.Process(os.getppid()).create_time())
    assert _run_id("%Y-%m-%d_%H-%M-%S-%f") == parent.strftime("%Y-%m-%d_%H-%M-%S-%f")

    # several machines: the rendezvous endpoint all agents agreed on
    env.setenv("GROUP_WORLD_SIZE", "2")
    env.setenv("MASTER_ADDR", "node0")
    env.setenv("MASTER_PORT", "29511")
    expected = "torchrun-" + hashlib.sha1(b"node0:29511").hexdigest()[:12]
    assert _run_id("%Y") == expected
    env.setenv("MASTER_PORT", "29512")  # another launch
    assert _run_id("%Y") != expected

    # --rdzv-id: named by it on any number of machines (a relaunch with it continues the run)
    env.setenv("TORCHELASTIC_RUN_ID", "exp/42 a")
    assert _run_id("%Y") == "torchrun-exp_42_a"
    # inside a SLURM job the job id wins: srun+torchrun and requeues share one directory
    env.setenv("SLURM_JOB_ID", "4242")
    assert _run_id("%Y") == "slurm-4242"


def test_torchrun_script_refuses_several_machines_without_a_launch_id():
    base = {**os.environ, "PYTHON": sys.executable, "NPROC": "1", "SLURM_JOB_ID": ""}
    for extra, message in (
        ({"NNODES": "2", "RDZV_ID": ""}, "needs RDZV_ID"),
        ({"NNODES": "2", "RDZV_ID": "x"}, "needs MASTER=<host"),
    ):
        proc = subprocess.run(
            ["bash", str(ROOT / "scripts" / "torchrun.sh")],
            env={**base, **extra},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_slurm_script_is_valid_bash_and_sets_the_nodes():
    script = ROOT / "scripts" / "slurm_train.sbatch"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "srun " in text and 'trainer.num_nodes="$SLURM_NNODES"' in text


def test_num_nodes_is_settable_on_every_trainer_preset():
    for preset in ("cpu", "gpu", "ddp", "ddp_cpu", "fsdp", "fsdp_cpu", "deepspeed"):
        cfg = compose_config("train", [f"trainer={preset}", "trainer.num_nodes=2"])
        assert cfg.trainer.num_nodes == 2


def test_deepspeed_without_its_package_is_refused_before_any_data_is_read():
    import importlib.util

    from fmlab.workflow import preflight

    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed here")
    with pytest.raises(ConfigError, match=r"pip install 'fmlab\[deepspeed\]'"):
        preflight(compose_config("train", ["trainer=deepspeed"]))
    preflight(compose_config("train", ["trainer=fsdp_cpu"]))  # FSDP needs nothing extra


def test_fsdp_key_typo_is_named_before_any_data_is_read():
    from fmlab.workflow import preflight

    typo = compose_config("train", ["trainer=fsdp", "+trainer.strategy.wrap_layer=[X]"])
    with pytest.raises(ConfigError, match="wrap_layer: .*did you mean 'wrap_layers'"):
        preflight(typo)
