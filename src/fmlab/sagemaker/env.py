"""The SageMaker job as fmlab sees it: ``/opt/ml`` files and ``SM_*`` variables."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fmlab.sagemaker.overrides import SageMakerError, _decode


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
