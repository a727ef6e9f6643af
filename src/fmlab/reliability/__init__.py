"""Surviving kills, preemption, corrupt checkpoints and NaNs; keeping secrets out of outputs."""

from fmlab.reliability.checkpoints import (
    CheckpointError,
    CheckpointInfo,
    inspect_checkpoint,
    normalize_epoch_end,
    remove_stale_temporaries,
    resolve_resume,
)
from fmlab.reliability.guards import (
    NonFiniteError,
    NonFiniteGuard,
    Preempted,
    PreemptionCheckpoint,
    RunDirInUse,
    run_dir_lock,
)
from fmlab.reliability.interrupts import Interrupted, resume_command

__all__ = [
    "CheckpointError",
    "CheckpointInfo",
    "Interrupted",
    "NonFiniteError",
    "NonFiniteGuard",
    "Preempted",
    "PreemptionCheckpoint",
    "RunDirInUse",
    "inspect_checkpoint",
    "normalize_epoch_end",
    "remove_stale_temporaries",
    "resolve_resume",
    "resume_command",
    "run_dir_lock",
]
