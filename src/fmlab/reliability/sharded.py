"""Sharded checkpoints (FSDP ``state_dict_type: sharded``): a directory instead of a file.

Layout written by Lightning's FSDP strategy, swapped in whole by
:class:`fmlab.distributed.FSDPStrategy`::

    last.ckpt/
      __0_0.distcp, __1_0.distcp   one file of weight/optimizer shards per rank
      .metadata                    torch.distributed.checkpoint's index of those shards
      meta.pt                      everything else (loops, RNG, callbacks), written last

Checked here like a single-file checkpoint: complete, readable without unpickling code, and a
Lightning training checkpoint.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from fmlab.reliability.checkpoints import CheckpointInfo

__all__ = ["inspect_sharded", "is_sharded_checkpoint", "restore_swapped"]

log = logging.getLogger(__name__)

META = "meta.pt"  # lightning.fabric.strategies.fsdp._METADATA_FILENAME
INDEX = ".metadata"  # torch.distributed.checkpoint's shard index
# in a Lightning checkpoint, but kept in the shards by the sharded format
_IN_SHARDS = ("state_dict", "optimizer_states")


def is_sharded_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a directory holding a sharded checkpoint (complete or not)."""
    p = Path(path)
    return p.is_dir() and ((p / META).exists() or (p / INDEX).exists())


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def inspect_sharded(p: Path) -> CheckpointInfo:
    """:func:`~fmlab.reliability.checkpoints.inspect_checkpoint` for a checkpoint directory."""
    from fmlab.reliability.checkpoints import _REQUIRED, CheckpointInfo

    meta, index = p / META, p / INDEX
    mtime = (meta if meta.is_file() else p).stat().st_mtime
    if not meta.is_file() or not index.is_file():
        absent = [n for n in (META, INDEX) if not (p / n).is_file()]
        return CheckpointInfo(
            p,
            f"is a directory without {' and '.join(absent)} (not a complete sharded checkpoint)",
            mtime=mtime,
        )
    try:
        from torch.distributed.checkpoint import FileSystemReader

        metadata = FileSystemReader(str(p)).read_metadata()
    except Exception as err:
        return CheckpointInfo(p, f"has an unreadable shard index: {_first_line(err)}", mtime=mtime)
    # every byte range the index points to must exist: catches a missing or truncated shard
    needed: dict[str, int] = {}
    for item in (metadata.storage_data or {}).values():
        end = int(item.offset) + int(item.length)
        needed[item.relative_path] = max(needed.get(item.relative_path, 0), end)
    for name, size in sorted(needed.items()):
        f = p / name
        have = f.stat().st_size if f.is_file() else None
        if have is None or have < size:
            state = "missing" if have is None else f"truncated ({have} of {size} bytes)"
            return CheckpointInfo(p, f"has a {state} shard {name}", mtime=mtime)
    if not any(k.startswith("model.") for k in metadata.state_dict_metadata):
        return CheckpointInfo(p, "holds no model weights in its shards", mtime=mtime)
    try:
        ckpt = torch.load(meta, map_location="cpu", weights_only=True)
    except Exception as err:
        return CheckpointInfo(p, f"has an unusable {META}: {_first_line(err)}", mtime=mtime)
    wanted = [k for k in _REQUIRED if k not in _IN_SHARDS]
    if not isinstance(ckpt, dict) or (missing := [k for k in wanted if k not in ckpt]):
        what = f"missing {missing}" if isinstance(ckpt, dict) else f"a {type(ckpt).__name__}"
        return CheckpointInfo(p, f"is not a Lightning training checkpoint ({what})", mtime=mtime)
    return CheckpointInfo(p, None, int(ckpt["global_step"]), mtime)


def restore_swapped(ckpt_dir: Path) -> list[Path]:
    """Undo a swap of a sharded checkpoint that a kill interrupted between its two renames.

    :func:`fmlab.distributed.swap_in_dir` renames ``X`` to ``X.old`` and then ``X.tmp`` to
    ``X``. ``X.old`` without ``X`` is the previous complete checkpoint: it is renamed back (the
    half-swapped ``X.tmp`` is removed with the other temporaries). ``X.old`` beside ``X`` is
    leftover and deleted. Returns the paths handled.
    """
    handled = []
    for old in sorted(ckpt_dir.glob("*.ckpt.old")) if ckpt_dir.is_dir() else []:
        target = old.with_name(old.name[: -len(".old")])
        try:
            if target.exists():
                shutil.rmtree(old) if old.is_dir() else old.unlink()
            else:
                log.warning("restoring %s from %s (a checkpoint swap was interrupted)", target, old)
                os.replace(old, target)
        except FileNotFoundError:  # another rank of this job got there first
            pass
        handled.append(old)
    return handled
