"""Spark settings of ``fmlab-prepare engine=spark`` (the ``spark:`` node) and the session.

Outside ``spark-submit`` (plain ``python``/``fmlab-prepare``) pyspark starts its own JVM with
``master`` (default ``local[*]``). Under ``spark-submit``, on EMR or Glue, the session already
exists: its master and resources are the cluster's and ``master`` must stay null.
"""

from __future__ import annotations

import os
import sys
from typing import Any

__all__ = ["SparkSettings"]


class SparkSettings:
    """How the Spark engine gets its session and where it writes intermediate records.

    Args:
        master: Spark master (``local[4]``, ``yarn``); null: ``spark-submit``'s (cluster) or
            ``local[*]`` when no ``spark-submit`` started this process.
        app_name: Application name (Spark UI, YARN, EMR step list).
        conf: Extra Spark settings, e.g. ``{spark.driver.memory: 4g}``.
        preload: Import fmlab once per executor in the Python worker daemon, so forked workers
            do not each pay its import time (several seconds: torch comes with it).
        records_dir: Where the cleaned records go when a segment stage (tokenize + pack) follows
            on this machine; default ``<output_dir>-records``.
        checkpoint_dir: Spark checkpoint directory (cuts the lineage of the connected-components
            iterations; a reliable path on a cluster, e.g. ``hdfs:///tmp/fmlab``); default: local
            checkpoints (executor storage).
    """

    def __init__(
        self,
        master: str | None = None,
        app_name: str = "fmlab-prepare",
        conf: dict[str, Any] | None = None,
        preload: bool = True,
        records_dir: str | None = None,
        checkpoint_dir: str | None = None,
    ) -> None:
        self.master, self.app_name = master, app_name
        self.conf = {str(k): str(v) for k, v in (conf or {}).items()}
        self.preload, self.records_dir, self.checkpoint_dir = preload, records_dir, checkpoint_dir

    def describe(self) -> dict[str, Any]:
        return {"master": self.master, "app_name": self.app_name, "conf": self.conf}

    def is_local(self) -> bool:
        """Whether pyspark launches the JVM itself in local mode (no ``spark-submit`` around)."""
        if self.master is not None:
            return self.master.startswith("local")
        return "PYSPARK_GATEWAY_PORT" not in os.environ  # set by spark-submit for Python apps

    def session(self) -> tuple[Any, bool]:
        """The active SparkSession or a new one; returns ``(session, created_here)``."""
        from fmlab.utils.optional import require

        require("pyspark", "spark", "engine=spark")
        from pyspark import SparkContext
        from pyspark.sql import SparkSession

        if SparkContext._active_spark_context is not None:
            # a notebook, a test fixture, a Glue job: use their session as it is, leave it open
            return SparkSession.getActiveSession() or SparkSession.builder.getOrCreate(), False
        if self.is_local():
            # Python workers must run this interpreter (the venv with fmlab), not whatever
            # `python3` is first on PATH
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
            os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
        builder = SparkSession.builder.appName(self.app_name)
        if self.master is not None:
            builder = builder.master(self.master)
        for key, value in {**self.daemon_conf(), **self.conf}.items():
            builder = builder.config(key, value)
        return builder.getOrCreate(), True

    def daemon_conf(self) -> dict[str, str]:
        """Spark settings that make Python workers fork from a daemon with fmlab imported."""
        return {"spark.python.daemon.module": "fmlab.data.spark.daemon"} if self.preload else {}

    def __repr__(self) -> str:
        return f"SparkSettings({self.describe()})"
