"""HF-format export: ``save_pretrained`` of model and tokenizer plus a model card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fmlab.utils.secrets import redact

__all__ = ["export_hf"]


def export_hf(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    card: dict[str, Any] | None = None,
) -> Path:
    """Write a directory loadable by ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained``.

    Args:
        model: The (unwrapped) HF model.
        tokenizer: Its tokenizer.
        out_dir: Target directory (created).
        card: Facts for the model card (``fmlab_card.json`` and ``README.md``): data, metrics,
            parent model.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    if card is not None:
        card = redact(card)  # model cards travel: never a credential in them
        (out / "fmlab_card.json").write_text(json.dumps(card, indent=2, default=str))
        lines = ["# fmlab export", ""]
        lines += [f"- **{k}**: {v}" for k, v in card.items() if not _is_table(v)]
        for key, rows in card.items():
            if _is_table(rows):
                lines += ["", f"## {key}", "", *_markdown_table(rows)]
        (out / "README.md").write_text("\n".join(lines) + "\n")
    return out


def _is_table(value: Any) -> bool:
    """A non-empty ``{row: {column: value}}`` mapping (e.g. the card's ``periods``)."""
    return (
        bool(value) and isinstance(value, dict) and all(isinstance(v, dict) for v in value.values())
    )


def _markdown_table(rows: dict[str, dict[str, Any]]) -> list[str]:
    columns = list(dict.fromkeys(c for row in rows.values() for c in row))
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else ("-" if v is None else str(v))
    out = ["| | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    out += [
        f"| {k} | " + " | ".join(cell(r.get(c)) for c in columns) + " |" for k, r in rows.items()
    ]
    return out
