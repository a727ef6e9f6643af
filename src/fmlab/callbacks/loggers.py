"""Logger factories that need more than a constructor call."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from lightning.pytorch.loggers import WandbLogger

__all__ = ["wandb"]


def _has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def wandb(
    *,
    save_dir: str,
    project: str = "fmlab",
    name: str | None = None,
    group: str | None = None,
    tags: list[str] | None = None,
    mode: Literal["auto", "online", "offline", "disabled"] = "auto",
) -> WandbLogger:
    """A W&B logger that keeps every wandb directory inside the run directory.

    Args:
        save_dir: The run directory; wandb's run, cache, config and artifact-staging directories
            all go under ``<save_dir>/wandb``.
        project: W&B project.
        name: Run name.
        group: Run group (e.g. a sweep).
        tags: Run tags.
        mode: ``auto`` runs online when an API key is configured and offline otherwise.
    """
    root = Path(save_dir) / "wandb"
    for var, sub in (
        ("WANDB_DIR", ""),
        ("WANDB_CACHE_DIR", "cache"),
        ("WANDB_CONFIG_DIR", "config"),
        ("WANDB_DATA_DIR", "data"),
    ):
        path = root / sub if sub else Path(save_dir)
        path.mkdir(parents=True, exist_ok=True)
        os.environ[var] = str(path)
    if mode == "auto":
        mode = "online" if _has_wandb_key() else "offline"
    return WandbLogger(
        save_dir=str(save_dir),
        project=project,
        name=name,
        group=group,
        tags=tags,
        mode=mode,
        offline=mode == "offline",
    )
