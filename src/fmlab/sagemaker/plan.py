"""From a SageMaker job to fmlab-train overrides: channels, hosts, validation, launch checks."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fmlab.sagemaker.env import SageMakerEnv
from fmlab.sagemaker.overrides import (
    SageMakerError,
    _check_key,
    _decode,
    _override,
    hydra_value,
    parse_cli,
)


@dataclass
class Plan:
    """The ``fmlab-train`` command a SageMaker job maps to."""

    overrides: list[str]  # in order: the run directory, the mapped defaults, the user's
    run_dir: Path
    environ: dict[str, str] = field(default_factory=dict)  # for Lightning's multi-node launch
    notes: list[str] = field(default_factory=list)  # how each SageMaker input was mapped


def _keys(overrides: Sequence[str]) -> set[str]:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return {o.key_or_group for o in OverridesParser.create().parse_overrides(list(overrides))}
    except HydraException as err:
        raise SageMakerError(f"not a valid override: {err}") from None


def _sets(keys: set[str], key: str) -> bool:
    return any(k == key or k.startswith(f"{key}.") for k in keys)


def _compose(overrides: Sequence[str], run_dir: Path):
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from fmlab.config import compose_config

    try:
        overrides = [o for o in overrides if not o.startswith("hydra.")]
        return compose_config("train", overrides, output_dir=run_dir)
    except (HydraException, OmegaConfBaseException) as err:
        raise SageMakerError(
            f"the hyperparameters do not form a valid fmlab-train config: {err}\n"
            f"  overrides: {' '.join(overrides)}"
        ) from None


def _unused(name: str, path: Path, why: str) -> SageMakerError:
    return SageMakerError(
        f"channel {name!r} ({path}) is not used: {why}; name ${{oc.env:SM_CHANNEL_{name.upper()}}} "
        "in a hyperparameter value or drop the channel"
    )


def _has(node: Any, key: str) -> bool:
    return key in node.keys()  # noqa: SIM118 (a "???" value is not `in` a DictConfig)


def _train_channel(path: Path, keys: set[str], cfg: Any) -> list[str]:
    if _sets(keys, "data.sources") or _sets(keys, "data.path"):
        raise _unused("train", path, "the hyperparameters set data.sources/data.path themselves")
    prepared = (path / "card.json").is_file()
    chosen = "data" in keys or "experiment" in keys
    if prepared and not chosen:
        return ["data=prepared", f"data.path={hydra_value(str(path))}"]
    if _has(cfg.data, "sources") and not prepared:
        return [
            *([] if chosen else ["data=files"]),
            f"data.sources=[{hydra_value(str(path), top=False)}]",
        ]
    if _has(cfg.data, "path"):
        return [f"data.path={hydra_value(str(path))}"]
    what = "a prepared dataset (card.json)" if prepared else "raw files"
    raise _unused(
        "train",
        path,
        f"it holds {what}, which the chosen data config "
        f"({cfg.data.get('_target_')}) does not read; choose data=files, sft_files or prepared",
    )


def _model_channel(path: Path, keys: set[str], cfg: Any) -> list[str]:
    if _sets(keys, "init_from"):
        raise _unused("model", path, "the hyperparameters set init_from themselves")
    if not _has(cfg.model, "name_or_path"):  # a preset architecture: start from its weights
        return [f"init_from={hydra_value(str(path))}"]
    if _sets(keys, "model.name_or_path"):
        raise _unused("model", path, "the hyperparameters set model.name_or_path themselves")
    return [f"model.name_or_path={hydra_value(str(path))}"]


def _map_channels(env: SageMakerEnv, user: list[str], keys: set[str], cfg: Any) -> list[str]:
    mapped: list[str] = []
    for name, path in env.channels.items():
        if any(f"SM_CHANNEL_{name.upper()}" in o for o in user):
            continue  # the user placed it
        if name == "train":
            mapped += _train_channel(path, keys, cfg)
        elif name == "model":
            mapped += _model_channel(path, keys, cfg)
        else:
            raise _unused(
                name,
                path,
                "fmlab maps only 'train' (the data; validation and test splits are "
                "cut from it, data.val_fraction/test_fraction) and 'model' (starting weights)",
            )
    return mapped


def _map_hosts(
    env: SageMakerEnv, keys: set[str], environ: Mapping[str, str]
) -> tuple[list[str], dict[str, str]]:
    process_env: dict[str, str] = {}
    if "LOCAL_WORLD_SIZE" in environ and "WORLD_SIZE" in environ:  # torchrun started the ranks
        devices = int(environ["LOCAL_WORLD_SIZE"])
        nodes = int(environ["WORLD_SIZE"]) // devices
    else:
        devices, nodes = max(env.num_gpus, 1), len(env.hosts)
        if env.num_gpus == 0 and nodes == 1:
            return [], {}
        if nodes > 1:  # Lightning's own cluster environment reads these; it starts the local ranks
            process_env = {
                "MASTER_ADDR": environ.get("SM_MASTER_ADDR") or env.hosts[0],
                "MASTER_PORT": str(env.master_port),
                "NODE_RANK": str(env.hosts.index(env.current_host)),
            }
    mapped = []
    if "trainer" not in keys:
        mapped.append("trainer=gpu" if devices * nodes == 1 else "trainer=ddp")
    for k, v in (("devices", devices), ("num_nodes", nodes)):
        if f"trainer.{k}" not in keys:
            mapped.append(f"trainer.{k}={v}")
    return mapped, process_env


def make_plan(
    env: SageMakerEnv, argv: Sequence[str] = (), environ: Mapping[str, str] | None = None
) -> Plan:
    """Map a SageMaker job onto ``fmlab-train`` overrides (composes the config to decide).

    A hyperparameter in SageMaker's JSON wins over the same key on the command line, which loses
    types (the training toolkit writes a dict as ``a=1,b=2``).

    Raises:
        SageMakerError: A bad hyperparameter key, an unused channel, or overrides Hydra rejects.
    """
    environ = os.environ if environ is None else environ
    cli, plain = parse_cli(argv)
    hps = {**env.hyperparameters, **{k: v for k, v in cli.items() if k not in env.hyperparameters}}
    user = [_override(k, v) for k, v in hps.items()] + plain
    keys = _keys(user)
    for key in keys:
        _check_key(key)
    run_dir = env.checkpoint_dir
    cfg = _compose(user, run_dir)
    mapped = _map_channels(env, user, keys, cfg)
    trainer, process_env = _map_hosts(env, keys, environ)
    notes = [f"hyperparameter {o}" for o in user]
    notes += [f"channel {n} ({p})" for n, p in env.channels.items()]
    notes.append(f"{len(env.hosts)} host(s) x {env.num_gpus} GPU(s): {' '.join(trainer) or '-'}")
    notes.append(f"run directory = checkpoint directory = {run_dir}")
    overrides = [f"hydra.run.dir={hydra_value(str(run_dir))}", *mapped, *trainer, *user]
    return Plan(overrides, run_dir, process_env, notes)


def validate_plan(plan: Plan) -> None:
    """Compose and strictly validate the planned config (what ``fmlab-train`` will check first).

    Raises:
        SageMakerError: Hydra rejects an override.
        ConfigError: The schema rejects a key or value (``+`` keys included).
    """
    from fmlab.config import validate_config

    validate_config(_compose(plan.overrides, plan.run_dir))


def check_launch(
    hyperparameters: Mapping[str, str], channels: Sequence[str] = (), hosts: int = 1, gpus: int = 0
) -> Plan:
    """Run the job's mapping and config validation here, on placeholder channels and hosts, so
    that a bad hyperparameter fails before an instance is paid for.

    Raises:
        SageMakerError: What :func:`make_plan` rejects.
        ConfigError: What fmlab-train would reject.
    """
    with tempfile.TemporaryDirectory() as tmp:
        env = SageMakerEnv.from_environ(
            {
                "FMLAB_SM_ROOT": tmp,
                # inside the job they come back JSON-decoded (ModelTrainer's safe_deserialize)
                "SM_HPS": json.dumps({k: _decode(v) for k, v in hyperparameters.items()}),
                "SM_CHANNELS": json.dumps(list(channels)),
                **{f"SM_CHANNEL_{n.upper()}": f"/opt/ml/input/data/{n}" for n in channels},
                "FMLAB_SM_CHECKPOINT_DIR": "/opt/ml/checkpoints",
                "SM_HOSTS": json.dumps([f"algo-{i + 1}" for i in range(hosts)]),
                "SM_CURRENT_HOST": "algo-1",
                "SM_NUM_GPUS": str(gpus),
            }
        )
        plan = make_plan(env, environ={})
        validate_plan(plan)
    return plan
