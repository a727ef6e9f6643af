"""Per-period evaluation results: the model card's table of how well a model knows each period.

The forgetting monitor logs ``val/period/<label>/ppl`` for the held-out set of each period of a
release's dated sources (:class:`fmlab.releases.ReleaseDataModule`); :func:`period_card` joins
those numbers with what each set holds.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["PERIOD_METRIC", "period_card", "period_values"]

PERIOD_METRIC = re.compile(r"^val/period/(?P<label>[^/]+)/ppl$")


def period_values(metrics: dict[str, Any]) -> dict[str, float]:
    """``label → ppl`` of the ``val/period/<label>/ppl`` entries of ``metrics``, in time order."""
    found = {m["label"]: float(v) for k, v in metrics.items() if (m := PERIOD_METRIC.match(k))}
    return dict(sorted(found.items()))


def period_card(metrics: dict[str, Any], info: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    """The card's ``periods`` table: one row per period with its days, held-out documents and
    tokens, and the perplexity.

    Args:
        metrics: Final metrics (``summary.json``), with ``val/period/<label>/ppl``.
        info: ``label → {first, last, documents, tokens}`` of the held-out sets (the data
            module's ``period_info``); periods too small for a held-out set say ``skipped``.

    Returns:
        ``{"periods": {label: row}}``; empty when there are no per-period metrics.
    """
    values = period_values(metrics)
    if not values:
        return {}
    rows = {}
    for label in sorted({*values, *(info or {})}):
        meta = dict((info or {}).get(label, {}))
        rows[label] = {
            "first_day": meta.get("first"),
            "last_day": meta.get("last"),
            "held_out_documents": meta.get("documents"),
            "held_out_tokens": meta.get("tokens"),
            "ppl": values.get(label),
        }
    return {"periods": rows}
