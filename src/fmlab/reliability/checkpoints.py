"""Checking checkpoints and choosing the one to resume from.

``resume`` (train.yaml) decides what happens when a run starts:

- ``auto`` (default): resume from ``ckpt_path`` if given, else from the newest valid checkpoint
  in this run directory (``checkpoints/*.ckpt`` and SLURM's ``hpc_ckpt_*.ckpt``); a corrupt,
  truncated or empty file is skipped with a warning naming it and the next newest valid one is
  used. Nothing to resume from: a fresh start.
- ``must``: as ``auto``, but no valid checkpoint is an error (plain Lightning only warns).
- ``off``: ignore checkpoints in the run directory; a given ``ckpt_path`` must be valid.

``ckpt_path=s3://...`` and ``paths.remote_dir`` (checkpoints mirrored to object storage) follow the
same rules; remote files are downloaded and checked first (:mod:`fmlab.reliability.remote`).
"""

from __future__ import annotations

import logging
import pickle
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from fmlab.config import ConfigError
from fmlab.reliability.sharded import is_sharded_checkpoint
from fmlab.utils.remote import is_remote

__all__ = [
    "CheckpointError",
    "CheckpointInfo",
    "ResumeMode",
    "inspect_checkpoint",
    "remove_stale_temporaries",
    "resolve_eval_checkpoint",
    "resolve_resume",
]

log = logging.getLogger(__name__)

ResumeMode = Literal["auto", "must", "off"]
# What a Lightning training checkpoint holds; without these, fit cannot continue from it.
_REQUIRED = ("state_dict", "loops", "optimizer_states", "global_step", "epoch")


class CheckpointError(ConfigError):
    """A checkpoint cannot be used: the message names the file and what is wrong with it."""


@dataclass(frozen=True)
class CheckpointInfo:
    """What :func:`inspect_checkpoint` found: ``problem`` is None for a usable checkpoint."""

    path: Path
    problem: str | None = None
    global_step: int = -1
    mtime: float = 0.0

    @property
    def ok(self) -> bool:
        return self.problem is None


def inspect_checkpoint(path: str | Path) -> CheckpointInfo:
    """Open ``path`` safely (``weights_only=True``, mmap) and say whether it can resume a run.

    Nothing from the file is executed: a checkpoint with pickled code is reported, not loaded.
    """
    p = Path(path)
    if not p.exists():
        return CheckpointInfo(p, "does not exist")
    if is_sharded_checkpoint(p):  # (FSDP) a directory of shards + meta.pt
        from fmlab.reliability.sharded import inspect_sharded

        return inspect_sharded(p)
    if not p.is_file():
        return CheckpointInfo(p, "is not a file")
    stat = p.stat()
    if stat.st_size == 0:
        return CheckpointInfo(p, "is empty (0 bytes)", mtime=stat.st_mtime)
    if not zipfile.is_zipfile(p):
        return CheckpointInfo(
            p,
            f"is truncated or corrupt ({stat.st_size} bytes, not a complete torch.save archive)",
            mtime=stat.st_mtime,
        )
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "weights only" in str(err).lower() or "weights_only" in str(err):
            problem = (
                "holds pickled objects other than tensors and plain values; fmlab never unpickles "
                f"them (weights_only=True): {first}"
            )
        else:
            problem = f"is corrupt: {first}"
        return CheckpointInfo(p, problem, mtime=stat.st_mtime)
    except Exception as err:  # torch's zip reader raises RuntimeError/EOFError/OSError/...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return CheckpointInfo(p, f"is truncated or corrupt: {first}", mtime=stat.st_mtime)
    if not isinstance(ckpt, dict) or (missing := [k for k in _REQUIRED if k not in ckpt]):
        what = f"missing {missing}" if isinstance(ckpt, dict) else f"a {type(ckpt).__name__}"
        return CheckpointInfo(
            p, f"is not a Lightning training checkpoint ({what})", mtime=stat.st_mtime
        )
    return CheckpointInfo(p, None, int(ckpt["global_step"]), stat.st_mtime)


