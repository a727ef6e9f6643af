"""Segment stage for preference pairs (``prepare/recipe=preference``) and its reader.

:class:`Preference` encodes every (prompt, chosen, rejected) record with
:func:`fmlab.data.preference_encode.encode_pair` (template or chat template, the stated truncation
rules) and writes per split ``prompt_ids``, ``chosen_ids``, ``rejected_ids`` next to the texts.
Pairs dropped by truncation are counted per reason and split; truncated prompts and responses are
counted too. :func:`load_prepared_pairs` reads such a dataset back for ``data=preference_files
data.path=...``.
"""

from __future__ import annotations

import functools
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal

import pyarrow as pa
from pydantic import Field

from fmlab.data.pipeline.engine import ArrowSink, Runner, Stage
from fmlab.data.pipeline.records import PrepareError, content_of
from fmlab.data.pipeline.segment import _doc_stats, _per_split, _Stats
from fmlab.data.splits import SPLITS

__all__ = ["Preference", "load_prepared_pairs"]

_TEXT = ("prompt", "chosen", "rejected")
_IDS = ("prompt_ids", "chosen_ids", "rejected_ids")


def _preference_task(batch: pa.RecordBatch, tok: Any, opts: dict[str, Any]) -> dict[str, Any]:
    from fmlab.data.preference_encode import PairStats, encode_pair

    cols = batch.to_pydict()
    rows = _per_split(cols)
    texts = content_of(cols, "preference")
    enc: dict[int, dict[str, list[int]] | None] = {}
    pair_stats: dict[str, dict[str, Any]] = {}
    for split, idx in rows.items():
        stats = PairStats()
        for i in idx:
            enc[i] = encode_pair(
                cols["prompt"][i], cols["chosen"][i], cols["rejected"][i], tok, stats=stats, **opts
            )
        pair_stats[split] = stats.as_dict()
    kept = {s: [i for i in idx if enc[i] is not None] for s, idx in rows.items()}
    ntok = [0] * len(texts)
    for i, e in enc.items():
        if e is not None:
            ntok[i] = 2 * len(e["prompt"]) + len(e["chosen"]) + len(e["rejected"])
    part = _doc_stats(cols, {s: k for s, k in kept.items() if k}, texts, ntok)
    part["pair_stats"] = pair_stats
    part["rows"] = {
        s: {
            "id": [cols["id"][i] for i in k],
            **{t: [cols[t][i] for i in k] for t in _TEXT},
            **{f"{t}_ids": [enc[i][t] for i in k] for t in _TEXT},  # type: ignore[index]
        }
        for s, k in kept.items()
    }
    part["dropped_ids"] = [cols["id"][i] for i, e in enc.items() if e is None][:5]
    return part


