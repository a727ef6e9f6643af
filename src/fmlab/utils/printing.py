"""Rich console output: the config tree and result tables."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table
from rich.tree import Tree

from fmlab.utils.secrets import redact, redact_text

__all__ = ["print_config", "print_table"]

_console = Console()


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
    _console.print(tree)


def print_table(title: str, rows: Mapping[str, Any]) -> None:
    """Print ``rows`` as a two-column table."""
    table = Table(title=title, show_header=False)
    for key, value in redact(dict(rows)).items():
        table.add_row(str(key), f"{value:.4g}" if isinstance(value, float) else str(value))
    _console.print(table)