def _candidates(run_dir: Path) -> list[Path]:
    found = sorted((run_dir / "checkpoints").glob("*.ckpt")) if run_dir.is_dir() else []
    # + what was downloaded from paths.remote_dir / an s3:// ckpt_path (fmlab.reliability.remote)
    found += sorted((run_dir / "from_remote" / "checkpoints").glob("*.ckpt"))
    return found + sorted(run_dir.glob("hpc_ckpt_*.ckpt"))


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete ``*.ckpt.tmp`` files a killed checkpoint write left in ``<run>/checkpoints``."""
    stale = sorted((run_dir / "checkpoints").glob("*.ckpt.tmp")) if run_dir.is_dir() else []
    stale += sorted(run_dir.glob("hpc_ckpt_*.ckpt.tmp"))
    for p in stale:
        log.warning("removing %s: an interrupted checkpoint write (the previous file is intact)", p)
        if p.is_dir():  # a sharded checkpoint's write (fmlab.distributed.FSDPStrategy)
            shutil.rmtree(p, ignore_errors=True)  # ignore: another rank may remove it too
        else:
            p.unlink(missing_ok=True)
    from fmlab.reliability.sharded import restore_swapped

    return stale + restore_swapped(run_dir / "checkpoints")


def _requested_file(value: str, output_dir: Path) -> tuple[Path, Path]:
    """``ckpt_path`` → (the file it names, the run directory to search for alternatives)."""
    if value == "last":
        return output_dir / "checkpoints" / "last.ckpt", output_dir
    path = Path(value).expanduser()
    # a run directory, or its checkpoints/ directory (a sharded checkpoint is a directory too)
    if path.is_dir() and not is_sharded_checkpoint(path):
        if (path / "checkpoints").is_dir():
            return path / "checkpoints" / "last.ckpt", path
        return path / "last.ckpt", path.parent if path.name == "checkpoints" else path
    run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return path, run


def _newest(infos: list[CheckpointInfo]) -> CheckpointInfo | None:
    valid = [i for i in infos if i.ok]
    return max(valid, key=lambda i: (i.global_step, i.mtime), default=None)


def resolve_resume(
    ckpt_path: str | None,
    resume: ResumeMode,
    output_dir: Path,
    remote_dir: str | None = None,
    storage_options: dict | None = None,
) -> str | None:
    """The checkpoint file to resume from, or None for a fresh start (see the module docstring).

    Args:
        ckpt_path: ``last``, a file, a run directory, or an ``s3://`` object or prefix.
        resume: ``auto``, ``must`` or ``off``.
        output_dir: This run's directory.
        remote_dir: ``paths.remote_dir``: checked to be writable (before anything trains), and
            searched like the run directory when ``ckpt_path`` is not given.
        storage_options: fsspec options for remote URIs.

    Raises:
        CheckpointError: A named checkpoint is unusable and there is no valid alternative, or
            ``resume=must`` finds nothing valid.
        RemoteError: ``remote_dir`` cannot be written (missing bucket, no permission).
    """
    if resume not in ("auto", "must", "off"):
        raise ConfigError(f"resume={resume!r}: expected one of auto, must, off")
    target = ckpt_path  # what is resolved locally; messages keep naming ckpt_path
    if remote_dir or is_remote(ckpt_path):
        from fmlab.reliability.remote import fetch_checkpoint
        from fmlab.utils.remote import check_writable

        if remote_dir:
            check_writable(remote_dir, storage_options, "paths.remote_dir")
        if is_remote(ckpt_path):  # download it (or its newest valid sibling), then as local
            target = fetch_checkpoint(
                str(ckpt_path), output_dir, storage_options, fallback=resume != "off"
            )
        elif ckpt_path is None and resume != "off":  # into <out>/from_remote: a candidate
            fetch_checkpoint(remote_dir, output_dir, storage_options, required=False)
    if ckpt_path is None and resume == "off":
        return None
    if target is not None:
        requested, run_dir = _requested_file(str(target), output_dir)
        named = Path(str(target)).expanduser()
        wants_newest = str(target) == "last" or (
            named.is_dir() and not is_sharded_checkpoint(named)
        )
    else:
        requested, run_dir, wants_newest = None, output_dir, True
    remove_stale_temporaries(run_dir)

    infos = []
    if requested is not None and (resume == "off" or not wants_newest):
        info = inspect_checkpoint(requested)
        if info.ok:
            return str(requested)
        if resume == "off":
            raise CheckpointError(f"ckpt_path={ckpt_path}: {requested} {info.problem}")
        log.warning("ckpt_path=%s: %s %s", ckpt_path, requested, info.problem)
        infos.append(info)

    seen = {i.path for i in infos}
    infos += [inspect_checkpoint(p) for p in _candidates(run_dir) if p not in seen]
    for bad in (i for i in infos if not i.ok and i.path not in seen):
        log.warning("skipping %s: it %s", bad.path, bad.problem)
    chosen = _newest(infos)
    if chosen is not None:
        if requested is not None and not wants_newest:
            log.warning("falling back to the newest valid checkpoint %s", chosen.path)
        log.info("resuming from %s (step %d)", chosen.path, chosen.global_step)
        return str(chosen.path)
    problems = "; ".join(f"{i.path} {i.problem}" for i in infos) or "no *.ckpt files"
    if resume == "must" or ckpt_path is not None:
        where = f"ckpt_path={ckpt_path}" if ckpt_path is not None else "resume=must"
        also = f" or {remote_dir}" if remote_dir and ckpt_path is None else ""
        raise CheckpointError(
            f"{where}: no valid checkpoint to resume from in {run_dir}{also} ({problems})"
        )
    if infos:
        log.warning("no valid checkpoint in %s (%s): starting from scratch", run_dir, problems)
    return None


def resolve_eval_checkpoint(value: str, log_dir: str | Path) -> tuple[str, str]:
    """The checkpoint ``fmlab-eval ckpt_path=<value>`` evaluates, and how it was chosen.

    - a file: that file;
    - a run directory (or its ``checkpoints/``): the checkpoint its ``summary.json`` reported
      (``evaluated_checkpoint``: the best by default, ``export.which``), so eval and training
      report numbers of the same weights; a run without a summary (unfinished): its newest
      ``last.ckpt``;
    - ``last``: ``checkpoints/last.ckpt`` of the latest training run (``<log_dir>/train/latest``,
      resolved here: the run is named in the answer).

    Raises:
        CheckpointError: Nothing usable there.
    """
    import json

    if value == "last":
        run = (Path(log_dir) / "train" / "latest").resolve()
        last = run / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise CheckpointError(f"ckpt_path=last: no {last} (run fmlab-train first)")
        return str(last), f"last checkpoint of the latest training run {run}"
    path = Path(value).expanduser()
    if path.is_dir() and not is_sharded_checkpoint(path):
        run = path.parent if path.name == "checkpoints" else path
        summary = run / "summary.json"
        data = json.loads(summary.read_text()) if summary.is_file() else {}
        chosen = data.get("evaluated_checkpoint")
        if chosen and Path(chosen).exists():
            return chosen, f"evaluated_checkpoint of {summary} (what the training run reported)"
        if chosen:
            raise CheckpointError(
                f"ckpt_path={value}: {summary} reports evaluated_checkpoint={chosen}, which no "
                "longer exists; name a checkpoint file instead"
            )
        newest = resolve_resume(str(run), "off", run)
        return str(newest), f"last checkpoint of {run} (no summary.json: an unfinished run?)"
    return str(resolve_resume(value, "off", path.parent)), "given"


def normalize_epoch_end(checkpoint: dict) -> bool:
    """Make a checkpoint saved on the last batch of an epoch resume with the next epoch's data.

    ``last.ckpt`` every N steps lands on an epoch's last batch whenever N divides the epoch. Such
    a checkpoint stores the stateful loader as "every sample of this epoch yielded"; on resume
    Lightning moves on to the next epoch and the loader skips that many samples of the *new*
    shuffle: an empty epoch, then the epoch after next (measured: the epoch counter ends up one
    too high and the data order differs from an uninterrupted run). Rewinding the loader position
    to the start of an epoch makes the resumed run bitwise identical. Returns whether
    ``checkpoint`` was changed (in place).
    """
    try:
        fit = checkpoint["loops"]["fit_loop"]
        cur = fit["epoch_loop.batch_progress"]["current"]
        is_last = fit["epoch_loop.batch_progress"]["is_last_batch"]
    except (KeyError, TypeError):
        return False
    # saved from on_train_batch_end (periodic checkpoints), or after the step completed (SIGTERM)
    at_end = cur["processed"] == cur["ready"] and cur["completed"] in (
        cur["ready"] - 1,
        cur["ready"],
    )
    if not (is_last and at_end):
        return False
    changed = False
    for state in (fit.get("state_dict") or {}).get("combined_loader") or []:
        if isinstance(state, dict) and "_num_yielded" in state:
            state.update(_num_yielded=0, _sampler_iter_yielded=0, _iterator_finished=False)
            it = state.get("_sampler_iter_state")
            if isinstance(it, dict):
                it["samples_yielded"] = 0
                if isinstance(it.get("sampler_state"), dict):
                    it["sampler_state"]["yielded"] = 0
            changed = True
    return changed
