"""What the entry points import: --help/--cfg job without torch, the core workflows without any
optional package, and the messages that name the extra when one is missing.

Import graphs are checked in fresh subprocesses (``sys.modules`` there), not by timing: the
timings live in ``scripts/bench_startup.py`` (benchmarks/README.md, "Start-up").
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fmlab.config import ConfigError, compose_config
from fmlab.utils import optional

# what `--help` and `--cfg job` must not import
HEAVY = ("torch", "lightning", "transformers", "datasets", "peft", "pyarrow", "pandas")
# packages of extras (pyproject.toml [project.optional-dependencies]) and of [dev]; not boto3:
# accelerate (through peft) imports it whenever it is installed, and fmlab never needs it
OPTIONAL = (
    "lm_eval",
    "pyspark",
    "optuna",
    "sqlalchemy",
    "submitit",
    "sagemaker",
    "s3fs",
    "tensorboard",
    "moto",
)

_ENTRY_POINTS = """
import json, sys
from hydra.core.global_hydra import GlobalHydra

heavy = {heavy!r}
found = {{}}
for module, argv in {calls!r}:
    sys.argv = [module, *argv]
    main = __import__(module, fromlist=["main"]).main
    try:
        main()
    except SystemExit as stop:
        assert not stop.code, (module, argv, stop.code)
    GlobalHydra.instance().clear()
    found[module + " " + " ".join(argv)] = sorted(m for m in heavy if m in sys.modules)
print(json.dumps(found))
"""


def _run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def test_help_and_cfg_job_import_no_torch():
    """`fmlab-* --help` (and `fmlab-train --cfg job`) are answered by Hydra/argparse before any
    model code is imported: the command lines stay fast (seconds of torch import otherwise)."""
    calls = [
        ("fmlab.train", ["--help"]),
        ("fmlab.train", ["--cfg", "job"]),
        ("fmlab.eval", ["--help"]),
        ("fmlab.prepare", ["--help"]),
        ("fmlab.generate", ["--help"]),
        ("fmlab.predict", ["--help"]),
        ("fmlab.report", ["--help"]),
        ("fmlab.sagemaker", ["--help"]),
    ]
    found = json.loads(_run_python(_ENTRY_POINTS.format(heavy=HEAVY, calls=calls)))
    assert found == {f"{m} {' '.join(a)}": [] for m, a in calls}


_CORE_GRAPH = """
import importlib, json, pkgutil, sys
import fmlab
from fmlab.config import compose_config, validate_config

skip = {skip!r}
for info in pkgutil.walk_packages(fmlab.__path__, "fmlab."):
    if info.name not in skip and not info.name.endswith(".__main__"):  # those run a command
        importlib.import_module(info.name)
cfg = compose_config("train", output_dir="unused")
validate_config(cfg)  # imports every _target_ of the default run
print(json.dumps(sorted(m for m in {optional!r} if m in sys.modules)))
"""


def test_core_modules_import_no_optional_package():
    """Every fmlab module, and the default config's targets, import without the packages of
    extras: the core install (no extras) runs the default workflows. The only module skipped is
    the Spark worker daemon (it runs inside Spark, with fmlab[spark])."""
    code = _CORE_GRAPH.format(skip={"fmlab.data.spark.daemon"}, optional=OPTIONAL)
    assert json.loads(_run_python(code)) == []


def _hide(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Make :func:`fmlab.utils.optional.missing` report ``modules`` as not installed."""
    real = optional.missing
    monkeypatch.setattr(optional, "missing", lambda m: m in modules or real(m))


def test_require_names_the_extra(monkeypatch):
    _hide(monkeypatch, "lm_eval")
    with pytest.raises(ConfigError, match=r"fmlab-eval lm_eval=.*pip install 'fmlab\[eval\]'"):
        optional.require("lm_eval", "eval", "fmlab-eval lm_eval=...")
    assert optional.require("json", "none", "x").dumps({}) == "{}"


def test_s3_paths_need_the_aws_extra(monkeypatch):
    _hide(monkeypatch, "s3fs")
    with pytest.raises(ConfigError, match=r"output_dir=s3://b/d.*'s3fs'.*fmlab\[s3\]"):
        optional.require_filesystem("s3://b/d", "output_dir=s3://b/d")
    optional.require_filesystem("/tmp/local", "output_dir")  # local paths need nothing
    optional.require_filesystem("file:///tmp/local", "output_dir")


def test_tensorboard_logger_needs_its_extra_before_compute(monkeypatch):
    from fmlab.workflow import preflight

    cfg = compose_config("train", ["logger=tensorboard"], output_dir="unused")
    preflight(cfg)  # installed here: nothing to say
    _hide(monkeypatch, "tensorboard")
    with pytest.raises(ConfigError, match=r"logger\.tensorboard .*fmlab\[tensorboard\]"):
        preflight(cfg)


def test_optuna_sweeper_and_submitit_launcher_name_their_extras(monkeypatch):
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins

    Plugins.instance()  # Hydra's plugin discovery first: it re-executes the plugin modules
    from hydra_plugins import fmlab_submitit_hint as hint
    from hydra_plugins.fmlab_optuna_sweeper.optuna_sweeper import FmlabOptunaSweeper

    _hide(monkeypatch, "optuna")
    monkeypatch.setattr(hint, "_plugin_installed", lambda: False)
    with pytest.raises(ConfigError, match=r"fmlab_optuna.*'optuna'.*fmlab\[sweeps\]"):
        FmlabOptunaSweeper().setup(hydra_context=None, task_function=None, config=None)
    with pytest.raises(ConfigError, match=r"launcher=slurm.*fmlab\[slurm\]"):
        hint.MissingSubmititLauncher(partition="gpu", timeout_min=60).setup()

    launchers = ConfigStore.instance().repo["hydra"]["launcher"]
    saved = dict(launchers)
    try:
        hint._register_if_missing()
        for name in ("submitit_slurm.yaml", "submitit_local.yaml"):
            assert launchers[name].node._target_.endswith("MissingSubmititLauncher")
    finally:  # the real plugin's entries, for later tests
        launchers.clear()
        launchers.update(saved)
