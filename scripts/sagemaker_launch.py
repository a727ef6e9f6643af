"""Launch ``fmlab-train`` as an Amazon SageMaker training job (ModelTrainer, SDK v3).

    pip install -e '.[aws]'
    python scripts/sagemaker_launch.py --image <training image URI> --role <execution role ARN> \\
        --instance-type ml.g5.2xlarge --channel train=s3://bucket/corpus/ \\
        --spot --max-run 86400 --max-wait 172800 --checkpoint-s3 s3://bucket/fmlab/run-1/ \\
        --output-s3 s3://bucket/fmlab/output/ model=small trainer.max_steps=20000

Trailing ``key=value`` arguments are fmlab-train overrides; they travel as SageMaker
hyperparameters and ``fmlab-sagemaker`` (``fmlab.sagemaker``, which holds all the mapping) turns
them, the channels and the hosts back into overrides inside the job. They are checked here first
(the job's own mapping and config validation, on placeholders), so a typo costs no instance.
``--dry-run`` prints the job description and needs neither the SDK nor AWS.

The job runs ``fmlab-sagemaker`` in the image. ``--install wheel`` (default) ships a wheel of this
checkout and pip-installs it (and fmlab's dependencies, from PyPI) at job start: use an image
with torch (a SageMaker PyTorch training image). ``--install none``: the image has fmlab.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from fmlab.config import ConfigError
from fmlab.sagemaker import check_launch, hyperparameters_from_overrides

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = "/opt/ml/checkpoints"  # SageMaker's default checkpoint_local_path
METRICS = ("val/loss", "val/ppl", "test/loss", "test/ppl")


def _pairs(values: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise SystemExit(f"{what} {item!r}: expected NAME=VALUE")
        out[name] = value
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--image", required=True, help="training image URI (ECR)")
    p.add_argument("--role", help="execution role ARN (default: the SDK's default role)")
    p.add_argument("--instance-type", default="ml.g5.xlarge")
    p.add_argument("--instance-count", type=int, default=1)
    p.add_argument("--gpus-per-instance", type=int, default=1, help="for the local check only")
    p.add_argument("--volume-gb", type=int, default=100)
    p.add_argument("--channel", action="append", default=[], help="NAME=s3://... (repeat)")
    p.add_argument("--spot", action="store_true", help="managed spot training")
    p.add_argument("--max-run", type=int, default=24 * 3600, help="seconds of training")
    p.add_argument("--max-wait", type=int, help="seconds incl. waiting for spot (>= max-run)")
    p.add_argument("--checkpoint-s3", help="S3 prefix synced with /opt/ml/checkpoints")
    p.add_argument("--output-s3", help="S3 prefix for model.tar.gz and output.tar.gz")
    p.add_argument("--job-name", default="fmlab", help="base job name")
    p.add_argument("--install", choices=("wheel", "none"), default="wheel")
    p.add_argument("--env", action="append", default=[], help="KEY=VALUE in the job (repeat)")
    p.add_argument("--no-check", action="store_true", help="skip the local config check")
    p.add_argument("--no-wait", action="store_true", help="return once the job is created")
    p.add_argument("--dry-run", action="store_true", help="print the job description only")
    p.add_argument("overrides", nargs="*", help="fmlab-train overrides: key=value")
    args = p.parse_args(argv)
    if args.spot and not args.checkpoint_s3:
        p.error("--spot needs --checkpoint-s3: the checkpoints must outlive an interruption")
    if args.spot:
        args.max_wait = args.max_wait or 2 * args.max_run
        if args.max_wait < args.max_run:
            p.error(f"--max-wait {args.max_wait} < --max-run {args.max_run}")
    elif args.max_wait:
        p.error("--max-wait applies to --spot only")
    return args


def job_spec(args: argparse.Namespace) -> dict:
    """The job description as plain data (what --dry-run prints)."""
    channels = _pairs(args.channel, "--channel")
    bad = [f"{n}={u}" for n, u in channels.items() if not u.startswith("s3://")]
    if bad:
        raise SystemExit(f"--channel {bad[0]}: expected an s3:// URI")
    try:
        hps = hyperparameters_from_overrides(args.overrides)
        plan = None
        if not args.no_check:
            plan = check_launch(hps, list(channels), args.instance_count, args.gpus_per_instance)
    except ConfigError as err:
        raise SystemExit(f"sagemaker_launch: {err}") from None
    return {
        "base_job_name": args.job_name,
        "training_image": args.image,
        "role": args.role,
        "command": "fmlab-sagemaker",
        "install": args.install,
        "compute": {
            "instance_type": args.instance_type,
            "instance_count": args.instance_count,
            "volume_size_in_gb": args.volume_gb,
            "enable_managed_spot_training": args.spot,
        },
        "stopping_condition": {
            "max_runtime_in_seconds": args.max_run,
            "max_wait_time_in_seconds": args.max_wait,
        },
        "checkpoint": {"s3_uri": args.checkpoint_s3, "local_path": CHECKPOINTS},
        "output_s3": args.output_s3,
        "channels": channels,
        "hyperparameters": hps,
        "environment": _pairs(args.env, "--env"),
        "metric_definitions": [
            {"name": m, "regex": f"fmlab-metric {m}=([-+0-9.eEinfa]+)"} for m in METRICS
        ],
        "in_job_overrides": plan.overrides if plan else None,
    }


def _sdk():
    """ModelTrainer and its config classes: SDK v3, else the v2 preview (``sagemaker.modules``)."""
    try:
        from sagemaker.train import ModelTrainer

        try:
            from sagemaker.core.training import configs
        except ImportError:  # v3 before the configs moved to sagemaker-core
            from sagemaker.train import configs
    except ImportError:
        try:
            from sagemaker.modules import configs
            from sagemaker.modules.train import ModelTrainer
        except ImportError:
            raise SystemExit(
                "sagemaker_launch: the SageMaker Python SDK with ModelTrainer is not installed: "
                "pip install -e '.[aws]' (sagemaker>=3); --dry-run works without it"
            ) from None
    return ModelTrainer, configs


def _wheel_dir(tmp: Path) -> Path:
    """A source dir with a wheel of this checkout and a requirements.txt that installs it."""
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp), str(ROOT)]
    try:  # no isolated build env (and no download) when the build backend is here
        import hatchling  # noqa: F401

        cmd.insert(4, "--no-build-isolation")
    except ImportError:
        pass
    subprocess.run(cmd, check=True)
    wheels = sorted(tmp.glob("fmlab-*.whl"))
    # the job installs from its working directory, the uploaded source dir
    (tmp / "requirements.txt").write_text(f"./{wheels[-1].name}\n")
    return tmp


def launch(spec: dict, wait: bool) -> None:
    """Create the training job described by ``spec`` with the SageMaker SDK."""
    ModelTrainer, c = _sdk()
    with tempfile.TemporaryDirectory() as tmp:
        source = {"command": spec["command"]}
        if spec["install"] == "wheel":
            source.update(source_dir=str(_wheel_dir(Path(tmp))), requirements="requirements.txt")
        stop = {k: v for k, v in spec["stopping_condition"].items() if v is not None}
        trainer = ModelTrainer(
            training_image=spec["training_image"],
            role=spec["role"],
            base_job_name=spec["base_job_name"],
            source_code=c.SourceCode(**source),
            compute=c.Compute(**spec["compute"]),
            stopping_condition=c.StoppingCondition(**stop),
            checkpoint_config=(
                c.CheckpointConfig(**spec["checkpoint"]) if spec["checkpoint"]["s3_uri"] else None
            ),
            output_data_config=(
                c.OutputDataConfig(s3_output_path=spec["output_s3"]) if spec["output_s3"] else None
            ),
            hyperparameters=spec["hyperparameters"],
            environment=spec["environment"],
        ).with_metric_definitions([c.MetricDefinition(**m) for m in spec["metric_definitions"]])
        inputs = [c.InputData(channel_name=n, data_source=u) for n, u in spec["channels"].items()]
        trainer.train(input_data_config=inputs, wait=wait)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    spec = job_spec(args)
    if args.dry_run:
        print(json.dumps(spec, indent=2))
        return
    launch(spec, wait=not args.no_wait)


if __name__ == "__main__":
    main()
