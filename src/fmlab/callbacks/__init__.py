"""Callbacks and logger factories used from ``conf/callbacks`` and ``conf/logger``."""

from fmlab.callbacks.checkpoint_io import AtomicCheckpointIO
from fmlab.callbacks.forgetting import ForgettingMonitor
from fmlab.callbacks.loggers import wandb
from fmlab.callbacks.startup import StartupTime
from fmlab.callbacks.throughput import Throughput

__all__ = ["AtomicCheckpointIO", "ForgettingMonitor", "StartupTime", "Throughput", "wandb"]
