"""``fmlab-sagemaker``: ``fmlab-train`` inside an Amazon SageMaker training job.

SageMaker describes a job with files under ``/opt/ml`` and ``SM_*`` environment variables. This
entry point turns them into Hydra overrides of ``fmlab-train`` and runs it in this process:

- hyperparameters (``SM_HPS``, ``input/config/hyperparameters.json``, or ``--key value`` on the
  command line) are overrides: ``trainer.max_steps: 100`` → ``trainer.max_steps=100``,
  ``experiment: sft_classify`` → ``experiment=sft_classify``; keys may carry Hydra's ``+``/``~``;
- channel ``train`` is the data: ``data.sources=[<dir>]`` (``data=files`` unless a data option or
  experiment is chosen), or ``data=prepared data.path=<dir>`` when it holds an fmlab-prepare output
  (``card.json``); channel ``model`` is the starting weights: ``model.name_or_path`` with
  ``model=pretrained``, else ``init_from``. Any other channel must be named in a hyperparameter
  value as ``${oc.env:SM_CHANNEL_<NAME>}``; a channel nothing uses is an error;
- the run directory is the checkpoint directory (``/opt/ml/checkpoints``, which SageMaker syncs
  with ``checkpoint_s3_uri``), so a restarted spot job finds its checkpoints and ``resume=auto``
  continues; ``<run>/export`` is copied to ``SM_MODEL_DIR`` (uploaded as ``model.tar.gz``) and the
  summary, config and metrics to ``SM_OUTPUT_DATA_DIR``; ``fmlab-metric <name>=<value>`` lines
  are printed for ``metric_definitions``;
- ``SM_HOSTS``/``SM_CURRENT_HOST``/``SM_NUM_GPUS`` → ``trainer.num_nodes``/``trainer.devices``
  (``trainer=gpu``/``ddp`` unless one is chosen) and ``MASTER_ADDR``/``MASTER_PORT``/``NODE_RANK``:
  SageMaker starts this command once per host and Lightning starts one process per GPU. Under
  ``torchrun`` the ranks come from torchrun and nothing is set.

Exit codes: 0 done; 1 the run failed; 2 the hyperparameters or channels do not form a valid
config (nothing ran); 143 SIGTERM (``last.ckpt`` written; a restart resumes). The reason for a
non-zero exit goes to ``/opt/ml/output/failure``, which SageMaker shows as the failure reason.
``FMLAB_SM_ROOT`` replaces ``/opt/ml`` and ``FMLAB_SM_CHECKPOINT_DIR`` the checkpoint directory
(as ``checkpoint_local_path``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fmlab.config import ConfigError
from fmlab.utils.secrets import redact_text

__all__ = [
    "Plan",
    "SageMakerEnv",
    "SageMakerError",
    "check_launch",
    "collect",
    "hydra_value",
    "hyperparameters_from_overrides",
    "main",
    "make_plan",
    "parse_cli",
    "validate_plan",
]

log = logging.getLogger("fmlab.sagemaker")

# Set for the rank processes Lightning starts by re-running this command: their argv is already
# the mapped override list, and only the first process collects outputs.
_MAPPED_ENV = "FMLAB_SM_MAPPED"
_KEY = re.compile(r"(~|\+\+|\+)?[A-Za-z_][\w-]*(/[\w-]+)*(\.[\w-]+)*(@[\w.-]*)?")
_DICT_KEY = re.compile(r"[A-Za-z_][\w-]*")
_COPIED = ("summary.json", "config.yaml", "csv/metrics.csv", ".hydra/overrides.yaml", "train.log")


class SageMakerError(ConfigError):
    """The SageMaker job description cannot be mapped onto fmlab-train (names the input)."""


def _decode(value: Any) -> Any:
    """A hyperparameter as SageMaker stringified it → its value (JSON if it parses, else text)."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def _quote(text: str) -> str:
    # Hydra's quoted strings: escape quotes, and double the backslashes right before a quote or
    # at the end (elsewhere a backslash is literal).
    body = re.sub(r"(\\*)('|$)", lambda m: m[1] * 2 + ("\\'" if m[2] else ""), text)
    return f"'{body}'"


