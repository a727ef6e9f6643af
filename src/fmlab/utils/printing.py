"""Console output: the config tree, result tables (also kept in the run's log) and a live line."""

from __future__ import annotations

import io
import logging
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table
from rich.tree import Tree

from fmlab.utils.secrets import redact, redact_text

__all__ = ["LiveLine", "live", "print_config", "print_table", "relative_paths"]

_console = Console()
log = logging.getLogger("fmlab")


class LiveLine:
    """One status line redrawn in place at the bottom of an interactive terminal (stderr).

    Not a terminal (a file, a pipe, a SLURM log): nothing is drawn; callers log instead. Anything
    else printed to the terminal calls :meth:`clear` first (fmlab's console log handler does).
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._shown = False

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stderr

    @property
    def active(self) -> bool:
        try:
            return self.stream.isatty()
        except (AttributeError, ValueError):  # a closed or unusual stream
            return False

    def show(self, text: str) -> None:
        """Replace the line with ``text`` (cut to the terminal width)."""
        if not self.active:
            return
        width = shutil.get_terminal_size((100, 20)).columns - 1
        self.stream.write("\r\033[K" + text[:width])
        self.stream.flush()
        self._shown = True

    def clear(self) -> None:
        """Erase the line (before other output; it is redrawn at the next :meth:`show`)."""
        if self._shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._shown = False


live = LiveLine()


def print_config(
    cfg: DictConfig,
    order: tuple[str, ...] = ("data", "model", "method", "optim", "scheduler", "trainer"),
) -> None:
    """Print the resolved config as a tree, main groups first."""
    tree = Tree("config", guide_style="dim")
    keys = [k for k in order if k in cfg] + [k for k in cfg if k not in order and k != "hydra"]
    for key in keys:
        node = cfg[key]
        if isinstance(node, DictConfig):
            text = OmegaConf.to_yaml(redact(OmegaConf.to_container(node, resolve=True)))
        else:
            text = redact_text(str(node))
        tree.add(f"[bold]{key}").add(Syntax(text, "yaml", theme="ansi_dark"))
    live.clear()
    _console.print(tree)


def print_table(title: str, rows: Mapping[str, Any]) -> None:
    """Print ``rows`` as a two-column table (on the console, and as text in the run's log)."""
    table = Table(title=title, show_header=False)
    table.add_column()
    table.add_column(overflow="fold")  # long paths wrap rather than being cut at the width
    for key, value in redact(dict(rows)).items():
        table.add_row(str(key), f"{value:.4g}" if isinstance(value, float) else str(value))
    live.clear()
    _console.print(table)
    if log.isEnabledFor(logging.INFO):  # train.log gets the table; the console already has it
        text = io.StringIO()
        Console(file=text, width=120, color_system=None).print(table)
        log.info("%s\n%s", title, text.getvalue().rstrip(), extra={"fmlab_shown": True})


def relative_paths(paths: Mapping[str, Any], root: str | Path) -> dict[str, str]:
    """``paths`` for display: those inside ``root`` relative to it (``root`` itself stays whole)."""
    root = Path(root).resolve()
    shown = {}
    for key, value in paths.items():
        if not value:
            continue
        path = Path(str(value)).resolve()
        inside = path != root and path.is_relative_to(root)
        shown[key] = str(path.relative_to(root)) if inside else str(value)
    return shown
