"""The pre-training DataModule: read sources, split, tokenize, pack, cache, serve blocks.

Preparation runs once per (sources, split settings, tokenizer, block size) and is cached under
``<cache_dir>/packed/<key>/`` as ``.npy`` token blocks read back with ``mmap``, so a later run (or
another DDP rank) starts in a second. A file lock makes concurrent ranks wait for one writer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import datasets
import lightning as L
import numpy as np
import torch
from filelock import FileLock
from pydantic import BaseModel, ConfigDict, Field
from torch.utils.data import DataLoader, Dataset
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler
from transformers import PreTrainedTokenizerBase

from fmlab.data.packing import pack_documents, token_dtype
from fmlab.data.sources import load_text_source
from fmlab.data.splits import SPLITS, split_of
from fmlab.data.tokenizer import tokenizer_fingerprint

__all__ = ["BlockDataset", "PretrainDataModule", "SourceSpec"]

log = logging.getLogger(__name__)
Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]
_VERSION = 1


class SourceSpec(BaseModel):
    """One data source (see :func:`fmlab.data.sources.load_text_source`)."""

    model_config = ConfigDict(extra="forbid")
    path: str
    text_field: str = "text"
    split: str = "train"
    hf_name: str | None = None
    txt_sample_by: str = "paragraph"


class BlockDataset(Dataset):
    """Fixed-length token blocks; item ``i`` is ``{"input_ids": LongTensor(T)}``."""

    def __init__(self, blocks: np.ndarray) -> None:
        self.blocks = blocks  # (N, T), usually a read-only memmap

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.from_numpy(self.blocks[i].astype(np.int64))}


def _hash(*parts: Any) -> str:
    return hashlib.sha1("|".join(map(str, parts)).encode()).hexdigest()[:16]


class PretrainDataModule(L.LightningDataModule):
    """Causal-LM data: documents → hash splits → tokens → packed blocks of ``block_size``.

    Args:
        sources: Source strings or :class:`SourceSpec` dicts; their documents are pooled.
        block_size: Sequence length T of every training example.
        batch_size: Blocks per training batch (per device).
        eval_batch_size: Blocks per validation/test batch (defaults to ``batch_size``).
        val_fraction: Expected share of documents held out for validation.
        test_fraction: Expected share held out for the final test.
        split_salt: Changes the (deterministic) split assignment.
        seed: Seed of the training shuffle (independent of the global RNG).
        num_workers: DataLoader worker processes.
        pin_memory: Pin host memory (GPU training).
        num_proc: Processes for tokenization.
        cache_dir: fmlab cache directory.
    """

    def __init__(
        self,
        sources: list[str | SourceSpec],
        block_size: Annotated[int, Field(gt=0)] = 128,
        batch_size: Annotated[int, Field(gt=0)] = 16,
        eval_batch_size: Annotated[int, Field(gt=0)] | None = None,
        val_fraction: Fraction = 0.05,
        test_fraction: Fraction = 0.05,
        split_salt: str = "",
        seed: int = 0,
        num_workers: Annotated[int, Field(ge=0)] = 0,
        pin_memory: bool = False,
        num_proc: Annotated[int, Field(ge=1)] = 1,
        cache_dir: str = ".cache/fmlab",
    ) -> None:
        super().__init__()
        if not sources:
            raise ValueError("data.sources: at least one source is required")
        if val_fraction + test_fraction >= 1:
            raise ValueError("data.val_fraction + data.test_fraction must be < 1")
        self.sources = [
            SourceSpec(path=s) if isinstance(s, str) else SourceSpec(**dict(s)) for s in sources
        ]
        self.block_size = block_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.split_salt = split_salt
        self.seed = seed
        self.num_workers, self.pin_memory, self.num_proc = num_workers, pin_memory, num_proc
        self.cache_dir = Path(cache_dir).expanduser()
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.blocks: dict[str, np.ndarray] = {}
        self.stats: dict[str, Any] = {}

    # ---------------------------------------------------------------- preparation
    def _documents(self) -> datasets.Dataset:
        parts = []
        for spec in self.sources:
            ds = load_text_source(
                spec.path,
                text_field=spec.text_field,
                split=spec.split,
                hf_name=spec.hf_name,
                txt_sample_by=spec.txt_sample_by,
                cache_dir=str(self.cache_dir),
            )
            parts.append(ds.select_columns(["text"]))
        return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)

    def _split(self, docs: datasets.Dataset) -> dict[str, datasets.Dataset]:
        vf, tf, salt = self.val_fraction, self.test_fraction, self.split_salt

        def label(batch: dict[str, list]) -> dict[str, list]:
            texts = [t if isinstance(t, str) else "" for t in batch["text"]]
            return {"split": [split_of(t, vf, tf, salt) if t.strip() else "" for t in texts]}

        labelled = docs.map(label, batched=True, batch_size=2000, desc="assigning splits")
        return {
            s: labelled.filter(lambda b, s=s: [x == s for x in b["split"]], batched=True)
            for s in SPLITS
        }

    def _tokenize(self, split_ds: datasets.Dataset, tok: PreTrainedTokenizerBase) -> np.ndarray:
        def encode(batch: dict[str, list]) -> dict[str, list]:
            return {"ids": tok(batch["text"], add_special_tokens=False)["input_ids"]}

        ids = split_ds.map(
            encode,
            batched=True,
            batch_size=1000,
            remove_columns=split_ds.column_names,
            num_proc=self.num_proc if len(split_ds) > 10_000 else None,
            desc="tokenizing",
        )

        def docs() -> Iterator[list[int]]:
            for batch in ids.iter(batch_size=4096):
                yield from batch["ids"]

        return pack_documents(docs(), tok.eos_token_id, self.block_size, token_dtype(len(tok)))

    def prepare(
        self, tokenizer_factory: Callable[..., PreTrainedTokenizerBase]
    ) -> PreTrainedTokenizerBase:
        """Build (or load from cache) tokenizer and packed splits; returns the tokenizer.

        Args:
            tokenizer_factory: ``factory(texts=, fingerprint=, cache_dir=)`` (tokenizer group).
        """
        docs = self._documents()
        corpus_key = _hash(
            _VERSION, docs._fingerprint, self.val_fraction, self.test_fraction, self.split_salt
        )
        lock_dir = self.cache_dir / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(lock_dir / f"{corpus_key}.lock")):
            splits = self._split(docs)
            train = splits["train"]

            def texts() -> Iterator[str]:
                for batch in train.iter(batch_size=1000):
                    yield from batch["text"]

            tok = tokenizer_factory(texts=texts, fingerprint=corpus_key, cache_dir=self.cache_dir)
            key = _hash(corpus_key, tokenizer_fingerprint(tok), self.block_size)
            out = self.cache_dir / "packed" / key
            if not (out / "meta.json").is_file():
                self._write_packed(out, splits, tok)
        self.tokenizer = tok
        self.stats = json.loads((out / "meta.json").read_text())
        self.blocks = {s: np.load(out / f"{s}.npy", mmap_mode="r") for s in SPLITS}
        self._check_sizes()
        return tok

    def _write_packed(self, out: Path, splits: dict[str, datasets.Dataset], tok) -> None:
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        meta: dict[str, Any] = {
            "block_size": self.block_size,
            "vocab_size": len(tok),
            "sources": [s.path for s in self.sources],
        }
        for name, ds in splits.items():
            blocks = self._tokenize(ds, tok)
            np.save(tmp / f"{name}.npy", blocks)
            meta[name] = {
                "documents": len(ds),
                "blocks": int(blocks.shape[0]),
                "tokens": int(blocks.size),
            }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        shutil.rmtree(out, ignore_errors=True)
        tmp.replace(out)

    def _check_sizes(self) -> None:
        for split, minimum in (("train", self.batch_size), ("validation", 1), ("test", 1)):
            n = len(self.blocks[split])
            if n < minimum:
                info = self.stats.get(split, {})
                raise ValueError(
                    f"data: the {split} split of {[s.path for s in self.sources]} has {n} "
                    f"blocks of {self.block_size} tokens ({info.get('documents', 0)} documents, "
                    f"{info.get('tokens', 0)} tokens); need at least {minimum}. Add data, lower "
                    "data.block_size or raise data.val_fraction/test_fraction."
                )

    # ---------------------------------------------------------------- Lightning hooks
    def setup(self, stage: str | None = None) -> None:
        if not self.blocks:
            raise RuntimeError("PretrainDataModule.prepare(tokenizer_factory) must run before fit")

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> StatefulDataLoader:
        # The data position is part of the checkpoint: the loader and sampler are stateful, and
        # each epoch's order is a pure function of (seed, epoch) (Lightning calls set_epoch), so
        # resume continues mid-epoch with the exact next batch. The sampler also shards across
        # ranks (trainer presets set use_distributed_sampler=false so Lightning keeps it).
        rank, world = self._rank_world()
        dataset = BlockDataset(self.blocks["train"])
        sampler = StatefulDistributedSampler(
            dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.seed, drop_last=True
        )
        return StatefulDataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def _eval_loader(self, split: str) -> DataLoader:
        # Each rank takes every world-th block, without the padding DistributedSampler adds:
        # token-weighted metrics then count every block exactly once.
        rank, world = self._rank_world()
        dataset = BlockDataset(self.blocks[split])
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            sampler=list(range(rank, len(dataset), world)),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("validation")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
