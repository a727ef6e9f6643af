"""Checkpoint I/O that never destroys a good checkpoint and never unpickles code."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any, BinaryIO

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.plugins.io import TorchCheckpointIO

__all__ = ["AtomicCheckpointIO", "CheckpointWriteError"]


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (disk full, quota, I/O error); the previous one is intact."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes ``<name>.tmp`` next to the target, fsyncs it, then renames it over the target.

    ``os.replace`` is atomic on POSIX filesystems, so ``last.ckpt`` is always either the old or
    the new complete file; a failed write (e.g. ``ENOSPC``) removes its temporary file and raises
    :class:`CheckpointWriteError` naming the file. A kill mid-write leaves ``<name>.tmp`` inside the
    checkpoint directory, which the next start removes. Remote filesystems (``s3://``) use
    Lightning's own writer. Loading is always ``weights_only=True``: a checkpoint is data.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        if not _is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        try:
            with open(tmp, "wb") as fh:
                self._write(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException as err:
            tmp.unlink(missing_ok=True)
            if isinstance(err, OSError | RuntimeError) and not isinstance(
                err, CheckpointWriteError
            ):
                reason = (
                    f"[{errno.errorcode.get(err.errno, err.errno)}] {err.strerror}"
                    if isinstance(err, OSError) and err.strerror
                    else str(err).splitlines()[0]
                )
                kept = (
                    f"the previous {target.name} is intact" if target.exists() else "nothing lost"
                )
                raise CheckpointWriteError(
                    f"could not write checkpoint {target}: {reason} (disk full or quota?); {kept}"
                ) from err
            raise
        return None

    def _write(self, checkpoint: dict[str, Any], fh: BinaryIO) -> None:
        torch.save(checkpoint, fh)

    def load_checkpoint(
        self, path: str | os.PathLike, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        # Never unpickle arbitrary objects, whatever the caller asked for.
        from fmlab.reliability.checkpoints import normalize_epoch_end

        kwargs = {} if map_location is None else {"map_location": map_location}
        checkpoint = super().load_checkpoint(path, weights_only=True, **kwargs)
        normalize_epoch_end(checkpoint)
        return checkpoint
