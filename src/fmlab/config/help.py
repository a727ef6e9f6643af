"""A faster ``--help`` for Hydra entry points.

Hydra's ``--help`` lists every config group and its options: about 140 calls to
``ConfigLoaderImpl.get_group_options``, each of which first deep-copies the whole config
repository (Hydra's own structured configs, ~10 ms a copy on this project's 2-core machine). That
listing cost more than the rest of ``fmlab-train --help`` together. While one help text is
formatted nothing changes the repository, so :func:`reuse_repository_in_help` lets those calls
share one copy. The text printed is the same.
"""

from __future__ import annotations

import functools
from typing import Any

__all__ = ["reuse_repository_in_help"]


def reuse_repository_in_help() -> None:
    """Make ``Hydra.get_help`` build the copied config repository once per help text.

    Idempotent; does nothing on a Hydra without the internals it relies on (1.3.x has them).
    """
    from hydra._internal.hydra import Hydra

    original = getattr(Hydra, "get_help", None)
    if original is None or getattr(original, "_fmlab_reuses_repository", False):
        return

    @functools.wraps(original)
    def get_help(self: Hydra, *args: Any, **kwargs: Any) -> str:
        loader = self.config_loader
        create = getattr(loader, "_parse_overrides_and_create_caching_repo", None)
        if create is None:
            return original(self, *args, **kwargs)
        made: dict[tuple[Any, ...], Any] = {}

        def create_once(config_name: str | None, overrides: list[str]) -> Any:
            key = (config_name, tuple(overrides))
            if key not in made:
                made[key] = create(config_name, overrides)
            return made[key]

        loader._parse_overrides_and_create_caching_repo = create_once  # this instance only
        try:
            return original(self, *args, **kwargs)
        finally:
            del loader._parse_overrides_and_create_caching_repo

    get_help._fmlab_reuses_repository = True  # type: ignore[attr-defined]
    Hydra.get_help = get_help  # type: ignore[method-assign]
