"""Callbacks and logger factories used from ``conf/callbacks`` and ``conf/logger``."""

from fmlab.callbacks.loggers import wandb
from fmlab.callbacks.throughput import Throughput

__all__ = ["Throughput", "wandb"]
