"""Object storage (``s3://``, or any fsspec URL) for runs: the run directory stays local, a
remote copy holds what must survive the machine.

Layout of ``paths.remote_dir`` (one run's remote home; a restarted job that points at the same
``remote_dir`` continues from it)::

    <remote_dir>/checkpoints/<name>.ckpt   every checkpoint, uploaded after its local write
    <remote_dir>/export/                    the HF export (uploaded at the end of the run)
    <remote_dir>/config.yaml                the resolved config (credentials redacted)
    <remote_dir>/summary.json               uploaded last: present = the export is complete

An object appears on S3 only when its upload has completed (a single PUT, or the final call of a
multipart upload), so a killed upload never leaves a half-written ``last.ckpt``: readers see the
previous one. Credentials and the endpoint come from the usual AWS sources (``AWS_*``
environment variables, ``~/.aws``, an instance role; ``AWS_ENDPOINT_URL`` for S3-compatible
stores) or from ``paths.storage_options`` (fsspec options such as ``endpoint_url``), which are
never written anywhere in clear (see :mod:`fmlab.utils.secrets`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from fmlab.config import ConfigError

__all__ = [
    "RemoteError",
    "check_writable",
    "download_file",
    "fetch_dataset",
    "is_remote",
    "join",
    "list_objects",
    "open_fs",
    "publish_run",
    "reason",
    "remote_settings",
    "upload_file",
]

log = logging.getLogger(__name__)


class RemoteError(ConfigError):
    """A remote URI that cannot be read or written; the message names it and the reason."""


def is_remote(uri: str | os.PathLike | None) -> bool:
    """Whether ``uri`` is a URL of a remote filesystem (``s3://...``; not ``file://``)."""
    text = str(uri or "")
    return "://" in text and not text.startswith("file://")


def join(uri: str, *parts: str) -> str:
    """``uri/part/...`` without doubled slashes."""
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def reason(err: BaseException) -> str:
    """The first line of an error, prefixed by its type when it says little on its own."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def open_fs(uri: str, storage_options: dict[str, Any] | None = None, what: str = "uri"):
    """The fsspec filesystem of ``uri`` and the path inside it, with a fresh listing cache.

    Raises:
        RemoteError: Unknown protocol or a missing optional dependency (``s3fs``).
    """
    from fsspec.core import url_to_fs

    from fmlab.utils.optional import require_filesystem

    require_filesystem(uri, f"{what}={uri}")  # s3:// without fmlab[s3]: say which extra
    options = dict(storage_options or {})
    if not is_remote(uri):  # a mounted shared filesystem (NFS, EFS, Lustre) works too
        options.setdefault("auto_mkdir", True)
    try:
        fs, root = url_to_fs(uri, **options)
    except Exception as err:
        raise RemoteError(f"{what}={uri}: cannot open it: {reason(err)}") from err
    fs.invalidate_cache()  # other processes write here: a cached listing would be stale
    return fs, root.rstrip("/")


def check_writable(uri: str, storage_options: dict[str, Any] | None, what: str) -> None:
    """Write and delete a small object under ``uri``: a missing bucket or missing permissions
    fail here, before training, instead of at the first checkpoint.

    Raises:
        RemoteError: Naming ``what=uri`` and the storage's answer.
    """
    fs, root = open_fs(uri, storage_options, what)
    probe = f"{root}/.fmlab-write-check-{uuid.uuid4().hex[:8]}"
    try:
        fs.pipe_file(probe, b"")
        fs.rm_file(probe)
    except Exception as err:  # NoSuchBucket arrives as FileNotFoundError, AccessDenied as ...
        raise RemoteError(
            f"{what}={uri}: cannot write there ({reason(err)}); check the bucket name, the "
            "credentials (AWS_* environment variables or paths.storage_options) and the endpoint"
        ) from err


def list_objects(
    uri: str, storage_options: dict[str, Any] | None, suffix: str = ""
) -> list[dict[str, Any]]:
    """Files directly under ``uri`` ending in ``suffix``, newest first (by upload time).

    Each entry is fsspec's ``info`` dict plus ``uri``. A missing prefix gives ``[]``; a missing
    bucket raises ``FileNotFoundError`` (the caller words the error).
    """
    fs, root = open_fs(uri, storage_options)
    try:
        entries = fs.ls(root, detail=True)
    except FileNotFoundError:
        if "/" not in root.strip("/") or not fs.exists(root.split("/")[0]):
            raise  # the bucket itself
        return []
    files = [e for e in entries if e.get("type") == "file" and e["name"].endswith(suffix)]
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    for e in files:
        e["uri"] = f"{protocol}://{e['name']}" if is_remote(uri) else e["name"]

    def when(e: dict[str, Any]) -> float:
        stamp = e.get("LastModified") or e.get("mtime") or 0
        return stamp.timestamp() if hasattr(stamp, "timestamp") else float(stamp)

    # S3 times have 1 s resolution: on a tie, last.ckpt (the periodic one) comes first
    def key(e: dict[str, Any]) -> tuple:
        name = e["name"].rsplit("/", 1)[-1]
        return when(e), name.startswith("last"), name

    return sorted(files, key=key, reverse=True)


def upload_file(local: str | Path, uri: str, storage_options: dict[str, Any] | None) -> None:
    """Upload one file to ``uri`` (the object appears only when complete)."""
    fs, root = open_fs(uri, storage_options)
    fs.put_file(str(local), root)


def download_file(uri: str, local: str | Path, storage_options: dict[str, Any] | None) -> Path:
    """Download ``uri`` to ``local`` through a temporary file renamed at the end."""
    fs, root = open_fs(uri, storage_options)
    local = Path(local)
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{local.name}.{os.getpid()}.part")
    try:
        fs.get_file(root, str(tmp))
        os.replace(tmp, local)
    finally:
        tmp.unlink(missing_ok=True)
    return local


def remote_settings(cfg: Any) -> dict[str, Any]:
    """``remote_dir`` and ``storage_options`` of a train config's ``paths`` (empty if unset)."""
    from omegaconf import OmegaConf

    paths = cfg.get("paths") or {}
    remote_dir = paths.get("remote_dir")
    if not remote_dir:
        return {}
    options = paths.get("storage_options")
    options = OmegaConf.to_container(options, resolve=True) if options is not None else None
    return {"remote_dir": str(remote_dir).rstrip("/"), "storage_options": options or None}


def publish_run(
    out: Path,
    summary: dict[str, Any],
    remote_dir: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> None:
    """Upload ``export/``, ``config.yaml`` and (last) ``summary.json`` of run directory ``out``
    to ``remote_dir`` (nothing without one); the remote URIs are added to ``summary["paths"]``
    and to the local ``summary.json``.

    The previous ``summary.json`` and ``export/`` at ``remote_dir`` are deleted first, so a
    reader never pairs a new summary with an old or half-uploaded export.

    Raises:
        RemoteError: An upload failed (the local run directory is complete).
    """
    from fmlab.utils.io import write_json

    if not remote_dir:
        return
    fs, root = open_fs(remote_dir, storage_options, "paths.remote_dir")
    paths = summary.setdefault("paths", {})
    paths["remote_dir"] = remote_dir
    if (out / "export").is_dir():
        paths["remote_export_dir"] = join(remote_dir, "export")
    write_json(out / "summary.json", summary)
    try:
        if fs.exists(f"{root}/summary.json"):
            fs.rm_file(f"{root}/summary.json")
        if (out / "export").is_dir():
            if fs.exists(f"{root}/export"):
                fs.rm(f"{root}/export", recursive=True)
            for p in sorted(q for q in (out / "export").rglob("*") if q.is_file()):
                fs.put_file(str(p), f"{root}/export/{p.relative_to(out / 'export').as_posix()}")
        for name in ("config.yaml", "summary.json"):  # summary last: it marks a complete upload
            if (out / name).is_file():
                fs.put_file(str(out / name), f"{root}/{name}")
    except Exception as err:
        raise RemoteError(
            f"paths.remote_dir={remote_dir}: uploading the run from {out} failed: {reason(err)}"
        ) from err
    log.info("uploaded export/, config.yaml and summary.json to %s", remote_dir)


def fetch_dataset(
    uri: str, cache_dir: str | Path, storage_options: dict[str, Any] | None = None
) -> Path:
    """A local copy of the prepared dataset at ``uri`` (an ``fmlab-prepare`` output on S3).

    Training memory-maps token blocks, so the dataset is downloaded once into
    ``<cache_dir>/remote/<hash>/``, keyed by the URI and the content of its ``card.json`` (which
    ``fmlab-prepare`` uploads last, and which changes whenever the data does): a re-prepared
    dataset is fetched again, an unchanged one never. Concurrent ranks wait on a file lock.

    Raises:
        RemoteError: No ``card.json`` at ``uri`` (not a prepared dataset, or an upload still
            running), a missing bucket, or a dataset that changed during the download.
    """
    from filelock import FileLock

    fs, root = open_fs(uri, storage_options, "data.path")
    card_key = f"{root}/card.json"

    def read_card() -> bytes:
        try:
            return fs.cat_file(card_key)
        except FileNotFoundError as err:
            raise RemoteError(
                f"data.path={uri}: no card.json there: not an fmlab-prepare output, or its "
                f"upload has not finished ({reason(err)})"
            ) from err
        except Exception as err:
            raise RemoteError(f"data.path={uri}: cannot read card.json: {reason(err)}") from err

    card = read_card()
    key = hashlib.sha256(uri.rstrip("/").encode() + b"\0" + card).hexdigest()[:20]
    local = Path(cache_dir).expanduser() / "remote" / key
    if (local / "card.json").is_file():  # written last: the copy is complete
        return local
    local.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(local) + ".lock"):
        if (local / "card.json").is_file():
            return local
        tmp = local.with_name(f"{key}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            for f in sorted(fs.find(root)):
                rel = f[len(root) :].lstrip("/")
                if rel != "card.json":
                    (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                    fs.get_file(f, str(tmp / rel))
            if read_card() != card:  # re-published while we were downloading
                raise RemoteError(f"data.path={uri}: the dataset changed during the download")
            (tmp / "card.json").write_bytes(card)
            tmp.rename(local)
        except RemoteError:
            raise
        except Exception as err:
            raise RemoteError(f"data.path={uri}: download failed: {reason(err)}") from err
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("data.path=%s: local copy in %s", uri, local)
    return local
