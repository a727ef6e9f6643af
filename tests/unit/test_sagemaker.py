"""SageMaker environment → fmlab-train overrides: values, keys, channels, hosts, the launcher."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from tests.conftest import ROOT

from fmlab.config import ConfigError
from fmlab.sagemaker import (
    SageMakerEnv,
    SageMakerError,
    check_launch,
    hydra_value,
    hyperparameters_from_overrides,
    main,
    make_plan,
    parse_cli,
    validate_plan,
)

PARSER = OverridesParser.create()


def _parsed(override: str):
    return PARSER.parse_override(override).value()


def _env(tmp_path: Path, hps=None, channels=(), **extra: str) -> SageMakerEnv:
    """The environment SageMaker's training toolkit sets, rooted at ``tmp_path``."""
    environ = {
        "FMLAB_SM_ROOT": str(tmp_path),
        "SM_HPS": json.dumps(hps or {}),
        "SM_CHANNELS": json.dumps(list(channels)),
        "SM_NUM_GPUS": "0",
        "SM_HOSTS": '["algo-1"]',
        "SM_CURRENT_HOST": "algo-1",
        **{f"SM_CHANNEL_{c.upper()}": str(tmp_path / "input/data" / c) for c in channels},
        **extra,
    }
    for c in channels:
        (tmp_path / "input/data" / c).mkdir(parents=True, exist_ok=True)
    return SageMakerEnv.from_environ(environ)


def _mapped(plan) -> list[str]:
    """The overrides the plan adds before the user's (after hydra.run.dir)."""
    return plan.overrides[1:]