class Preference(Stage):
    """Preference rows: prompt ids and both responses' ids (EOS appended), truncated by rule.

    Args:
        max_length: Longest ``prompt + response`` in tokens.
        max_prompt_length: Fewest prompt tokens truncation keeps (None: ``max_length // 2``).
        truncation: ``truncate`` (the prompt from the left, then responses from the right) or
            ``drop`` (pairs that do not fit are dropped).
        template: Python format string with ``{prompt}`` (ignored with ``chat_template``).
        chat_template: Use the tokenizer's chat template.
        system: System message for the chat template.
    """

    name = "segment"
    version = 1
    mode = "preference"

    def __init__(
        self,
        max_length: Annotated[int, Field(gt=1)] = 512,
        max_prompt_length: Annotated[int, Field(gt=0)] | None = None,
        truncation: Literal["truncate", "drop"] = "truncate",
        template: str = "{prompt}",
        chat_template: bool = False,
        system: str | None = None,
    ) -> None:
        if "{prompt}" not in template:
            raise ValueError(f"segment.template must contain '{{prompt}}', got {template!r}")
        if max_prompt_length is not None and max_prompt_length >= max_length:
            raise ValueError(f"segment.max_prompt_length must be < max_length={max_length}")
        super().__init__(
            mode="preference",
            max_length=max_length,
            max_prompt_length=max_prompt_length,
            truncation=truncation,
            template=template,
            chat_template=chat_template,
            system=system,
        )

    def run(self, runner: Runner, table: pa.Table, out: Path, kind: str, tok: Any) -> dict:
        opts = {k: v for k, v in self.params.items() if k != "mode"}
        schema = pa.schema(
            [pa.field("id", pa.string())]
            + [pa.field(t, pa.string()) for t in _TEXT]
            + [pa.field(t, pa.list_(pa.int32())) for t in _IDS]
        )
        sinks = {s: ArrowSink(out / f"{s}.arrow", schema) for s in SPLITS}
        stats, per_split, dropped_ids = _Stats(), {s: Counter() for s in SPLITS}, []
        task = functools.partial(_preference_task, tok=tok, opts=opts)
        try:
            for part in runner.map(
                runner.batches(table), task, description="tokenize (pairs)", total=table.num_rows
            ):
                stats.add(part)
                for split, cols in part["rows"].items():
                    sinks[split].write(cols)
                for split, st in part["pair_stats"].items():
                    counts = per_split[split]
                    for key in ("pairs", "prompt_truncated", "response_truncated"):
                        counts[key] += st[key]
                    counts.update({f"dropped_{k}": v for k, v in st["dropped"].items()})
                dropped_ids.extend(part["dropped_ids"][: 5 - len(dropped_ids)])
        finally:
            for sink in sinks.values():
                sink.close()
        result = stats.save(out)
        removed: Counter = Counter()
        for s in SPLITS:
            counts = dict(per_split[s])
            result["splits"][s].update(rows=sinks[s].rows, **counts)
            removed.update({k[8:]: v for k, v in counts.items() if k.startswith("dropped_")})
        return {
            "in": table.num_rows,
            "out": table.num_rows - sum(removed.values()),
            "removed": dict(removed),
            **result,
            "examples": dropped_ids,
        }


def _tables(path: Path) -> dict[str, pa.Table]:
    present = [s for s in SPLITS if (path / s).exists()]
    if (path / "dataset_dict.json").is_file():
        import datasets

        dd = datasets.load_from_disk(str(path))
        return {s: dd[s].data.table for s in present}
    import pyarrow.parquet as pq

    return {s: pq.read_table(str(path / s)) for s in present}


def load_prepared_pairs(path: str) -> tuple[Any, dict, dict, dict[str, Any]]:
    """Tokenizer, encoded pairs and records per split, and info (``max_length``, ``stats``) of a
    dataset prepared with ``prepare/recipe=preference``.

    Raises:
        ConfigError: When ``path`` is not such a dataset.
    """
    from fmlab.config import ConfigError
    from fmlab.data.pipeline.write import load_card
    from fmlab.data.tokenizer import pretrained

    root = Path(path).expanduser()
    try:
        card = load_card(str(root))
    except PrepareError as err:
        raise ConfigError(f"data.path={path}: {err}") from err
    if card is None:
        raise ConfigError(f"data.path={path}: no card.json (not an fmlab-prepare output)")
    if card["segment"]["mode"] != "preference":
        raise ConfigError(
            f"data.path={path}: segment mode '{card['segment']['mode']}'; preference training "
            "needs pairs (prepare with prepare/recipe=preference)"
        )
    tok = pretrained(name_or_path=str(root / "tokenizer"))
    pairs: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    records: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    for split, table in _tables(root).items():
        cols = table.to_pydict()
        for i in range(table.num_rows):
            records[split].append({t: cols[t][i] for t in _TEXT})
            pairs[split].append(
                {
                    "prompt": list(cols["prompt_ids"][i]),
                    "chosen": list(cols["chosen_ids"][i]),
                    "rejected": list(cols["rejected_ids"][i]),
                    "index": i,
                    "reference": cols["chosen"][i].strip(),
                }
            )
    stats = {"sources": [s["source"] for s in card["sources"]], "path": str(path)}
    stats.update({s: card["splits"][s] for s in SPLITS})
    return tok, pairs, records, {"max_length": card["segment"]["max_length"], "stats": stats}
