"""How litdata reaches object storage with fmlab's ``storage_options``, and the indexes it reads.

fmlab's ``storage_options`` are fsspec/s3fs options (``endpoint_url``, ``key``, ``secret``,
``token``, ``client_kwargs``, ``config_kwargs``, ``profile``), the same everywhere in fmlab.
litdata downloads chunks with its own boto3 client (and obstore for the bulk GETs), whose
options are boto3's: :func:`litdata_options` translates one into the other, and without options
both fall back to the usual AWS sources (``AWS_*`` variables incl. ``AWS_ENDPOINT_URL``,
``~/.aws``, an instance role). Credentials live only in memory: litdata's checkpointed loader
state holds the dataset URL and cache paths, never these options.
"""

from __future__ import annotations

import json
import os
from typing import Any

from fmlab.config import ConfigError

__all__ = ["INDEX", "litdata_options", "read_index", "split_url"]

INDEX = "index.json"  # litdata's chunk index, one per split directory

# s3fs option → boto3 client argument
_CLIENT_KEYS = {
    "key": "aws_access_key_id",
    "secret": "aws_secret_access_key",
    "token": "aws_session_token",
    "endpoint_url": "endpoint_url",
    "region_name": "region_name",
    "use_ssl": "use_ssl",
}


def litdata_options(
    storage_options: dict[str, Any] | None,
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """fsspec ``storage_options`` → (litdata's ``storage_options``, ``session_options``).

    Raises:
        ConfigError: An option litdata's S3 client has no equivalent for.
    """
    options = dict(storage_options or {})
    client: dict[str, Any] = {}
    session: dict[str, Any] = {}
    nested = dict(options.pop("client_kwargs", None) or {})
    for key, value in {**options, **nested}.items():
        if key in _CLIENT_KEYS:
            client[_CLIENT_KEYS[key]] = value
        elif key in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token", "verify"):
            client[key] = value
        elif key == "profile":
            session["profile_name"] = value
        elif key == "config_kwargs":
            import botocore.config

            # litdata's own default (1000 adaptive retries: a long run outlives S3 hiccups)
            retries = {"max_attempts": 1000, "mode": "adaptive"}
            client["config"] = botocore.config.Config(**{"retries": retries, **dict(value)})
        elif key in ("anon", "default_block_size", "default_cache_type", "skip_instance_cache"):
            continue  # fsspec-side settings: nothing to translate for a boto3 client
        else:
            raise ConfigError(
                f"storage_options.{key}: not supported for streaming datasets (litdata's S3 "
                f"client takes endpoint_url, key, secret, token, client_kwargs.region_name, "
                "config_kwargs, profile); leave it out or set it through the AWS_* variables"
            )
    endpoint = str(client.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL") or "")
    if endpoint.startswith("http://"):
        _allow_plain_http()
    return client or None, session or None


def _allow_plain_http() -> None:
    """Let litdata's obstore GETs use a plain-HTTP endpoint (MinIO or moto on a LAN/loopback).

    litdata builds obstore's ``S3Store`` with fixed client options that lack ``allow_http``, so
    an ``http://`` endpoint fails with "BadScheme" although its boto3 client reaches it. Adding
    ``allow_http`` to those options changes nothing for ``https://`` endpoints.
    """
    from litdata.streaming import downloader

    options = getattr(downloader, "_OBSTORE_CLIENT_OPTIONS", None)
    if isinstance(options, dict):
        options["allow_http"] = True


def split_url(path: str, split: str) -> str:
    """The directory of one split of a streaming dataset (``<path>/<split>``)."""
    return f"{path.rstrip('/')}/{split}"


def read_index(
    path: str, split: str, storage_options: dict[str, Any] | None
) -> dict[str, Any] | None:
    """The ``index.json`` of a split (None when the split is absent: it had no rows)."""
    from fmlab.utils.remote import open_fs

    fs, root = open_fs(split_url(path, split), storage_options, "data.path")
    if not fs.isfile(f"{root}/{INDEX}"):
        return None
    with fs.open(f"{root}/{INDEX}", "r") as fh:
        return json.load(fh)