VALUES = [
    0,
    -3,
    2.5e-4,
    True,
    False,
    None,
    "sft_classify",
    "hello world",
    "1,2",  # would be a sweep unquoted
    "it's a \\ back'slash\\",
    "",
    [1, "a b", None],
    {"path": "/opt/ml/input/data/train", "text_field": "body", "n": [1, 2]},
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_hydra_value_round_trips_every_json_type(value):
    assert _parsed(f"k={hydra_value(value)}") == value


def test_hydra_value_keeps_hydra_syntax_and_interpolations_as_written():
    text = "[{path: ${oc.env:SM_CHANNEL_TRAIN}, text_field: body}]"
    assert hydra_value(text) == text
    assert hydra_value("${oc.env:SM_CHANNEL_X}") == "${oc.env:SM_CHANNEL_X}"
    assert math.isnan(_parsed(f"k={hydra_value(float('nan'))}"))
    with pytest.raises(SageMakerError, match="'a b'"):
        hydra_value({"a b": 1})


def test_cli_pairs_as_the_toolkit_and_model_trainer_write_them():
    # the training toolkit: str(value) and "-k" for one-letter keys; ModelTrainer: json.dumps
    argv = ["--experiment", "sft_classify", "--trainer.max_steps", "100", "-x", "True"]
    argv += ["--optim.lr=3e-4", "--neg", "-1", "--l", '["a", "b"]', "model=small"]
    hps, plain = parse_cli(argv)
    assert hps == {
        "experiment": "sft_classify",
        "trainer.max_steps": 100,
        "x": "True",
        "optim.lr": 3e-4,
        "neg": -1,
        "l": ["a", "b"],
    }
    assert plain == ["model=small"]
    with pytest.raises(SageMakerError, match="'--seed' has no value"):
        parse_cli(["--seed"])


def test_env_reads_the_files_when_the_toolkit_set_nothing(tmp_path):
    config = tmp_path / "input/config"
    config.mkdir(parents=True)
    # the SDK writes every value JSON-encoded, and adds its own sagemaker_* entries
    hps = {"trainer.max_steps": "100", "experiment": '"sft_classify"', "x": "a,b"}
    (config / "hyperparameters.json").write_text(json.dumps({**hps, "sagemaker_program": '"t.py"'}))
    (config / "resourceconfig.json").write_text(
        json.dumps({"current_host": "algo-2", "hosts": ["algo-2", "algo-1"]})
    )
    (config / "inputdataconfig.json").write_text(json.dumps({"train": {}, "model": {}}))
    env = SageMakerEnv.from_environ({"FMLAB_SM_ROOT": str(tmp_path), "SM_NUM_GPUS": "2"})
    assert env.hyperparameters == {
        "trainer.max_steps": 100,
        "experiment": "sft_classify",
        "x": "a,b",
    }
    assert env.channels == {n: tmp_path / "input/data" / n for n in ("train", "model")}
    assert (env.hosts, env.current_host, env.num_gpus) == (["algo-1", "algo-2"], "algo-2", 2)
    assert env.model_dir == tmp_path / "model"
    assert env.output_data_dir == tmp_path / "output/data"
    assert env.checkpoint_dir == tmp_path / "checkpoints"
    # SM_* variables take precedence over the files
    env = SageMakerEnv.from_environ(
        {"FMLAB_SM_ROOT": str(tmp_path), "SM_HPS": '{"seed": 7}', "SM_NUM_GPUS": "0",
         "SM_MODEL_DIR": "/m", "FMLAB_SM_CHECKPOINT_DIR": "/ck"}
    )  # fmt: skip
    assert (env.hyperparameters, env.model_dir, env.checkpoint_dir) == (
        {"seed": 7},
        Path("/m"),
        Path("/ck"),
    )
    with pytest.raises(SageMakerError, match="SM_HPS: not valid JSON"):
        SageMakerEnv.from_environ({"FMLAB_SM_ROOT": str(tmp_path), "SM_HPS": "{seed: 7"})


def test_hyperparameters_become_overrides_json_winning_over_the_command_line(tmp_path):
    env = _env(tmp_path, {"trainer.max_steps": 100, "experiment": "pretrain_tiny", "seed": 3})
    plan = make_plan(env, ["--seed", "9", "--run_test", "False"], environ={})
    assert plan.overrides == [
        f"hydra.run.dir={tmp_path / 'checkpoints'}",
        "trainer.max_steps=100",
        "experiment=pretrain_tiny",
        "seed=3",
        "run_test=False",
    ]
    assert plan.run_dir == tmp_path / "checkpoints"


@pytest.mark.parametrize(
    ("hps", "message"),
    [
        ({"trainer max steps": 1}, "'trainer max steps' is not a config key"),
        ({"--lr": 1}, "'--lr' is not a config key"),
        ({"hydra.run.dir": "/x"}, "'hydra.run.dir' is set by fmlab-sagemaker"),
        ({"paths.output_dir": "/x"}, "'paths.output_dir' is set by fmlab-sagemaker"),
        ({"trainer.max_stepz": 5}, "did you mean trainer.max_steps=5"),
        ({"experiment": "nope"}, "conf/experiment/ has no option 'nope'"),
    ],
)
def test_bad_hyperparameters_fail_before_anything_runs(tmp_path, hps, message):
    with pytest.raises(SageMakerError, match=message):
        make_plan(_env(tmp_path, hps), environ={})


def test_added_keys_are_checked_against_the_schema(tmp_path):
    plan = make_plan(_env(tmp_path, {"+trainer.max_stepz": 5}), environ={})
    with pytest.raises(
        ConfigError, match="trainer.max_stepz: unknown key .* did you mean 'max_steps'"
    ):
        validate_plan(plan)


def test_train_channel_maps_to_the_data_config_it_fits(tmp_path):
    train = tmp_path / "input/data/train"
    assert _mapped(make_plan(_env(tmp_path, channels=["train"]), environ={})) == [
        "data=files",
        f"data.sources=['{train}']",
    ]
    # an explicit data option keeps its settings; the channel fills its sources
    plan = make_plan(_env(tmp_path, {"data": "sft_files"}, ["train"]), environ={})
    assert _mapped(plan) == [f"data.sources=['{train}']", "data=sft_files"]
    validate_plan(plan)
    # an fmlab-prepare output (card.json) → data=prepared
    (train / "card.json").write_text("{}")
    assert _mapped(make_plan(_env(tmp_path, channels=["train"]), environ={})) == [
        "data=prepared",
        f"data.path={train}",
    ]
    # a built-in task reads no files: the channel would be silently ignored
    with pytest.raises(SageMakerError, match="channel 'train' .* not used: .*SFTDataModule"):
        make_plan(_env(tmp_path, {"experiment": "sft_classify"}, ["train"]), environ={})


def test_model_channel_is_init_from_or_the_pretrained_path(tmp_path):
    model = tmp_path / "input/data/model"
    plan = make_plan(_env(tmp_path, channels=["model"]), environ={})
    assert _mapped(plan) == [f"init_from={model}"]
    plan = make_plan(_env(tmp_path, {"model": "pretrained"}, ["model"]), environ={})
    assert _mapped(plan) == [f"model.name_or_path={model}", "model=pretrained"]


def test_other_channels_must_be_named_in_a_hyperparameter(tmp_path):
    with pytest.raises(SageMakerError, match=r"channel 'extra' .* \$\{oc.env:SM_CHANNEL_EXTRA\}"):
        make_plan(_env(tmp_path, channels=["extra"]), environ={})
    with pytest.raises(SageMakerError, match="channel 'train' .* set data.sources"):
        make_plan(_env(tmp_path, {"data.sources": ["/elsewhere"]}, ["train"]), environ={})
    hps = {"data": "files", "data.sources": "[{path: '${oc.env:SM_CHANNEL_EXTRA}', text_field: b}]"}
    plan = make_plan(_env(tmp_path, hps, ["extra"]), environ={})
    assert _mapped(plan) == ["data=files", f"data.sources={hps['data.sources']}"]


def test_hosts_and_gpus_map_to_lightning_nodes_devices_and_rendezvous(tmp_path):
    hosts = {"SM_HOSTS": '["algo-2", "algo-1", "algo-3"]', "SM_CURRENT_HOST": "algo-2"}
    env = _env(tmp_path, SM_NUM_GPUS="4", SM_MASTER_PORT="7777", **hosts)
    plan = make_plan(env, environ={})
    assert _mapped(plan) == ["trainer=ddp", "trainer.devices=4", "trainer.num_nodes=3"]
    assert plan.environ == {"MASTER_ADDR": "algo-1", "MASTER_PORT": "7777", "NODE_RANK": "1"}
    # one GPU: the single-GPU trainer; a chosen trainer and set keys are kept
    plan = make_plan(_env(tmp_path, SM_NUM_GPUS="1"), environ={})
    assert (_mapped(plan), plan.environ) == (
        ["trainer=gpu", "trainer.devices=1", "trainer.num_nodes=1"],
        {},
    )
    plan = make_plan(
        _env(tmp_path, {"trainer": "fsdp", "trainer.devices": 2}, SM_NUM_GPUS="8"), environ={}
    )
    assert _mapped(plan) == ["trainer.num_nodes=1", "trainer=fsdp", "trainer.devices=2"]
    # torchrun started the ranks: its sizes count, the rendezvous is torchrun's
    torchrun = {"LOCAL_WORLD_SIZE": "8", "WORLD_SIZE": "16", "RANK": "3"}
    plan = make_plan(_env(tmp_path, SM_NUM_GPUS="8", **hosts), environ=torchrun)
    assert (_mapped(plan), plan.environ) == (
        ["trainer=ddp", "trainer.devices=8", "trainer.num_nodes=2"],
        {},
    )
    # CPU, one host: nothing to add
    assert _mapped(make_plan(_env(tmp_path), environ={})) == []


OVERRIDES = [
    "trainer.max_steps=100",
    "optim.lr=3e-4",
    "experiment=pretrain_tiny",
    "run_test=false",
    "seed=007",
    "data.split_salt='a b,c'",
    "callbacks.lr_monitor=null",
    "+trainer.max_time='00:01:00:00'",
    "~callbacks.progress_bar",
]


def _safe_deserialize(value: str):
    """What ModelTrainer's container does with each value of hyperparameters.json."""
    try:
        return json.loads(value)
    except ValueError:
        return value


def test_launcher_hyperparameters_map_back_to_the_same_overrides(tmp_path):
    hps = hyperparameters_from_overrides(OVERRIDES)
    assert all(isinstance(v, str) for v in hps.values())
    # inside the job: hyperparameters.json → decoded → overrides with the same values
    plan = make_plan(_env(tmp_path, {k: _safe_deserialize(v) for k, v in hps.items()}), environ={})
    mine = {PARSER.parse_override(o).key_or_group: PARSER.parse_override(o) for o in plan.overrides}
    for o in map(PARSER.parse_override, OVERRIDES):
        got = mine[o.key_or_group]
        assert (got.type, got.value()) == (o.type, o.value()), o.input_line
    with pytest.raises(SageMakerError, match="a sweep"):
        hyperparameters_from_overrides(["seed=1,2"])
    with pytest.raises(SageMakerError, match="'model small' is not a config key"):
        hyperparameters_from_overrides(["model small"])
    with pytest.raises(SageMakerError, match="'data.sources=\\[a': not a Hydra override"):
        hyperparameters_from_overrides(["data.sources=[a"])
    plan = check_launch(hps, ["train"], hosts=2, gpus=8)
    assert "data.sources=['/opt/ml/input/data/train']" in plan.overrides
    assert plan.overrides[0] == "hydra.run.dir=/opt/ml/checkpoints"


def _launcher():
    spec = importlib.util.spec_from_file_location(
        "sagemaker_launch", ROOT / "scripts/sagemaker_launch.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_launcher_dry_run_describes_a_spot_job(capsys):
    launch = _launcher()
    args = ["--image", "img", "--channel", "train=s3://b/corpus/", "--spot"]
    with pytest.raises(SystemExit):
        launch.main([*args, "trainer.max_steps=10"])
    assert "--spot needs --checkpoint-s3" in capsys.readouterr().err
    launch.main(
        [
            *args,
            "--checkpoint-s3",
            "s3://b/ck/",
            "--max-run",
            "600",
            "--dry-run",
            "trainer.max_steps=10",
        ]
    )
    spec = json.loads(capsys.readouterr().out)
    assert spec["compute"]["enable_managed_spot_training"] is True
    assert spec["stopping_condition"] == {
        "max_runtime_in_seconds": 600,
        "max_wait_time_in_seconds": 1200,
    }
    assert spec["checkpoint"] == {"s3_uri": "s3://b/ck/", "local_path": "/opt/ml/checkpoints"}
    assert spec["hyperparameters"] == {"trainer.max_steps": "10"}
    assert spec["command"] == "fmlab-sagemaker"
    with pytest.raises(SystemExit, match="trainer has no key 'max_stepz'"):
        launch.main(["--image", "img", "--dry-run", "trainer.max_stepz=10"])
    if importlib.util.find_spec("sagemaker") is None:  # else this would create a real job
        with pytest.raises(SystemExit, match=r"pip install -e '.\[aws\]'"):
            launch.main(["--image", "img", "--no-check", "trainer.max_steps=10"])


def test_main_rejects_a_bad_hyperparameter_with_exit_2_and_a_failure_file(tmp_path, monkeypatch):
    monkeypatch.setenv("FMLAB_SM_ROOT", str(tmp_path))
    monkeypatch.setenv("SM_HPS", json.dumps({"trainer.max_stepz": 5}))
    monkeypatch.setenv("SM_NUM_GPUS", "0")
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert "trainer.max_stepz" in (tmp_path / "output/failure").read_text()
    assert not (tmp_path / "checkpoints").exists()
