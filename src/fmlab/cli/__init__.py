"""What every console script shares: error reports, the run's console and log, failed attempts.

Each Hydra entry point is ``@hydra_main("<config>")`` around its job function; the argparse ones
(``fmlab-report``, ``fmlab-sagemaker``) are wrapped by :func:`guard`. Then:

- an expected failure (:mod:`fmlab.cli.errors`) prints ``<prog>: error: <message>`` and exits 2
  (1 when the run itself failed, e.g. a diverged loss), without a traceback; a bug prints its
  traceback and exits 1. ``verbose=true`` anywhere on the command line (taken off before Hydra
  sees it), ``FMLAB_VERBOSE=1`` or ``HYDRA_FULL_ERROR=1`` show the traceback of every failure
  and the console noise that is normally filtered;
- a single run that fails on the user's input before writing anything of value (only Hydra's
  ``.hydra/``, the log, ``config.yaml``) leaves no run directory behind; a job of a multirun is
  recorded as failed instead (:mod:`fmlab.sweeps`);
- Ctrl-C outside training ends with exit 130 and one line (inside training it is handled by
  :class:`fmlab.reliability.PreemptionCheckpoint`: checkpoint, summary, resume command);
- the job's console and ``<run>/<task>.log``: :mod:`fmlab.cli.console`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["discard_failed_attempt", "guard", "hydra_main", "last_failure", "verbose"]

_VERBOSE_ARGS = {f"{p}verbose={v}" for p in ("", "+", "++") for v in ("true", "1", "yes", "on")}
_QUIET_ARGS = {f"{p}verbose={v}" for p in ("", "+", "++") for v in ("false", "0", "no", "off")}


class _State:
    job_started = False
    log_file: str | None = None
    last_failure: str | None = None
    pending: BaseException | None = None


def verbose() -> bool:
    """Whether failures show tracebacks and the console shows third-party noise."""
    value = os.environ.get("FMLAB_VERBOSE")
    if value is not None:
        return value.lower() in ("1", "true", "yes", "on")
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def _take_verbose_switch() -> None:
    """Remove ``verbose=...`` from ``sys.argv`` into ``FMLAB_VERBOSE`` (ranks inherit it)."""
    args = sys.argv[1:]
    if any(a.lower() in _VERBOSE_ARGS for a in args):
        os.environ["FMLAB_VERBOSE"] = "1"
    elif any(a.lower() in _QUIET_ARGS for a in args):
        os.environ["FMLAB_VERBOSE"] = "0"
    else:
        os.environ.setdefault("FMLAB_VERBOSE", "1" if verbose() else "0")
    sys.argv[1:] = [a for a in args if a.lower() not in _VERBOSE_ARGS | _QUIET_ARGS]


def _prog() -> str:
    name = Path(sys.argv[0]).name
    return name if name.startswith("fmlab") else "fmlab"


def last_failure() -> str | None:
    """The message of the last failure reported in this process (e.g. for SageMaker)."""
    return _State.last_failure


def _report(err: BaseException) -> int:
    from fmlab.cli.errors import classify, print_failure

    failure = classify(err, overrides=sys.argv[1:], before_job=not _State.job_started)
    _State.last_failure = failure.message
    print_failure(_prog(), err, failure, verbose=verbose(), log_file=_State.log_file)
    return failure.code


def guard(main: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a console entry point: expected failures become a message and exit 2."""

    @functools.wraps(main)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        saved = {k: os.environ.get(k) for k in ("FMLAB_VERBOSE", "HYDRA_FULL_ERROR")}
        _take_verbose_switch()
        # Hydra prints its own (partial) report and exits 1 unless told to re-raise: we report
        os.environ["HYDRA_FULL_ERROR"] = "1"
        try:
            result = main(*args, **kwargs)
            if _State.pending is not None:  # a single run's failure, kept from Hydra (see _job)
                err, _State.pending = _State.pending, None
                raise err
            return result
        except SystemExit:
            raise
        except KeyboardInterrupt:
            sys.stderr.write(f"\n{_prog()}: interrupted (Ctrl-C)\n")
            raise SystemExit(130) from None
        except Exception as err:
            raise SystemExit(_report(err)) from None
        finally:  # in-process callers (tests, SageMaker's entry point) get their environment back
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    return wrapped


def _is_rank_zero() -> bool:
    ranks = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")
    return all(os.environ.get(v, "0") in ("", "0") for v in ranks)


def discard_failed_attempt(run_dir: Path, log_name: str) -> bool:
    """Delete ``run_dir`` if this failed attempt left nothing of value in it.

    Of value is anything but Hydra's ``.hydra/``, the job log, ``config.yaml``, the run lock and
    a ``summary.json`` that only records the failure: a directory with checkpoints (a run being
    resumed) or results is never touched.
    """
    if not run_dir.is_dir() or not (run_dir / ".hydra").is_dir():
        return False
    entries = list(run_dir.iterdir())
    for path in entries:
        if path.name in (".hydra", ".fmlab.lock", "config.yaml", log_name):
            continue
        if path.name == "summary.json":  # disposable if it records the failure and no metric
            try:
                summary = json.loads(path.read_text())
            except (OSError, ValueError):
                return False
            if summary.get("status") == "failed" and not any("/" in k for k in summary):
                continue
        return False
    for path in entries:  # the contents, then the directory (which may be a mount point)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        run_dir.rmdir()
    return True


def _announce(cfg: Any) -> None:
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    overrides = " ".join(hc.overrides.task) or "(none: the defaults)"
    log = logging.getLogger("fmlab")
    log.info("%s: run directory %s", _prog(), hc.runtime.output_dir)
    log.info("overrides: %s", overrides)


def _job(task: Callable[[Any], Any], cfg: Any) -> Any:
    """One Hydra job: console and log, then ``task(cfg)``; a failed attempt is cleaned up."""
    from hydra.core.hydra_config import HydraConfig

    from fmlab.cli.console import setup_job_logging
    from fmlab.cli.errors import classify

    _State.job_started = True
    _State.log_file = setup_job_logging(verbose())
    if _is_rank_zero():
        _announce(cfg)
    try:
        return task(cfg)
    except Exception as err:
        from fmlab.sweeps import is_multirun

        hc = HydraConfig.get()
        if _is_rank_zero() and not classify(err).bug:
            run_dir = Path(hc.runtime.output_dir)
            if discard_failed_attempt(run_dir, f"{hc.job.name}.log"):
                _State.log_file = None
                logging.getLogger("fmlab").info("nothing ran: %s removed", run_dir)
        if is_multirun():  # Hydra stops the sweep and names the job's overrides
            raise
        _State.pending = err  # reported by guard(), without Hydra's extra "Error executing job"
        return None


def hydra_main(config_name: str) -> Callable[[Callable[[Any], Any]], Callable[..., Any]]:
    """``@hydra.main`` on ``conf/<config_name>.yaml`` plus everything this module describes.

    The decorated function keeps its module (Hydra names the job and its log file after it:
    ``fmlab.train`` → ``train.log``). Called with a config (``main(cfg)``) it runs the job
    directly, as ``@hydra.main`` does.
    """
    import hydra

    from fmlab.config import CONF_DIR

    def decorate(task: Callable[[Any], Any]) -> Callable[..., Any]:
        @functools.wraps(task)
        def job(cfg: Any) -> Any:
            return _job(task, cfg)

        entry = hydra.main(config_path=str(CONF_DIR), config_name=config_name, version_base="1.3")(
            job
        )

        @functools.wraps(task)
        def main(cfg: Any = None) -> Any:
            if cfg is not None:
                return task(cfg)
            return guard(entry)()

        return main

    return decorate
