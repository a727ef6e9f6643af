"""The SFT DataModule: prompt/response records from a built-in task or your files."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any, Literal

import lightning as L
import numpy as np
import torch
from pydantic import Field
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from fmlab.config import ConfigError
from fmlab.data.datamodule import SourceSpec
from fmlab.data.loaders import eval_loader, rank_world, train_loader
from fmlab.data.sft import collate_sft, encode_prompt, encode_sft, pack_sft, packed_attention_mask
from fmlab.data.sft import stats_of as sft_stats
from fmlab.data.sources import load_text_source
from fmlab.data.splits import SPLITS, empty_split_cause, hash_fractions, split_of, split_sources

__all__ = ["SFTDataModule"]

Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]


class _ListDataset(Dataset):
    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        return self.items[i]


def _collate_packed(rows: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    batch = {k: torch.as_tensor(np.stack([r[k] for r in rows])) for k in rows[0]}
    seq_ids = batch.pop("seq_ids")
    batch["attention_mask"] = packed_attention_mask(seq_ids)  # (B, 1, T, T): no cross-example
    return batch


class SFTDataModule(L.LightningDataModule):
    """Prompt/response examples, prompt-masked labels, padded or packed batches.

    Args:
        task: A built-in task (``arithmetic``, ``reverse``, ``sort``, ``logic``, ``classify``), or
            None to read ``sources``.
        task_args: Keyword arguments of the task generator (e.g. ``{digits: 2}``).
        n_train: Training examples generated for a built-in task.
        n_val: Validation examples generated for a built-in task.
        n_test: Test examples generated for a built-in task.
        sources: Files/datasets with ``prompt_field`` and ``response_field`` columns; a source
            with ``split: train|validation|test`` goes to that split as given, the others are
            hash-split by prompt (into the splits no source declares).
        prompt_field: Column of the prompt in ``sources``.
        response_field: Column of the response in ``sources``.
        template: Format string with ``{prompt}`` that builds the model input.
        chat_template: Use the tokenizer's chat template instead of ``template``.
        system: System message for the chat template.
        max_length: Longest example in tokens (checked against the model's positions at
            start-up).
        overlong: Examples longer than ``max_length``: ``truncate`` the response (rows with no
            response token left are dropped), ``drop`` them, or ``error``; counted in ``stats``.
        batch_size: Training examples (or packed rows) per batch per device.
        eval_batch_size: Validation/test batch size (default ``batch_size``).
        padding_side: Pad on the ``right`` or ``left``.
        pack: Pack several examples per row of ``max_length`` tokens (block-diagonal attention).
        val_fraction: For ``sources``: share of prompts held out for validation (by hash).
        test_fraction: For ``sources``: share held out for test.
        split_salt: Changes the hash split.
        seed: Seed of generation (tasks) and of the training shuffle.
        exact_match_examples: Held-out prompts per split scored by generation (0: off).
        max_new_tokens: Generation budget for exact match.
        num_workers: DataLoader workers.
        pin_memory: Pin host memory.
        cache_dir: fmlab cache directory (tokenizers, HF datasets cache).
    """

    def __init__(
        self,
        task: str | None = None,
        task_args: dict[str, Any] | None = None,
        n_train: Annotated[int, Field(gt=0)] = 2000,
        n_val: Annotated[int, Field(gt=0)] = 200,
        n_test: Annotated[int, Field(gt=0)] = 200,
        sources: list[str | SourceSpec] | None = None,
        prompt_field: str = "prompt",
        response_field: str = "response",
        template: str = "{prompt}",
        chat_template: bool = False,
        system: str | None = None,
        max_length: Annotated[int, Field(gt=1)] = 128,
        overlong: Literal["truncate", "drop", "error"] = "truncate",
        batch_size: Annotated[int, Field(gt=0)] = 16,
        eval_batch_size: Annotated[int, Field(gt=0)] | None = None,
        padding_side: Literal["right", "left"] = "right",
        pack: bool = False,
        val_fraction: Fraction = 0.1,
        test_fraction: Fraction = 0.1,
        split_salt: str = "",
        seed: int = 0,
        exact_match_examples: Annotated[int, Field(ge=0)] = 200,
        max_new_tokens: Annotated[int, Field(gt=0)] = 16,
        num_workers: Annotated[int, Field(ge=0)] = 0,
        pin_memory: bool = False,
        cache_dir: str = ".cache/fmlab",
    ) -> None:
        super().__init__()
        if (task is None) == (not sources):
            raise ValueError("data: give exactly one of data.task or data.sources")
        if "{prompt}" not in template:
            raise ValueError(f"data.template must contain '{{prompt}}', got {template!r}")
        self.task, self.task_args = task, dict(task_args or {})
        self.sizes = {"train": n_train, "validation": n_val, "test": n_test}
        self.sources = [
            SourceSpec(path=s) if isinstance(s, str) else SourceSpec(**dict(s))
            for s in sources or []
        ]
        self.prompt_field, self.response_field = prompt_field, response_field
        self.fmt = {"template": template, "chat_template": chat_template, "system": system}
        self.max_length, self.overlong = max_length, overlong
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.padding_side, self.pack = padding_side, pack
        self.val_fraction, self.test_fraction, self.split_salt = (
            val_fraction,
            test_fraction,
            split_salt,
        )
        self.seed = seed
        self.exact_match_examples, self.max_new_tokens = exact_match_examples, max_new_tokens
        self.num_workers, self.pin_memory, self.cache_dir = num_workers, pin_memory, cache_dir
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.records: dict[str, list[dict[str, Any]]] = {}
        self.encoded: dict[str, list[dict[str, list[int]]]] = {}
        self.stats: dict[str, Any] = {}
        self.split_sources: dict[str, Any] = {}

    @property
    def block_size(self) -> int:
        """Longest sequence the model must handle."""
        return self.max_length

    # ---------------------------------------------------------------- preparation
    def _load_records(self) -> dict[str, list[dict[str, Any]]]:
        if self.task is not None:
            from fmlab.tasks import generate_task  # tasks import data.splits: avoid a cycle

            return generate_task(
                self.task,
                n_train=self.sizes["train"],
                n_val=self.sizes["validation"],
                n_test=self.sizes["test"],
                seed=self.seed,
                **self.task_args,
            )
        out: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
        declared = {spec.label: spec.split for spec in self.sources}
        vf, tf = hash_fractions(self.val_fraction, self.test_fraction, declared.values())
        counts: dict[str, dict[str, int]] = {}
        for spec in self.sources:
            ds = load_text_source(
                spec.path,
                text_field=self.prompt_field,
                split=spec.read_split,
                hf_name=spec.hf_name,
                cache_dir=self.cache_dir,
            )
            if self.response_field not in ds.column_names:
                raise ValueError(
                    f"source '{spec.path}': no column '{self.response_field}' "
                    f"(columns: {ds.column_names}); set data.response_field"
                )
            for row, (p, r) in enumerate(zip(ds["text"], ds[self.response_field])):
                if not isinstance(p, str) or not isinstance(r, str) or not r.strip():
                    raise ValueError(
                        f"source '{spec.path}' row {row}: prompt and response must be non-empty "
                        f"strings, got {type(p).__name__}/{type(r).__name__}"
                    )
                split = spec.split or split_of(p, vf, tf, self.split_salt)
                out[split].append({"prompt": p, "response": r})
                per = counts.setdefault(spec.label, {})
                per[split] = per.get(split, 0) + 1
        self.split_sources = split_sources(declared, counts)
        return out

    def prepare(self, tokenizer_factory: Any) -> PreTrainedTokenizerBase:
        """Load/generate records, build the tokenizer, encode every split; returns the tokenizer."""
        self.records = self._load_records()
        train = self.records["train"]
        fingerprint = f"sft|{self.task}|{self.task_args}|{self.seed}|{len(train)}|" + "|".join(
            s.path for s in self.sources
        )
        tok = tokenizer_factory(
            texts=lambda: (r["prompt"] + r["response"] for r in train),
            fingerprint=fingerprint,
            cache_dir=self.cache_dir,
        )
        self.tokenizer = tok
        self.stats = {"sources": [s.path for s in self.sources] or [f"task:{self.task}"]}
        if self.sources:
            self.stats["split_sources"] = self.split_sources
        for split, recs in self.records.items():
            self._check_fed(split, recs)
            tally: dict[str, int] = {}
            policy = "drop" if self.overlong == "drop" else "truncate"
            enc = []
            for i, r in enumerate(recs):
                before = tally.get("overlong", 0)
                enc.append(
                    encode_sft(
                        r["prompt"],
                        r["response"],
                        tok,
                        max_length=self.max_length,
                        overlong=policy,
                        tally=tally,
                        **self.fmt,
                    )
                )
                if self.overlong == "error" and tally.get("overlong", 0) > before:
                    raise ConfigError(
                        f"data: {split} record {i} (prompt {r['prompt'][:40]!r}...) is longer "
                        f"than data.max_length={self.max_length} tokens; raise data.max_length "
                        "or set data.overlong=truncate|drop"
                    )
            self.stats[split] = {
                **sft_stats(enc),
                "truncated": tally.get("truncated", 0),
                "overlong": tally.get("overlong", 0),
                "overlong_policy": self.overlong,
            }
            self.encoded[split] = [e for e in enc if e is not None]
            if not self.encoded[split]:
                raise ConfigError(
                    f"data: the {split} split has no usable example ({len(recs)} records, all "
                    f"{self.stats[split]['dropped_truncated']} dropped as longer than "
                    f"data.max_length={self.max_length} with data.overlong={self.overlong}); "
                    "raise data.max_length"
                )
        if len(self.encoded["train"]) < self.batch_size:
            raise ValueError(
                f"data: {len(self.encoded['train'])} training examples < data.batch_size="
                f"{self.batch_size}; lower data.batch_size or give more training data"
            )
        return tok

    def _check_fed(self, split: str, recs: list[dict[str, Any]]) -> None:
        """An empty split before encoding: say why (no source feeds it, or too little data)."""
        if recs:
            return
        if not self.sources:
            raise ConfigError(f"data: the built-in task produced no {split} records")
        declared = {s.label: s.split for s in self.sources}
        cause = empty_split_cause(split, declared, self.val_fraction, self.test_fraction)
        raise ConfigError(
            f"data: {cause}"
            if cause
            else f"data: the hash split put none of the {sum(map(len, self.records.values()))} "
            f"records into {split}; add data or raise data.val_fraction/test_fraction"
        )

    def exact_match_set(self, split: str) -> list[tuple[list[int], str]]:
        """(prompt ids, reference response) of the first ``exact_match_examples`` of a split."""
        assert self.tokenizer is not None
        recs = self.records.get(split, [])[: self.exact_match_examples]
        return [
            (encode_prompt(r["prompt"], self.tokenizer, **self.fmt), r["response"].strip())
            for r in recs
        ]

    # ---------------------------------------------------------------- loaders
    def setup(self, stage: str | None = None) -> None:
        if not self.encoded:
            raise RuntimeError("SFTDataModule.prepare(tokenizer_factory) must run before fit")

    def _collate(self) -> Any:
        assert self.tokenizer is not None
        return partial(
            collate_sft, pad_id=self.tokenizer.pad_token_id, padding_side=self.padding_side
        )

    def train_dataloader(self) -> Any:
        rank, world = rank_world(self)
        if self.pack:
            arrays = pack_sft(self.encoded["train"], self.max_length, self.tokenizer.pad_token_id)
            rows = [{k: v[i] for k, v in arrays.items()} for i in range(len(arrays["input_ids"]))]
            dataset, collate = _ListDataset(rows), _collate_packed
        else:
            dataset, collate = _ListDataset(self.encoded["train"]), self._collate()
        return train_loader(
            dataset,
            batch_size=self.batch_size,
            seed=self.seed,
            rank=rank,
            world=world,
            collate_fn=collate,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
        )

    def _eval(self, split: str) -> Any:
        rank, world = rank_world(self)
        return eval_loader(
            _ListDataset(self.encoded[split]),
            batch_size=self.eval_batch_size,
            rank=rank,
            world=world,
            collate_fn=self._collate(),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
        )

    def val_dataloader(self) -> Any:
        return self._eval("validation")

    def test_dataloader(self) -> Any:
        return self._eval("test")