def _parses_as_value(text: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        override = OverridesParser.create().parse_override(f"k={text}")
    except Exception:
        return False
    return not override.is_sweep_override()


def hydra_value(value: Any, *, top: bool = True) -> str:
    """A Python value as a Hydra override value.

    A top-level string that Hydra parses as one value is used as written, so a hyperparameter
    may hold Hydra syntax (``[{path: x, text_field: body}]``, ``${oc.env:SM_CHANNEL_X}``);
    anything else (``1,2`` would be a sweep) is quoted. Strings inside lists/dicts are quoted.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(hydra_value(v, top=False) for v in value) + "]"
    if isinstance(value, dict):
        bad = [k for k in value if not _DICT_KEY.fullmatch(str(k))]
        if bad:
            raise SageMakerError(f"dict key {bad[0]!r} cannot be written as a Hydra override key")
        return "{" + ", ".join(f"{k}: {hydra_value(v, top=False)}" for k, v in value.items()) + "}"
    text = str(value)
    return text if top and text and _parses_as_value(text) else _quote(text)


def _check_key(key: str) -> None:
    if not _KEY.fullmatch(key):
        raise SageMakerError(
            f"hyperparameter {key!r} is not a config key: expected a dotted key such as "
            "trainer.max_steps or a config group such as experiment, optionally prefixed by "
            "+, ++ or ~"
        )
    bare = key.lstrip("+~")
    if bare == "hydra" or bare.startswith(("hydra.", "hydra/")) or bare == "paths.output_dir":
        raise SageMakerError(
            f"{key!r} is set by fmlab-sagemaker: the run directory is the checkpoint directory, "
            "so that a restarted job resumes (FMLAB_SM_CHECKPOINT_DIR moves it)"
        )


def _override(key: str, value: Any) -> str:
    _check_key(key)
    if key.startswith("~") and value in (None, ""):
        return key
    return f"{key}={hydra_value(value)}"


def parse_cli(argv: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """Split a SageMaker command line into hyperparameters and plain Hydra overrides.

    SageMaker passes ``--key value`` pairs (``-k value`` for one-letter keys), values stringified
    by ``str()`` (training toolkit) or ``json.dumps`` (ModelTrainer); ``--key=value`` and plain
    ``key=value`` overrides are accepted too.

    Raises:
        SageMakerError: A ``--key`` without a value.
    """
    hps: dict[str, Any] = {}
    plain: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("-"):
            plain.append(token)
            i += 1
            continue
        name = token[2:] if token.startswith("--") else token[1:]
        if "=" in name:
            key, raw = name.split("=", 1)
            i += 1
        elif i + 1 < len(argv):  # always a pair: the value may itself start with "-" ("-1")
            key, raw = name, argv[i + 1]
            i += 2
        else:
            raise SageMakerError(f"command-line hyperparameter {token!r} has no value")
        hps[key] = _decode(raw)
    return hps, plain


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise SageMakerError(f"{path}: not valid JSON ({err})") from None


def _env_json(environ: Mapping[str, str], name: str) -> Any:
    if not environ.get(name):
        return None
    try:
        return json.loads(environ[name])
    except ValueError as err:
        raise SageMakerError(f"environment variable {name}: not valid JSON ({err})") from None


@dataclass
class SageMakerEnv:
    """What SageMaker tells the container: ``SM_*`` variables first, then ``SM_TRAINING_ENV``,
    then the files under ``<root>/input/config`` (a container without SageMaker's training
    toolkit has only those), then the standard paths under ``<root>``."""

    root: Path
    hyperparameters: dict[str, Any]
    channels: dict[str, Path]
    model_dir: Path
    output_dir: Path
    output_data_dir: Path
    checkpoint_dir: Path
    hosts: list[str]
    current_host: str
    num_gpus: int
    master_port: int = 7777

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> SageMakerEnv:
        """Read the job description (``os.environ`` by default).

        Raises:
            SageMakerError: A malformed JSON variable or file, naming it.
        """
        env = os.environ if environ is None else environ
        root = Path(env.get("FMLAB_SM_ROOT", "/opt/ml"))
        config = root / "input" / "config"
        te = _env_json(env, "SM_TRAINING_ENV") or {}
        resources = _read_json(config / "resourceconfig.json") or {}

        hps = _env_json(env, "SM_HPS")
        if hps is None:
            hps = te.get("hyperparameters")
        if hps is None:  # the raw file: every value is a string, JSON-encoded by the SDK
            hps = {
                k: _decode(v)
                for k, v in (_read_json(config / "hyperparameters.json") or {}).items()
            }
        # sagemaker_program, sagemaker_region, ...: the SDK's own settings, not the user's
        hps = {k: v for k, v in hps.items() if not k.startswith("sagemaker_")}

        names = _env_json(env, "SM_CHANNELS") or list(te.get("channel_input_dirs") or {})
        names = names or list(_read_json(config / "inputdataconfig.json") or {})
        names = names or [k[11:].lower() for k in env if k.startswith("SM_CHANNEL_")]
        dirs = te.get("channel_input_dirs") or {}
        channels = {
            n: Path(env.get(f"SM_CHANNEL_{n.upper()}") or dirs.get(n) or root / "input/data" / n)
            for n in names
        }

        def path(var: str, key: str, default: Path) -> Path:
            return Path(env.get(var) or te.get(key) or default)

        current = env.get("SM_CURRENT_HOST") or te.get("current_host")
        current = current or resources.get("current_host") or "algo-1"
        hosts = _env_json(env, "SM_HOSTS") or te.get("hosts") or resources.get("hosts")
        gpus = env.get("SM_NUM_GPUS") or te.get("num_gpus")
        if gpus is None:
            import torch

            gpus = torch.cuda.device_count()
        if hosts and current not in hosts:
            raise SageMakerError(f"SM_CURRENT_HOST={current!r} is not one of SM_HOSTS={hosts}")
        port = env.get("MASTER_PORT") or env.get("SM_MASTER_PORT") or te.get("master_port") or 7777
        return cls(
            root=root,
            hyperparameters=hps,
            channels=channels,
            model_dir=path("SM_MODEL_DIR", "model_dir", root / "model"),
            output_dir=path("SM_OUTPUT_DIR", "output_dir", root / "output"),
            output_data_dir=path("SM_OUTPUT_DATA_DIR", "output_data_dir", root / "output/data"),
            checkpoint_dir=Path(env.get("FMLAB_SM_CHECKPOINT_DIR") or root / "checkpoints"),
            hosts=sorted(hosts or [current]),  # SageMaker's convention: the first sorted is master
            current_host=current,
            num_gpus=int(gpus),
            master_port=int(port),
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


def hyperparameters_from_overrides(overrides: Sequence[str]) -> dict[str, str]:
    """The launcher's side: ``key=value`` overrides → SageMaker hyperparameters.

    Values stay strings in Hydra syntax; inside the job :func:`make_plan` maps them back.

    Raises:
        SageMakerError: Not an override, a bad or reserved key, or a sweep (``a=1,2``).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    hps: dict[str, str] = {}
    for arg in overrides:
        key, _, value = arg.partition("=")
        _check_key(key)
        try:
            sweep = OverridesParser.create().parse_override(arg).is_sweep_override()
        except HydraException as err:
            raise SageMakerError(f"{arg!r}: not a Hydra override ({err})") from None
        if sweep:
            raise SageMakerError(f"{arg!r}: a sweep; a job runs one config (use a tuning job)")
        hps[key] = value
    return hps


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


def _exit_code(err: SystemExit) -> int:
    if err.code is None or isinstance(err.code, int):
        return int(err.code or 0)
    return 1  # sys.exit("message")


def _run_train(overrides: Sequence[str]) -> int:
    from fmlab.train import main as train_main

    sys.argv = [sys.argv[0], *overrides]  # @hydra.main reads the command line
    try:
        train_main()
    except SystemExit as err:  # Preempted → 143; Hydra's error report → 1
        return _exit_code(err)
    return 0


def _link_or_copy(src: str, dst: str) -> None:
    try:  # same volume: no second copy of the weights on disk
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _write_failure(env: SageMakerEnv, message: str) -> None:
    env.output_dir.mkdir(parents=True, exist_ok=True)
    with (env.output_dir / "failure").open("a") as fh:  # SageMaker shows its first 1 KiB
        fh.write(message.strip() + "\n")


def collect(env: SageMakerEnv, plan: Plan, code: int) -> None:
    """After the run: export → ``SM_MODEL_DIR``, summary/config/metrics → ``SM_OUTPUT_DATA_DIR``,
    metric lines for ``metric_definitions``, the failure reason → ``<output>/failure``."""
    run = plan.run_dir
    env.output_data_dir.mkdir(parents=True, exist_ok=True)
    for rel in _COPIED:
        if (run / rel).is_file():
            shutil.copy2(run / rel, env.output_data_dir / Path(rel).name)
    summary = _read_json(run / "summary.json") or {}
    if code == 0:
        if (run / "export").is_dir():
            env.model_dir.mkdir(parents=True, exist_ok=True)
            shutil.copytree(
                run / "export", env.model_dir, copy_function=_link_or_copy, dirs_exist_ok=True
            )
            log.info("export copied to %s", env.model_dir)
        else:
            log.warning("no %s (export.hf=false?): %s stays empty", run / "export", env.model_dir)
        for key, value in summary.items():
            if "/" in key and isinstance(value, int | float):
                print(f"fmlab-metric {key}={value}", flush=True)
    elif code == 143:
        _write_failure(
            env,
            f"fmlab: stopped by SIGTERM at step {summary.get('global_step')}; checkpoint "
            f"{summary.get('checkpoint')} is in {run}: a restarted job resumes from it",
        )
    else:
        reason = summary.get("error") if summary.get("status") == "failed" else None
        what = f"{summary.get('error_type')}: {reason}" if reason else "see the job's logs"
        _write_failure(env, f"fmlab-train failed (exit {code}): {what}")


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point ``fmlab-sagemaker`` (also ``python -m fmlab.sagemaker``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if os.environ.get(_MAPPED_ENV):  # a rank process started by Lightning: argv is mapped
        raise SystemExit(_run_train(argv))
    if argv[:1] == ["--help"]:
        print(__doc__)
        return
    logging.basicConfig(level=logging.INFO, format="[fmlab-sagemaker] %(message)s")
    env = None
    try:
        env = SageMakerEnv.from_environ()
        for name, path in env.channels.items():  # ${oc.env:SM_CHANNEL_X} without the toolkit too
            os.environ.setdefault(f"SM_CHANNEL_{name.upper()}", str(path))
        plan = make_plan(env, argv)
        validate_plan(plan)
    except ConfigError as err:
        print(f"fmlab-sagemaker: {err}", file=sys.stderr)
        if env is not None:
            _write_failure(env, f"fmlab-sagemaker: {err}"[:4000])
        raise SystemExit(2) from None
    for note in plan.notes:
        log.info("%s", redact_text(note))
    env.output_data_dir.mkdir(parents=True, exist_ok=True)
    shown = {"overrides": [redact_text(o) for o in plan.overrides], "environ": plan.environ}
    (env.output_data_dir / "sagemaker_plan.json").write_text(json.dumps(shown, indent=2))
    for key, value in plan.environ.items():
        os.environ.setdefault(key, value)
    os.environ[_MAPPED_ENV] = "1"
    code = _run_train(plan.overrides)
    if all(os.environ.get(v, "0") in ("", "0") for v in ("RANK", "NODE_RANK")):
        collect(env, plan, code)
    raise SystemExit(code)


if __name__ == "__main__":
    main()
