"""Preference records (``prompt``, ``chosen``, ``rejected``) from a built-in task or your files.

- Built-in (:func:`task_pairs`): a task of :mod:`fmlab.tasks.builtin`, chosen = its exact answer,
  rejected = a plausible wrong one (:func:`fmlab.tasks.builtin.wrong_answer`), so learning is
  checkable by exact match as well as by reward accuracy.
- Files (:func:`read_sources`): JSONL/JSON/CSV/Parquet (optionally compressed), ``save_to_disk``
  directories, ``s3://`` URIs or Hub names, read row by row by fmlab-prepare's reader, so every
  bad row has a position (``file:line`` or ``name[row]``). A source with a declared
  ``split: train|validation|test`` is used as given; only undeclared sources are split by a hash of
  the prompt (both responses of a prompt always land in the same split).

Bad rows (a missing or non-string field, an empty prompt/chosen/rejected, chosen equal to
rejected) are dropped and counted per reason with their first positions
(``on_bad_row="drop"``), or stop the run naming the file and row (``on_bad_row="error"``).
"""

from __future__ import annotations

import random
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from fmlab.config import ConfigError
from fmlab.data.splits import SPLITS, split_of

__all__ = ["PreferenceSource", "read_sources", "task_pairs"]

Record = dict[str, Any]


class PreferenceSource(BaseModel):
    """One file source of preference pairs and how its fields map onto prompt/chosen/rejected.

    Attributes:
        path: File, glob, directory, ``save_to_disk`` directory, ``s3://`` URI or Hub name.
        split: ``train``, ``validation`` or ``test`` to use the whole source as that split; None
            to split it by a hash of the prompt.
        prompt_field: Field of the prompt (default: ``data.prompt_field``); dotted for nesting.
        chosen_field: Field of the preferred response (default: ``data.chosen_field``).
        rejected_field: Field of the other response (default: ``data.rejected_field``).
        hf_split: Split to read from a ``DatasetDict``/Hub dataset (default: ``split`` or train).
        hf_name: Hub dataset configuration.
        name: How the source appears in the data card (default: ``path``).
        storage_options: fsspec options for ``s3://`` sources.
    """

    model_config = ConfigDict(extra="forbid")
    path: str
    split: Literal["train", "validation", "test"] | None = None
    prompt_field: str | None = None
    chosen_field: str | None = None
    rejected_field: str | None = None
    hf_split: str | None = None
    hf_name: str | None = None
    name: str | None = None
    storage_options: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        return self.name or self.path


def task_pairs(
    task: str, *, n_train: int, n_val: int, n_test: int, seed: int, **task_args: Any
) -> dict[str, list[Record]]:
    """Pairs of a built-in task per split: chosen = the right answer, rejected = a wrong one."""
    from fmlab.tasks import generate_task  # tasks import data.splits: avoid a cycle
    from fmlab.tasks.builtin import wrong_answer

    records = generate_task(
        task, n_train=n_train, n_val=n_val, n_test=n_test, seed=seed, **task_args
    )
    out: dict[str, list[Record]] = {}
    for split in SPLITS:
        rng = random.Random(f"preference|{task}|{seed}|{split}")
        out[split] = [
            {
                "prompt": r["prompt"],
                "chosen": r["response"],
                "rejected": wrong_answer(task, r, rng, **task_args),
            }
            for r in records[split]
        ]
    return out


def _where_error(label: str, where: str, detail: str) -> ConfigError:
    return ConfigError(
        f"data.sources '{label}': {where}: {detail}; fix the row or set data.on_bad_row=drop "
        "(bad rows are then skipped and counted in the data card)"
    )


def read_sources(
    sources: list[PreferenceSource],
    *,
    fields: dict[str, str],
    on_bad_row: Literal["drop", "error"],
    val_fraction: float,
    test_fraction: float,
    salt: str,
    cache_dir: str | None = None,
) -> tuple[dict[str, list[Record]], dict[str, Any]]:
    """Read every source into per-split records.

    Args:
        sources: The sources, in order.
        fields: Default ``prompt_field``/``chosen_field``/``rejected_field``.
        on_bad_row: ``drop`` (count and skip) or ``error`` (stop, naming file and row).
        val_fraction: Share of undeclared sources' prompts held out for validation.
        test_fraction: Share held out for test.
        salt: Changes the hash split.
        cache_dir: Cache for Hub datasets.

    Returns:
        Records per split, and stats: per source its rows, kept pairs, bad rows by reason with
        their first positions, and where its pairs went (a declared split or ``hash``).
    """
    from fmlab.data.pipeline import PrepareError, SourceSpec
    from fmlab.data.pipeline.read import iter_rows, resolve_source
    from fmlab.data.pipeline.structure import RowTally

    out: dict[str, list[Record]] = {s: [] for s in SPLITS}
    per_source = []
    for src in sources:
        spec = SourceSpec(
            path=src.path,
            prompt_field=src.prompt_field or fields["prompt_field"],
            chosen_field=src.chosen_field or fields["chosen_field"],
            rejected_field=src.rejected_field or fields["rejected_field"],
            split=src.hf_split or src.split or "train",
            hf_name=src.hf_name,
            name=src.name,
            storage_options=src.storage_options,
        )
        tally = RowTally(limit=5)
        counts = dict.fromkeys(SPLITS, 0)
        try:
            resolved = resolve_source(spec, src.storage_options, cache_dir)
            rows = iter_rows(resolved, cache_dir=cache_dir)
            for rec in tally.records(rows, spec, "preference"):
                split = src.split or split_of(rec["prompt"], val_fraction, test_fraction, salt)
                out[split].append({k: rec[k] for k in ("prompt", "chosen", "rejected")})
                out[split][-1]["where"] = rec["id"]
                counts[split] += 1
                if on_bad_row == "error" and tally.bad:
                    break
        except PrepareError as err:
            raise ConfigError(f"data.sources: {err}") from err
        if on_bad_row == "error" and tally.bad:
            reason, first = next((r, e[0]) for r, e in tally.examples.items() if e)
            raise _where_error(src.label, first["where"], f"{reason}: {first['detail']}")
        if tally.rows == 0:
            raise ConfigError(f"data.sources '{src.label}': no rows (empty files?)")
        if tally.kept == 0:
            reasons = {r: e[0]["where"] for r, e in tally.examples.items() if e}
            raise ConfigError(
                f"data.sources '{src.label}': none of its {tally.rows} rows is a usable pair "
                f"({dict(tally.bad)}, first at {reasons}); check data.prompt_field/chosen_field/"
                f"rejected_field (now {spec.prompt_field}/{spec.chosen_field}/"
                f"{spec.rejected_field})"
            )
        per_source.append(
            {
                "source": src.label,
                "split": src.split or "hash",
                "rows": tally.rows,
                "kept": tally.kept,
                "pairs": counts,
                "bad": dict(tally.bad),
                "bad_examples": tally.examples,
            }
        )
    return out, {"sources": per_source}
