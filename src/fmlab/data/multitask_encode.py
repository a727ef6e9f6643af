"""Reading, encoding and batching the examples of one multi-task task.

Records are normalised to ``{"_input", "_target", "_text"}``: the input text, the target (a
response string, a class index or a float) and the text a tokenizer is trained on.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from fmlab.config import ConfigError
from fmlab.data.sft import IGNORE_INDEX, collate_sft, encode_prompt, encode_sft
from fmlab.data.splits import SPLITS, empty_split_cause, hash_fractions, split_of
from fmlab.data.splits import split_sources as fed_splits
from fmlab.tasks.spec import TaskSpec

__all__ = ["collate_task", "encode_task", "load_task_records", "prompt_ids"]


def _target(spec: TaskSpec, value: Any, where: str) -> Any:
    """The target of one record as the task's kind needs it; errors name ``where``."""
    if spec.kind == "generative":
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{where}: '{spec.target_field}' must be a non-empty string")
        return value
    if spec.kind == "classification":
        labels = spec.labels or []
        if isinstance(value, str) and value in labels:
            return labels.index(value)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(labels):
            raise ValueError(
                f"{where}: '{spec.target_field}' must be a class index 0..{len(labels) - 1} or "
                f"one of {labels}, got {value!r}"
            )
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{where}: '{spec.target_field}' must be a finite number, got {value!r}")
    return float(value)


def _normalise(spec: TaskSpec, rec: dict[str, Any], where: str) -> dict[str, Any]:
    for field in (spec.input_field, spec.target_field):
        if field not in rec:
            raise ValueError(f"{where}: no field '{field}' (fields: {sorted(rec)})")
    text = rec[spec.input_field]
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{where}: '{spec.input_field}' must be a non-empty string")
    target = _target(spec, rec[spec.target_field], where)
    seen = spec.template.format(input=text)
    return {
        "_input": text,
        "_target": target,
        "_text": seen + (target if isinstance(target, str) else ""),
    }


def load_task_records(
    name: str,
    spec: TaskSpec,
    *,
    seed: int,
    cache_dir: str,
    split_sources: dict[str, Any] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Records of every split: generated (built-in) or read from files (a file's declared split,
    else a hash of the input into the splits no file declares).

    Args:
        name: Task name.
        spec: Its spec.
        seed: Generation seed (built-in tasks).
        cache_dir: fmlab cache directory.
        split_sources: Filled with which splits came from which file (files only).
    """
    if spec.builtin is not None:
        from fmlab.tasks import generate_task  # tasks import data.splits: avoid a cycle

        try:
            raw = generate_task(
                spec.builtin,
                n_train=spec.n_train,
                n_val=spec.n_val,
                n_test=spec.n_test,
                seed=seed,
                **spec.builtin_args,
            )
        except (TypeError, ValueError) as err:
            raise ValueError(f"task.{name}: builtin {spec.builtin!r}: {err}") from err
        return {
            split: [
                _normalise(spec, r, f"task.{name} ({spec.builtin} example {i})")
                for i, r in enumerate(recs)
            ]
            for split, recs in raw.items()
        }
    from fmlab.data.sources import load_text_source

    out: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    declared = {src.path: src.split for src in spec.source_specs}
    vf, tf = hash_fractions(spec.val_fraction, spec.test_fraction, declared.values())
    counts: dict[str, dict[str, int]] = {}
    for src in spec.source_specs:
        path = src.path
        ds = load_text_source(path, text_field=spec.input_field, cache_dir=cache_dir)
        for row, rec in enumerate(ds):
            rec = {**rec, spec.input_field: rec.get("text", rec.get(spec.input_field))}
            norm = _normalise(spec, rec, f"task.{name}: source '{path}' row {row}")
            split = src.split or split_of(norm["_input"], vf, tf, f"task:{name}")
            out[split].append(norm)
            counts.setdefault(path, {})[split] = counts.get(path, {}).get(split, 0) + 1
    if split_sources is not None:
        split_sources.update(fed_splits(declared, counts))
    for split, recs in out.items():
        if not recs and (cause := empty_split_cause(split, declared, vf, tf)):
            raise ConfigError(f"task.{name}: {cause}")
    return out


def prompt_ids(
    spec: TaskSpec, rec: dict[str, Any], tokenizer: PreTrainedTokenizerBase
) -> list[int]:
    """Token ids of the input as the model reads it (the prompt, for generation)."""
    return encode_prompt(
        rec["_input"], tokenizer, template=spec.template.replace("{input}", "{prompt}")
    )


def encode_task(
    spec: TaskSpec,
    rec: dict[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    tally: dict[str, int] | None = None,
) -> dict[str, Any] | None:
    """One encoded example: generative as SFT (labels on the response), head tasks as
    ``{"input_ids", "target"}`` (inputs truncated on the right to ``max_length``).

    ``tally`` counts ``overlong`` examples and those ``truncated`` to fit (kept).
    Returns None when a generative example has no room for a response token.
    """
    template = spec.template.replace("{input}", "{prompt}")
    if spec.kind == "generative":
        return encode_sft(
            rec["_input"],
            rec["_target"],
            tokenizer,
            max_length=max_length,
            template=template,
            tally=tally,
        )
    ids = encode_prompt(rec["_input"], tokenizer, template=template)
    if len(ids) > max_length and tally is not None:
        tally["overlong"] = tally.get("overlong", 0) + 1
        tally["truncated"] = tally.get("truncated", 0) + 1
    ids = ids[:max_length]
    return {"input_ids": ids, "target": rec["_target"]} if ids else None


def collate_task(
    spec: TaskSpec, task: int, rows: list[dict[str, Any]], pad_id: int, padding_side: str
) -> dict[str, Any]:
    """A padded batch of one task: SFT keys, plus ``targets`` for head tasks and ``task``."""
    if spec.kind == "generative":
        batch = collate_sft(rows, pad_id, padding_side)
    else:
        padded = [
            {"input_ids": r["input_ids"], "labels": [IGNORE_INDEX] * len(r["input_ids"])}
            for r in rows
        ]
        batch = collate_sft(padded, pad_id, padding_side)
        del batch["labels"]  # no LM loss on head tasks
        dtype = torch.long if spec.kind == "classification" else torch.float32
        batch["targets"] = torch.tensor([r["target"] for r in rows], dtype=dtype)
    batch["task"] = task  # a plain int: Lightning moves tensors only
    return batch
