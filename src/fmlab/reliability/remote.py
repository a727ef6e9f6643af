"""Resuming from checkpoints on object storage (``ckpt_path=s3://...``, ``paths.remote_dir``).

A remote checkpoint is downloaded into ``<run>/from_remote/checkpoints/`` and checked there with
:func:`~fmlab.reliability.checkpoints.inspect_checkpoint` (``weights_only``, complete archive,
Lightning keys) before it is used; training then loads the local copy, so exact resume (RNG and
data position live inside the checkpoint) works as for a local file. Which remote file:

- ``s3://.../name.ckpt``: that object; if it is unusable, the newest valid ``*.ckpt`` beside it
  (``resume=off``: an error instead);
- ``s3://.../prefix``: the newest valid of ``prefix/checkpoints/*.ckpt`` (a run's
  ``remote_dir``) or else ``prefix/*.ckpt``;
- no ``ckpt_path`` but ``paths.remote_dir``: as ``<remote_dir>`` above, with nothing there being
  a fresh start (``resume=must`` decides).

"Newest" is by upload time, and each candidate is downloaded only until one is valid.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from fmlab.utils.remote import download_file, list_objects, reason

__all__ = ["DOWNLOAD_DIR", "fetch_checkpoint"]

log = logging.getLogger(__name__)

# <run>/from_remote/checkpoints/: laid out like a run directory, so the local resume logic
# (and a later resume=auto of this run directory) treats the downloads as its own checkpoints
DOWNLOAD_DIR = "from_remote"


def _candidates(uri: str, options: dict[str, Any] | None) -> tuple[dict | None, list[dict]]:
    """(the object ``uri`` names, or None; the checkpoints to fall back on, newest first)."""
    from fmlab.utils.remote import open_fs

    fs, root = open_fs(uri, options, "ckpt_path")
    if root.endswith(".ckpt") and fs.isfile(root):
        parent = uri.rstrip("/").rsplit("/", 1)[0]
        siblings = list_objects(parent, options, ".ckpt")
        named = next((e for e in siblings if e["name"] == root), None)
        return named, [e for e in siblings if e["name"] != root]
    found = list_objects(f"{uri.rstrip('/')}/checkpoints", options, ".ckpt")
    return None, found or list_objects(uri, options, ".ckpt")


def _fetch(entry: dict, dest: Path, options: dict[str, Any] | None, index: dict) -> Path:
    """Download ``entry`` into ``dest`` unless the copy there is of the same object version."""
    local = dest / Path(entry["name"]).name
    stamp = [entry["uri"], entry.get("size"), str(entry.get("ETag") or entry.get("mtime"))]
    if not (local.is_file() and index.get(local.name) == stamp):
        log.info("downloading %s to %s", entry["uri"], local)
        download_file(entry["uri"], local, options)
        index[local.name] = stamp
    return local


def fetch_checkpoint(
    uri: str,
    run_dir: Path,
    storage_options: dict[str, Any] | None = None,
    *,
    fallback: bool = True,
    required: bool = True,
) -> str | None:
    """Download the checkpoint to resume from (see the module docstring); return its local path.

    Args:
        uri: ``ckpt_path`` (an object or a prefix) or ``paths.remote_dir``.
        run_dir: This run's directory; downloads go to ``<run_dir>/from_remote/checkpoints/``.
        storage_options: fsspec options (``endpoint_url``, ...).
        fallback: Whether an unusable named checkpoint may be replaced by the newest valid one.
        required: Whether finding nothing is an error (``ckpt_path``) or a fresh start.

    Raises:
        CheckpointError: A missing bucket, nothing there (``required``), or no valid checkpoint.
    """
    from filelock import FileLock

    from fmlab.reliability.checkpoints import CheckpointError, inspect_checkpoint

    what = "ckpt_path" if required else "paths.remote_dir"
    try:
        named, others = _candidates(uri, storage_options)
    except Exception as err:  # NoSuchBucket, AccessDenied, network
        raise CheckpointError(f"{what}={uri}: cannot list it: {reason(err)}") from err
    if named is None and not others:
        if required:
            raise CheckpointError(f"{what}={uri}: no such checkpoint file, and no *.ckpt under it")
        return None

    dest = run_dir / DOWNLOAD_DIR / "checkpoints"
    dest.mkdir(parents=True, exist_ok=True)
    problems = []
    # DDP ranks run this together: the first downloads, the others find its copies
    with FileLock(str(dest.parent / ".lock")):
        index_file = dest.parent / "index.json"
        index = json.loads(index_file.read_text()) if index_file.is_file() else {}
        try:
            queue = ([named] if named else []) + (others if fallback or not named else [])
            for entry in queue:
                try:
                    local = _fetch(entry, dest, storage_options, index)
                except Exception as err:
                    info_problem = f"cannot be downloaded: {reason(err)}"
                else:
                    info = inspect_checkpoint(local)
                    if info.ok:
                        # other files here are leftovers of earlier starts: not candidates now
                        for stale in dest.glob("*.ckpt"):
                            if stale != local:
                                stale.unlink(missing_ok=True)
                                index.pop(stale.name, None)
                        if problems or (named and entry is not named):
                            log.warning("resuming from %s instead", entry["uri"])
                        log.info("resuming from %s (step %d)", entry["uri"], info.global_step)
                        return str(local)
                    info_problem = info.problem
                    local.unlink(missing_ok=True)
                    index.pop(local.name, None)
                problems.append(f"{entry['uri']} {info_problem}")
                if entry is named and not fallback:
                    raise CheckpointError(f"ckpt_path={uri}: {entry['uri']} {info_problem}")
                log.warning("skipping %s: it %s", entry["uri"], info_problem)
        finally:
            index_file.write_text(json.dumps(index, indent=1))
    if not required:  # paths.remote_dir: the local rules decide (auto: fresh start)
        return None
    raise CheckpointError(
        f"{what}={uri}: no valid checkpoint to resume from there ({'; '.join(problems)})"
    )
