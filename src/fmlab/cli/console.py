"""What a run shows on the terminal and keeps in ``<run>/<task>.log`` (``train.log``).

Hydra configures the root logger per job (a console and a file handler); on top of that:

- Lightning's loggers propagate to the root, so their lines reach ``train.log`` too (Lightning
  gives itself a private stderr handler when it is imported before Hydra configured logging);
- Python warnings are logged (``py.warnings``), so they land in ``train.log`` with the rest;
- the console drops known third-party noise that is not actionable here (CPU/GPU banners,
  checkpoint-restore chatter, deprecation warnings inside our dependencies); ``train.log`` keeps
  it. Advertisements (Lightning's "💡 Tip") go nowhere. ``verbose=true`` shows everything;
- tables printed with :func:`fmlab.utils.print_table` are also written to ``train.log``;
- console lines clear the live progress line first (:data:`fmlab.utils.printing.live`).
"""

from __future__ import annotations

import logging
import re
import sys
import warnings
from pathlib import Path

__all__ = ["CONSOLE_ONLY_NOISE", "DROPPED", "adopt_lightning_logging", "setup_job_logging"]

# Nowhere: advertisements for other products.
DROPPED = (re.compile(r"💡 Tip:"),)
# Not on the console (kept in train.log): true but not actionable in an fmlab run.
CONSOLE_ONLY_NOISE = tuple(
    re.compile(p)
    for p in (
        r"^(GPU|TPU|HPU|IPU) available: ",
        r"^LOCAL_RANK: \d+ - CUDA_VISIBLE_DEVICES",
        r"^`Trainer\.fit` stopped: `max_steps=\d+` reached",
        r"^Restoring states from the checkpoint path",
        r"^Loaded model weights from the checkpoint",
        r"^Checkpoint directory .* exists and is not empty",  # a resumed run writes its own dir
        r"does not have many workers which may be a bottleneck",  # in-memory token blocks
        r"'set_vital' is deprecated",  # torchdata's StatefulDataLoader on torch>=2.9
        r"isinstance\(treespec, LeafSpec\)` is deprecated",  # Lightning on torch>=2.9
        r"`torch\.jit\.script` is deprecated",
        # CausalLMModule moves its flat dict batches itself (one .to() per tensor), on purpose
        r"overridden `transfer_batch_to_device` in `LightningModule` but have passed in a",
        r"torch\.utils\._pytree\._register_pytree_node is deprecated",
    )
)
_FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_LIGHTNING = ("lightning", "lightning.pytorch", "lightning.fabric")


def _matches(record: logging.LogRecord, patterns: tuple[re.Pattern, ...]) -> bool:
    try:
        text = record.getMessage()
    except Exception:  # a malformed record is not ours to drop
        return False
    return any(p.search(text) for p in patterns)


class _DropAds(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _matches(record, DROPPED)


class _Redact(logging.Filter):
    """Credentials never reach the console or the log file: ``key=...`` overrides, secret
    environment values and URL passwords in a record become ``<redacted>``
    (:func:`fmlab.utils.secrets.redact_text`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from fmlab.utils.secrets import redact_text

        try:
            text = record.getMessage()
        except Exception:  # a malformed record is logging's to report
            return True
        clean = redact_text(text)
        if clean != text:
            record.msg, record.args = clean, None
        return True


class _ConsoleFilter(logging.Filter):
    """Keeps the console to what a researcher acts on (``train.log`` has everything)."""

    def __init__(self, verbose: bool) -> None:
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "fmlab_shown", False):  # already on screen (a table, the live bar)
            return False
        return self.verbose or not _matches(record, CONSOLE_ONLY_NOISE)


class ConsoleFormatter(logging.Formatter):
    """``message`` for INFO, ``warning: message`` above; third-party origins in brackets."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.levelno >= logging.WARNING:
            origin = "" if record.name.startswith(("fmlab", "py.warnings")) else record.name
            text = f"{record.levelname.lower()}: {text}" + (f" [{origin}]" if origin else "")
        if record.exc_info and record.levelno >= logging.ERROR:
            text += "\n" + self.formatException(record.exc_info)
        return text


class ConsoleHandler(logging.StreamHandler):
    """Hydra's console handler, clearing the live progress line before each record."""

    def emit(self, record: logging.LogRecord) -> None:
        from fmlab.utils.printing import live

        live.clear()
        super().emit(record)


def _log_warning(message, category, filename, lineno, file=None, line=None) -> None:
    logging.getLogger("py.warnings").warning(
        "%s: %s", category.__name__, message, extra={"location": f"{filename}:{lineno}"}
    )


def setup_job_logging(verbose: bool = False) -> str | None:
    """Finish Hydra's job logging as described above; returns the log file's path (if any).

    Safe to call once per job of a multirun: handlers are replaced, never added twice.
    """
    root = logging.getLogger()
    log_file = None
    for i, handler in enumerate(list(root.handlers)):
        if isinstance(handler, logging.FileHandler):
            handler.setFormatter(logging.Formatter(_FILE_FORMAT))
            handler.addFilter(_DropAds())
            handler.addFilter(_Redact())
            log_file = handler.baseFilename
        elif isinstance(handler, logging.StreamHandler) and not isinstance(handler, ConsoleHandler):
            console = ConsoleHandler(handler.stream)
            console.setLevel(handler.level)
            console.setFormatter(ConsoleFormatter())
            console.addFilter(_DropAds())
            console.addFilter(_Redact())
            console.addFilter(_ConsoleFilter(verbose))
            root.handlers[i] = console
            handler.close()
    if not root.handlers:  # hydra/job_logging=disabled or none: leave logging alone
        return None
    if "lightning" in sys.modules:  # otherwise build_trainer() calls it after the import
        adopt_lightning_logging()
    warnings.showwarning = _log_warning
    if "transformers" in sys.modules:  # "Writing model shards" bars at every export
        sys.modules["transformers"].utils.logging.disable_progress_bar()
    else:
        import os

        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    return log_file


def adopt_lightning_logging() -> None:
    """Route Lightning's log records through the job's console and ``train.log``.

    ``import lightning`` gives its logger a private stderr handler (``INFO: ...``) that would
    bypass both; entry points import Lightning lazily, after the job's logging is set up, so
    :func:`fmlab.workflow.build_trainer` calls this too. Outside an fmlab job (a notebook, a
    library caller) Lightning's own handler is left alone.
    """
    if not any(isinstance(h, ConsoleHandler) for h in logging.getLogger().handlers):
        return
    for name in _LIGHTNING:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.propagate = True


def log_file_of_job() -> Path | None:
    """The current job's log file (``<run>/<task>.log``), if Hydra writes one."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            return Path(handler.baseFilename)
    return None
