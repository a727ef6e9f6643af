"""Running fmlab-train in the job and handing its outputs to SageMaker."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from fmlab.cli import guard, last_failure
from fmlab.config import ConfigError
from fmlab.sagemaker.env import SageMakerEnv, _read_json
from fmlab.sagemaker.plan import Plan, make_plan, validate_plan
from fmlab.utils.secrets import redact_text

log = logging.getLogger("fmlab.sagemaker")

_MAPPED_ENV = "FMLAB_SM_MAPPED"
_COPIED = ("summary.json", "config.yaml", "csv/metrics.csv", ".hydra/overrides.yaml", "train.log")


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
        what = f"{summary.get('error_type')}: {reason}" if reason else None
        what = what or last_failure() or "see the job's logs"
        _write_failure(env, f"fmlab-train failed (exit {code}): {what}")


@guard
def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point ``fmlab-sagemaker`` (also ``python -m fmlab.sagemaker``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if os.environ.get(_MAPPED_ENV):  # a rank process started by Lightning: argv is mapped
        raise SystemExit(_run_train(argv))
    if argv[:1] == ["--help"]:
        import fmlab.sagemaker

        print(fmlab.sagemaker.__doc__)  # the package's: the whole mapping
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
