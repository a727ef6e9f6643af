"""Ctrl-C during training: finish the step, save a checkpoint, say how to resume.

The first SIGINT takes the same path as SIGTERM (:class:`PreemptionCheckpoint`): the step in
flight finishes, ``last.ckpt`` is written at that step boundary (so the resumed run is exact),
``summary.json`` says ``status: interrupted`` and the command that resumes is printed; the
process exits 130. A second Ctrl-C exits at once (the previous checkpoint stays intact: writes
are atomic). SIGTERM (preemption) does the same with ``status: preempted`` and exit 143.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import Any

__all__ = ["Interrupted", "SigintHandler", "resume_command", "stopped_by_signal"]

log = logging.getLogger(__name__)


class Interrupted(SystemExit):
    """Raised by ``train`` after Ctrl-C: the checkpoint is written, the process exits 130."""

    def __init__(self, checkpoint: str | None) -> None:
        super().__init__(130)
        self.checkpoint = checkpoint


class SigintHandler:
    """Turns the first Ctrl-C into Lightning's graceful stop; the second exits at once."""

    def __init__(self) -> None:
        self.received = False
        self._trainer: Any = None
        self._previous: Any = None

    def install(self, trainer: Any) -> None:
        """Take over SIGINT for the duration of ``trainer.fit`` (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            return
        self._trainer = trainer
        self._previous = signal.signal(signal.SIGINT, self._handle)

    def restore(self) -> None:
        if self._trainer is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)
            self._trainer = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received:  # second Ctrl-C: now (os.write: no locks taken in a signal handler)
            os.write(2, b"\nsecond Ctrl-C: stopped at once (last.ckpt is the previous one)\n")
            os._exit(130)
        self.received = True
        # Lightning stops at the end of the step in flight, where PreemptionCheckpoint saves
        self._trainer._signal_connector.received_sigterm = True
        os.write(
            2,
            b"\nCtrl-C: finishing this step, then saving a checkpoint "
            b"(press Ctrl-C again to stop at once)\n",
        )


def _prog(module: str) -> list[str]:
    name = Path(sys.argv[0]).name
    return [name] if name.startswith("fmlab-") else [Path(sys.executable).name, "-m", module]


def resume_command(run_dir: Path, module: str = "fmlab.train") -> str | None:
    """The command line that continues the run in ``run_dir`` (None outside the CLI).

    The same overrides as this job, in the same run directory (``resume=auto`` finds its newest
    checkpoint); a ``ckpt_path``/``resume=off`` of the original command would start elsewhere,
    so they are dropped. With ``run_name=...`` (outside a multirun) it is the same command.
    """
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    from fmlab.sweeps import is_multirun

    hc = HydraConfig.get()
    drop = ("ckpt_path=", "resume=", "+ckpt_path=", "hydra.")
    args = [o for o in hc.overrides.task if not o.startswith(drop)]
    if is_multirun() or not any(o.startswith("run_name=") for o in args):
        args.append(f"hydra.run.dir={run_dir.resolve()}")
    return shlex.join([*_prog(module), *args])


def stopped_by_signal(trainer: Any, out: Path) -> SystemExit:
    """After a SIGINT/SIGTERM stop of ``trainer.fit``: write ``summary.json``, say how to
    resume, and return the exception that ends the process (exit 130 or 143)."""
    from fmlab.reliability.guards import Preempted, PreemptionCheckpoint
    from fmlab.utils import write_json

    cb = next((c for c in trainer.callbacks if isinstance(c, PreemptionCheckpoint)), None)
    saved = cb.saved if cb else None
    interrupted = bool(cb and cb.sigint.received)
    command = resume_command(out)
    if trainer.is_global_zero:
        summary = {
            "status": "interrupted" if interrupted else "preempted",
            "global_step": int(trainer.global_step),
            "checkpoint": saved,
            "resume_command": command,
            "paths": {"output_dir": str(out)},
        }
        write_json(out / "summary.json", summary)
        what = "interrupted (Ctrl-C)" if interrupted else "preempted (SIGTERM)"
        where = f"checkpoint {saved}" if saved else "no checkpoint (stopped before step 1)"
        log.warning("%s at step %d; %s", what, trainer.global_step, where)
        if command and saved:
            log.warning("resume with:\n  %s", command)
    return Interrupted(saved) if interrupted else Preempted(saved)
