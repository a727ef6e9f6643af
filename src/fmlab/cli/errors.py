"""Which failures are the user's (a short message, exit 2) and which are bugs (a traceback).

Expected: a :class:`~fmlab.config.ConfigError` (config, data, paths, missing models or optional
packages) or a ``ValueError`` of fmlab's own code that names the config key it is about, a
command line Hydra cannot compose (typo'd key, unknown option, ``method=false``), an unusable
path (``OSError``), a run directory in use. Bugs: everything else; they keep their
traceback, so they can be reported. ``verbose=true`` (or ``HYDRA_FULL_ERROR=1``) shows the
traceback of expected failures too.
"""

from __future__ import annotations

import errno
import re
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Failure", "classify", "print_failure"]

USAGE = 2  # the user's input (config, data, paths): nothing to report, fix and run again
FAILED = 1  # the run itself failed (e.g. the loss diverged)
_NO_FILENAME_HINT = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EFBIG: "the file is too large for the file system or a size limit",
}


@dataclass(frozen=True)
class Failure:
    """How to report an exception: exit code, message, and whether it is a bug."""

    code: int
    message: str
    bug: bool = False


# The config keys a message can start with (see _names_a_key).
_KEYS = (
    "data|model|method|module|optim|scheduler|trainer|callbacks|logger|tokenizer|task|paths|"
    "export|extend_tokenizer|init_from|ckpt_path|model_path|sets|lm_eval|seed|resume|run_name|"
    "prompts|prompts_file|head|inputs|sources|source|output_dir|structure|clean|filter|dedup|"
    "split|decontaminate|segment|write|spark"
)
_KEYED = re.compile(rf"^(?:{_KEYS})(?:[.\[][^\s:=]*)?\s*(?:=|:|'|\s)")


def _names_a_key(err: BaseException) -> bool:
    """A ``ValueError`` raised by fmlab's own code whose message starts with the config key (or
    data source) it is about, e.g. ``data.template must contain ...``: the house convention for
    a user's mistake, like a :class:`ConfigError`. A ValueError from a library is not."""
    if type(err) is not ValueError or not _KEYED.match(str(err)):
        return False
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and "/fmlab/" in tb.tb_frame.f_code.co_filename


def _os_message(err: OSError, before_job: bool) -> str:
    what = err.strerror or str(err)
    where = f": {err.filename}" if err.filename else ""
    if err.filename2:
        where += f" -> {err.filename2}"
    hint = _NO_FILENAME_HINT.get(err.errno or -1)
    text = f"{what}{where}" if err.strerror else str(err)
    if hint:
        text += f" ({hint})"
    if before_job:  # Hydra creates the run directory before our code runs
        return (
            f"cannot create the run directory ({text}); point it at a writable place: "
            "run_name=<name> under paths.log_dir (FMLAB_LOG_DIR), paths.log_dir=<dir>, or "
            "hydra.run.dir=<dir>"
        )
    if isinstance(err, FileNotFoundError):
        return f"{text}; check the path (relative paths start from {_cwd()})"
    if isinstance(err, PermissionError):
        return f"{text}; not allowed: check its permissions or choose another path"
    return text


def _cwd() -> str:
    import os

    return os.getcwd()


def classify(
    err: BaseException, *, overrides: Sequence[str] = (), before_job: bool = False
) -> Failure:
    """How ``err`` is reported.

    Args:
        err: The exception that ended the command.
        overrides: The command-line overrides (to name the one at fault).
        before_job: Whether it happened before the job function ran (Hydra composing the config
            and creating the run directory).
    """
    from fmlab.config import ConfigError
    from fmlab.config.compose import CONF_DIR
    from fmlab.config.hydra_errors import explain_compose_error

    cause: BaseException | None = err
    while cause is not None:  # also a ValueError re-raised from one (same message)
        if isinstance(cause, ConfigError) or _names_a_key(cause):
            return Failure(USAGE, str(err))
        cause = cause.__cause__
    # (only if already imported: importing them would load Lightning just to say "no")
    guards = sys.modules.get("fmlab.reliability.guards")
    if guards is not None and isinstance(err, guards.RunDirInUse):
        return Failure(USAGE, str(err))
    if guards is not None and isinstance(err, guards.NonFiniteError):
        return Failure(FAILED, str(err))
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    hydra_error = isinstance(err, HydraException | OmegaConfBaseException)
    if hydra_error or (before_job and not isinstance(err, OSError)):
        explained = explain_compose_error(err, overrides, CONF_DIR)
        if explained is not None:
            return Failure(USAGE, str(explained))
    if isinstance(err, OSError) and not isinstance(err, ConnectionError):
        return Failure(USAGE, _os_message(err, before_job))
    return Failure(FAILED, f"{type(err).__name__}: {err}", bug=True)


def _filtered_traceback(err: BaseException) -> str:
    """The traceback without the frames of Hydra's launch machinery and of this package."""
    tb = traceback.TracebackException.from_exception(err)
    own = ("/hydra/_internal/", "/hydra/main.py", "/hydra/core/utils.py", "/fmlab/cli/")
    kept = [f for f in tb.stack if not any(part in f.filename for part in own)]
    if kept:
        tb.stack = traceback.StackSummary.from_list(kept)
    return "".join(tb.format())


def print_failure(
    prog: str, err: BaseException, failure: Failure, *, verbose: bool, log_file: str | None
) -> None:
    """Write the report of ``err`` to stderr."""
    out = sys.stderr
    if failure.bug or verbose:
        out.write(_filtered_traceback(err))
    if failure.bug:
        where = f" (also in {log_file})" if log_file else ""
        out.write(
            f"\n{prog}: unexpected error{where}: {failure.message}\n"
            "This is a bug in fmlab or a library it uses, not in your command; please report it "
            "with the traceback above.\n"
        )
        return
    message = failure.message.rstrip().removeprefix(f"{prog}: ")  # no "fmlab-eval: ... fmlab-eval:"
    out.write(f"{prog}: error: {message}\n")
    if not verbose:
        out.write(f"({prog} verbose=true ... shows the traceback)\n")
    out.flush()
