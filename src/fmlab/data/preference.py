"""The preference DataModule: (prompt, chosen, rejected) pairs for DPO, IPO and SimPO.

Three ways in (exactly one): a built-in ``task`` (chosen = the right answer, rejected = a wrong
one), your ``sources`` (see :mod:`fmlab.data.preference_records`), or ``path``, a dataset written
by ``fmlab-prepare prepare/recipe=preference`` (its tokens, splits and tokenizer are used).

Pairs are encoded by :func:`fmlab.data.preference_encode.encode_pair` (truncation rules and their
counts there) and batched as 2B sequences, chosen then rejected, padded or packed.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal

import lightning as L
from pydantic import Field
from transformers import PreTrainedTokenizerBase

from fmlab.config import ConfigError
from fmlab.data.loaders import eval_loader, rank_world, train_loader
from fmlab.data.preference_encode import PairStats, collate_pairs, encode_pair
from fmlab.data.preference_records import PreferenceSource, read_sources, task_pairs
from fmlab.data.sft import IGNORE_INDEX, collate_sft
from fmlab.data.splits import SPLITS, empty_split_cause

__all__ = ["PreferenceDataModule"]

Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]


class PreferenceDataModule(L.LightningDataModule):
    """Preference pairs, prompt-masked, batched as chosen + rejected sequences.

    Args:
        task: A built-in task (``logic``, ``arithmetic``, ``reverse``, ``sort``, ``classify``,
            ``count``), or None.
        task_args: Keyword arguments of the task generator.
        n_train: Training pairs generated for a built-in task.
        n_val: Validation pairs of a built-in task.
        n_test: Test pairs of a built-in task.
        sources: Files/datasets of pairs (strings or :class:`PreferenceSource` dicts).
        path: A prepared preference dataset (``fmlab-prepare prepare/recipe=preference``).
        prompt_field: Default field of the prompt in ``sources``.
        chosen_field: Default field of the preferred response.
        rejected_field: Default field of the other response.
        template: Format string with ``{prompt}`` that builds the model input.
        chat_template: Use the tokenizer's chat template instead of ``template``.
        system: System message for the chat template.
        max_length: Longest ``prompt + response`` sequence in tokens.
        max_prompt_length: Fewest prompt tokens truncation keeps (None: ``max_length // 2``).
        truncation: ``truncate`` (prompt from the left, then responses from the right) or
            ``drop`` (pairs that do not fit are dropped); both counted in ``stats``.
        on_bad_row: ``drop`` (count and skip bad rows) or ``error`` (stop, naming file and row).
        batch_size: Pairs per training batch per device (the forward sees 2x as many sequences).
        eval_batch_size: Pairs per validation/test batch (default ``batch_size``).
        padding_side: Pad on the ``right`` or the ``left``.
        pack: Pack the batch's sequences into rows of ``max_length`` (block-diagonal attention).
        val_fraction: Share of undeclared sources' prompts held out for validation (by hash).
        test_fraction: Share held out for test.
        split_salt: Changes the hash split.
        seed: Seed of generation (tasks) and of the training shuffle.
        exact_match_examples: Held-out prompts per split scored by greedy generation against the
            chosen response (0: off; meaningful when chosen is a reference answer).
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
        sources: list[str | PreferenceSource] | None = None,
        path: str | None = None,
        prompt_field: str = "prompt",
        chosen_field: str = "chosen",
        rejected_field: str = "rejected",
        template: str = "{prompt}",
        chat_template: bool = False,
        system: str | None = None,
        max_length: Annotated[int, Field(gt=1)] = 128,
        max_prompt_length: Annotated[int, Field(gt=0)] | None = None,
        truncation: Literal["truncate", "drop"] = "truncate",
        on_bad_row: Literal["drop", "error"] = "drop",
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
        if sum(x is not None and x != [] for x in (task, sources, path)) != 1:
            raise ConfigError("data: give exactly one of data.task, data.sources or data.path")
        if "{prompt}" not in template:
            raise ConfigError(f"data.template must contain '{{prompt}}', got {template!r}")
        if max_prompt_length is not None and max_prompt_length >= max_length:
            raise ConfigError(
                f"data.max_prompt_length={max_prompt_length} must be < data.max_length="
                f"{max_length} (a response needs room)"
            )
        if val_fraction + test_fraction >= 1:
            raise ConfigError("data.val_fraction + data.test_fraction must be < 1")
        self.task, self.task_args, self.path = task, dict(task_args or {}), path
        self.sizes = {"train": n_train, "validation": n_val, "test": n_test}
        self.sources = [
            PreferenceSource(path=s) if isinstance(s, str) else PreferenceSource(**dict(s))
            for s in sources or []
        ]
        self.fields = {
            "prompt_field": prompt_field,
            "chosen_field": chosen_field,
            "rejected_field": rejected_field,
        }
        self.fmt = {"template": template, "chat_template": chat_template, "system": system}
        self.max_length, self.max_prompt_length = max_length, max_prompt_length
        self.truncation, self.on_bad_row = truncation, on_bad_row
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.padding_side, self.pack = padding_side, pack
        self.split_args = (val_fraction, test_fraction, split_salt)
        self.seed = seed
        self.exact_match_examples, self.max_new_tokens = exact_match_examples, max_new_tokens
        self.num_workers, self.pin_memory, self.cache_dir = num_workers, pin_memory, cache_dir
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.records: dict[str, list[dict[str, Any]]] = {}
        self.pairs: dict[str, list[dict[str, Any]]] = {}
        self.stats: dict[str, Any] = {}

    @property
    def block_size(self) -> int:
        """Longest sequence the model must handle."""
        return self.max_length

    # ---------------------------------------------------------------- preparation
    def _load_records(self) -> dict[str, list[dict[str, Any]]]:
        if self.task is not None:
            self.stats["sources"] = [f"task:{self.task}"]
            return task_pairs(
                self.task,
                n_train=self.sizes["train"],
                n_val=self.sizes["validation"],
                n_test=self.sizes["test"],
                seed=self.seed,
                **self.task_args,
            )
        vf, tf, salt = self.split_args
        records, info = read_sources(
            self.sources,
            fields=self.fields,
            on_bad_row=self.on_bad_row,
            val_fraction=vf,
            test_fraction=tf,
            salt=salt,
            cache_dir=str(Path(self.cache_dir) / "hf_datasets"),
        )
        self.stats["sources"] = [s.label for s in self.sources]
        self.stats["read"] = info["sources"]
        return records

    def _encode(self, tok: PreTrainedTokenizerBase) -> None:
        for split, recs in self.records.items():
            stats = PairStats()
            pairs = []
            for r in recs:
                enc = encode_pair(
                    r["prompt"],
                    r["chosen"],
                    r["rejected"],
                    tok,
                    max_length=self.max_length,
                    max_prompt_length=self.max_prompt_length,
                    truncation=self.truncation,
                    stats=stats,
                    **self.fmt,
                )
                if enc is not None:
                    pairs.append({**enc, "index": len(pairs), "reference": r["chosen"].strip()})
            self.pairs[split] = pairs
            self.stats[split] = {"records": len(recs), **stats.as_dict()}

    def prepare(self, tokenizer_factory: Any) -> PreTrainedTokenizerBase:
        """Load/generate pairs, build the tokenizer, encode every split; returns the tokenizer.

        Args:
            tokenizer_factory: ``factory(texts=, fingerprint=, cache_dir=)`` (tokenizer group);
                unused with ``path`` (the dataset carries its tokenizer).
        """
        self.stats = {}
        if self.path is not None:
            from fmlab.data.pipeline.preference import load_prepared_pairs

            tok, self.pairs, self.records, info = load_prepared_pairs(self.path)
            self.max_length = info["max_length"]
            self.stats.update(info["stats"])
        else:
            self.records = self._load_records()
            train = self.records["train"]
            fingerprint = (
                f"preference|{self.task}|{self.task_args}|{self.seed}|{len(train)}|"
                + "|".join(s.path for s in self.sources)
            )
            tok = tokenizer_factory(
                texts=lambda: (r["prompt"] + r["chosen"] + r["rejected"] for r in train),
                fingerprint=fingerprint,
                cache_dir=self.cache_dir,
            )
            self._encode(tok)
        self.tokenizer = tok
        self.stats["truncation"] = {
            "rule": self.truncation,
            "max_length": self.max_length,
            "max_prompt_length": self.max_prompt_length or self.max_length // 2,
        }
        self._check_splits()
        return tok

    def _check_splits(self) -> None:
        for split in SPLITS:
            if self.pairs.get(split):
                continue
            info = self.stats.get(split, {})
            if info.get("records"):
                cause = (
                    f"all {info['records']} pairs were dropped ({info.get('dropped')}) under "
                    f"data.truncation={self.truncation}, data.max_length={self.max_length}; "
                    "raise data.max_length or use data.truncation=truncate"
                )
            else:  # no source feeds it (fmlab.data.splits), or the hash split gave it none
                declared = {s.label: s.split for s in self.sources}
                vf, tf, _ = self.split_args
                cause = (self.sources and empty_split_cause(split, declared, vf, tf)) or (
                    "no record landed in it; add data or raise data.val_fraction/test_fraction"
                )
            raise ConfigError(f"data: the {split} split has no preference pair: {cause}")
        if len(self.pairs["train"]) < self.batch_size:
            raise ConfigError(
                f"data: {len(self.pairs['train'])} training pairs < data.batch_size="
                f"{self.batch_size}"
            )

    def exact_match_set(self, split: str) -> list[tuple[list[int], str]]:
        """(prompt ids, chosen response) of the first ``exact_match_examples`` pairs of a split."""
        pairs = self.pairs.get(split, [])[: self.exact_match_examples]
        return [(list(p["prompt"]), p["reference"]) for p in pairs]

    # ---------------------------------------------------------------- loaders
    def setup(self, stage: str | None = None) -> None:
        if not self.pairs:
            raise RuntimeError("PreferenceDataModule.prepare(tokenizer_factory) must run first")

    def _collate(self) -> Any:
        assert self.tokenizer is not None
        return partial(
            collate_pairs,
            pad_id=self.tokenizer.pad_token_id,
            padding_side=self.padding_side,
            pack=self.pack,
            block_size=self.max_length,
        )

    def train_dataloader(self) -> Any:
        rank, world = rank_world(self)
        return train_loader(
            self.pairs["train"],
            batch_size=self.batch_size,
            seed=self.seed,
            rank=rank,
            world=world,
            collate_fn=self._collate(),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
        )

    def _eval(self, items: list[Any], collate: Any = None, *, sharded: bool = True) -> Any:
        rank, world = rank_world(self) if sharded else (0, 1)
        return eval_loader(
            items,
            batch_size=self.eval_batch_size,
            rank=rank,
            world=world,
            collate_fn=collate or self._collate(),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
        )

    def val_dataloader(self) -> Any:
        return self._eval(self.pairs["validation"])

    def test_dataloader(self) -> Any:
        return self._eval(self.pairs["test"])

    def pair_loader(self, split: str) -> Any:
        """Every pair of a split in order, unsharded (precomputing reference log-probs)."""
        return self._eval(self.pairs[split], sharded=False)

    def domain_loader(self) -> Any:
        """Validation prompts + chosen responses as SFT batches (the forgetting monitor's
        ``forget/domain/*``: the chosen responses' perplexity)."""
        assert self.tokenizer is not None
        examples = [
            {
                "input_ids": [*p["prompt"], *p["chosen"]],
                "labels": [IGNORE_INDEX] * len(p["prompt"]) + list(p["chosen"]),
            }
            for p in self.pairs["validation"]
        ]
        pad = self.tokenizer.pad_token_id
        return self._eval(
            examples, partial(collate_sft, pad_id=pad, padding_side=self.padding_side)
        )
