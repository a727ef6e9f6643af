"""A real S3 endpoint for tests: moto's server on a free loopback port, reached through the
ordinary AWS environment variables (what a user's job sees on AWS, minus the credentials)."""

from __future__ import annotations

import io
import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = [
    "FAKE_SECRET",
    "S3",
    "athena_csv",
    "moto_options",
    "moto_s3",
    "parquet_bytes",
    "reset_moto",
]

# long enough to be redacted by value (fmlab.utils.secrets) wherever it could leak
FAKE_SECRET = "fake-secret-for-moto-0123456789"


@dataclass
class S3:
    """The running endpoint: an s3fs filesystem on it, and its fsspec options."""

    endpoint: str
    fs: Any
    options: dict[str, Any]


def reset_moto(endpoint: str) -> None:
    """Empty moto's state. Its backends are global to the process: every moto server of a test
    session serves the same buckets, so a module that starts one must not see another's."""
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"))


@contextmanager
def moto_options(*buckets: str) -> Iterator[tuple[Any, dict[str, Any]]]:
    """Start moto's S3 server and create ``buckets``; yield an s3fs filesystem and the explicit
    fsspec options that reach it. The environment is left alone (unlike :func:`moto_s3`):
    code under test must get the endpoint from the options it is given."""
    import s3fs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    reset_moto(endpoint)
    options = {
        "endpoint_url": endpoint,
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"region_name": "us-east-1"},
    }
    try:
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        for bucket in buckets:
            client.create_bucket(Bucket=bucket)
        yield s3fs.S3FileSystem(skip_instance_cache=True, **options), options
    finally:
        reset_moto(endpoint)
        server.stop()


@contextmanager
def moto_s3(*buckets: str) -> Iterator[S3]:
    """Start moto's S3 server, point ``AWS_*`` at it (restored afterwards), create ``buckets``."""
    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    reset_moto(endpoint)
    env = {
        "AWS_ACCESS_KEY_ID": "fake-access-key-id",
        "AWS_SECRET_ACCESS_KEY": FAKE_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        # never the developer's own profile or credentials
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    saved = {k: os.environ.get(k) for k in [*env, "AWS_PROFILE", "AWS_SESSION_TOKEN"]}
    os.environ.update(env)
    os.environ.pop("AWS_PROFILE", None)
    os.environ.pop("AWS_SESSION_TOKEN", None)
    try:
        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        for bucket in buckets:
            fs.mkdir(bucket)
        options = {
            "endpoint_url": endpoint,
            "key": env["AWS_ACCESS_KEY_ID"],
            "secret": FAKE_SECRET,
        }
        yield S3(endpoint, fs, options)
    finally:
        reset_moto(endpoint)
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def parquet_bytes(columns: dict[str, list]) -> bytes:
    """A Snappy-compressed Parquet file (what Glue, Spark and Athena write)."""
    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf, compression="snappy")
    return buf.getvalue()


def athena_csv(rows: list[dict[str, Any]]) -> bytes:
    """A CSV as Athena writes query results: a header, every value double-quoted."""
    keys = list(rows[0])

    def quote(v: Any) -> str:
        return '"' + str(v).replace('"', '""') + '"'

    lines = [",".join(quote(k) for k in keys)]
    lines += [",".join(quote(r[k]) for k in keys) for r in rows]
    return ("\n".join(lines) + "\n").encode()


def query_id() -> str:
    """An Athena query execution id (a UUID)."""
    return str(uuid.uuid4())
