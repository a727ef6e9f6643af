"""Checkpoint I/O that never destroys a good checkpoint and never unpickles code."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Any, BinaryIO

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.plugins.io import TorchCheckpointIO

__all__ = ["AtomicCheckpointIO", "CheckpointWriteError"]

log = logging.getLogger(__name__)


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (disk full, quota, I/O error); the previous one is intact."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes ``<name>.tmp`` next to the target, fsyncs it, then renames it over the target.

    ``os.replace`` is atomic on POSIX filesystems, so ``last.ckpt`` is always either the old or
    the new complete file; a failed write (e.g. ``ENOSPC``) removes its temporary file and raises
    :class:`CheckpointWriteError` naming the file. A kill mid-write leaves ``<name>.tmp`` inside the
    checkpoint directory, which the next start removes. Remote filesystems (``s3://``) use
    Lightning's own writer. Loading is always ``weights_only=True``: a checkpoint is data.

    With ``remote_dir`` (``paths.remote_dir``), every checkpoint is then uploaded to
    ``<remote_dir>/checkpoints/<name>`` (the object appears only once complete) and removed there
    when Lightning prunes it locally. A failed upload is logged, naming both copies, and training
    goes on: the local checkpoint is intact and the next save uploads again.

    Args:
        remote_dir: An ``s3://`` (or other fsspec) URI mirroring the run's checkpoints.
        storage_options: fsspec options for ``remote_dir`` (``endpoint_url``, ...).
    """

    def __init__(
        self, remote_dir: str | None = None, storage_options: dict[str, Any] | None = None
    ) -> None:
        super().__init__()
        self.remote_dir = remote_dir.rstrip("/") if remote_dir else None
        self.storage_options = storage_options

    def _remote(self, path: str | os.PathLike) -> str | None:
        if self.remote_dir is None or not _is_local_file_protocol(path):
            return None
        return f"{self.remote_dir}/checkpoints/{Path(path).name}"

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
        if (uri := self._remote(target)) is not None:
            from fmlab.utils.remote import reason, upload_file

            try:  # synchronous: on return (also after SIGTERM) the checkpoint is on S3
                upload_file(target, uri, self.storage_options)
            except Exception as err:
                log.error(
                    "could not upload %s to %s (%s); the local copy is intact",
                    target,
                    uri,
                    reason(err),
                )
        return None

    def remove_checkpoint(self, path: str | os.PathLike) -> None:
        super().remove_checkpoint(path)
        if (uri := self._remote(path)) is not None:
            from fmlab.utils.remote import open_fs, reason

            try:
                fs, key = open_fs(uri, self.storage_options)
                if fs.exists(key):
                    fs.rm_file(key)
            except Exception as err:
                log.warning("could not remove %s (%s)", uri, reason(err))

    def _write(self, checkpoint: dict[str, Any], fh: BinaryIO) -> None:
        torch.save(checkpoint, fh)

    def load_checkpoint(
        self, path: str | os.PathLike, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        # Never unpickle arbitrary objects, whatever the caller asked for.
        from fmlab.reliability.checkpoints import CheckpointError, normalize_epoch_end

        if Path(path).is_dir():  # sharded (FSDP): only the FSDP strategy reads the shards
            raise CheckpointError(
                f"{path} is a sharded checkpoint (a directory of per-rank shards from "
                "trainer=fsdp): resume it with an FSDP trainer (any number of ranks), or make "
                "one file of it: python -m lightning.pytorch.utilities.consolidate_checkpoint "
                f"{path} --output_file <file.ckpt>"
            )
        kwargs = {} if map_location is None else {"map_location": map_location}
        checkpoint = super().load_checkpoint(path, weights_only=True, **kwargs)
        normalize_epoch_end(checkpoint)
        return checkpoint
