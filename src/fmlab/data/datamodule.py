"""The pre-training DataModule: a prepared dataset's token blocks, served for exact resume.

Two ways in:

- ``path``: a dataset written by ``fmlab-prepare`` (segment ``pack``): blocks, splits and the
  tokenizer it was tokenized with;
- ``sources``: raw sources, prepared here through the same pipeline (read → clean → filter →
  dedup → split → decontaminate → tokenize + pack) with the stage settings of the data config.
  The result is cached under ``<cache_dir>/prepare`` by fingerprint, so a later run (or another
  DDP rank, which waits on a file lock) starts in a second.

Blocks are memory-mapped ``(N, T)`` arrays; batches are ``{"input_ids"}`` plus, for
``document_mask`` datasets, a block-diagonal causal ``attention_mask`` and ``position_ids``, and
for sliding-window eval splits ``labels``/``attention_mask``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import datasets
import lightning as L
import numpy as np
import pyarrow as pa
import torch
from filelock import FileLock
from pydantic import Field
from torch.utils.data import DataLoader, Dataset
from torchdata.stateful_dataloader import StatefulDataLoader
from transformers import PreTrainedTokenizerBase

from fmlab.config import ConfigError
from fmlab.data.loaders import eval_loader, train_loader
from fmlab.data.pipeline import (
    Clean,
    Decontaminate,
    Dedup,
    Filter,
    Pack,
    PrepareError,
    SourceSpec,
    Split,
    load_card,
    prepare_dataset,
)
from fmlab.data.pipeline.engine import fingerprint
from fmlab.data.splits import SPLITS, empty_split_cause
from fmlab.utils.remote import fetch_dataset, is_remote

__all__ = ["BlockDataset", "PretrainDataModule", "SourceSpec", "load_blocks"]

log = logging.getLogger(__name__)
Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]


class BlockDataset(Dataset):
    """Fixed-length rows; item ``i`` is ``{"input_ids": LongTensor(T), **extra columns}``."""

    def __init__(self, blocks: np.ndarray, extra: dict[str, np.ndarray] | None = None) -> None:
        self.blocks = blocks  # (N, T), usually a read-only memmap
        self.extra = extra or {}

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {"input_ids": torch.from_numpy(self.blocks[i].astype(np.int64))}
        for key, values in self.extra.items():
            item[key] = torch.from_numpy(values[i].astype(np.int64))
        return item


def _collate_documents(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    from fmlab.data.sft import packed_attention_mask

    batch = {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
    batch["attention_mask"] = packed_attention_mask(batch.pop("seq_ids"))  # (B, 1, T, T)
    return batch


def _matrix(table: pa.Table, column: str) -> np.ndarray:
    """A fixed-size-list column as an ``(N, T)`` array (zero-copy for a single chunk)."""
    col = table.column(column)
    chunks = [c.flatten().to_numpy(zero_copy_only=False) for c in col.chunks]
    flat = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
    return flat.reshape(table.num_rows, -1)


def load_blocks(path: str | Path) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """Columns of every split of a packed prepared dataset, and its card.

    Raises:
        PrepareError: When ``path`` is not a prepared dataset of token blocks.
    """
    path = Path(path).expanduser()
    card = load_card(str(path))
    if card is None:
        raise PrepareError(f"data.path={path}: no card.json (not an fmlab-prepare output)")
    if card["segment"]["mode"] != "pack":
        raise PrepareError(
            f"data.path={path}: segment mode '{card['segment']['mode']}'; pre-training needs "
            "token blocks (prepare with prepare/recipe=pretrain)"
        )
    present = [s for s in SPLITS if (path / s).exists()]
    if (path / "dataset_dict.json").is_file():
        dd = datasets.load_from_disk(str(path))
        tables = {s: dd[s].data.table for s in present}
    else:  # parquet shards
        import pyarrow.parquet as pq

        tables = {s: pq.read_table(str(path / s)) for s in present}
    out: dict[str, dict[str, np.ndarray]] = {}
    for split in SPLITS:
        if split not in tables:
            out[split] = {"input_ids": np.zeros((0, card["segment"]["block_size"]), np.int64)}
            continue
        table = tables[split]
        out[split] = {name: _matrix(table, name) for name in table.column_names}
    return out, card


class PretrainDataModule(L.LightningDataModule):
    """Causal-LM data: token blocks of a prepared dataset (``path``) or of raw ``sources``.

    Args:
        sources: Raw sources (strings or :class:`SourceSpec` dicts), prepared here.
        path: A prepared dataset directory (``fmlab-prepare`` output) instead of ``sources``.
        block_size: Sequence length T (with ``path``: the dataset's, or null to take it).
        batch_size: Blocks per training batch (per device).
        eval_batch_size: Blocks per validation/test batch (defaults to ``batch_size``).
        val_fraction: Expected share of documents held out for validation.
        test_fraction: Expected share held out for the final test.
        split_salt: Changes the (deterministic) split assignment.
        seed: Seed of the training shuffle (independent of the global RNG).
        num_workers: DataLoader worker processes.
        pin_memory: Pin host memory (GPU training).
        num_proc: Processes for preparation.
        cache_dir: fmlab cache directory.
        clean: Clean stage settings (null: off).
        filter: Filter stage settings (null: off).
        dedup: Dedup stage settings (null: off).
        decontaminate: Decontaminate stage settings (null: off).
        document_mask: Keep documents in a block from attending to each other.
        eval_stride: Validation/test as overlapping windows every ``eval_stride`` tokens.
        progress: Show preparation progress bars.
        storage_options: fsspec options for ``s3://`` sources or ``path`` (default: the AWS
            environment variables / ``~/.aws``).
    """

    def __init__(
        self,
        sources: list[str | SourceSpec] | None = None,
        path: str | None = None,
        block_size: Annotated[int, Field(gt=0)] | None = 128,
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
        clean: Clean | None = None,
        filter: Filter | None = None,
        dedup: Dedup | None = None,
        decontaminate: Decontaminate | None = None,
        document_mask: bool = False,
        eval_stride: Annotated[int, Field(gt=0)] | None = None,
        progress: bool = True,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if (path is None) == (not sources):
            raise ValueError("data: give exactly one of data.sources (raw) or data.path (prepared)")
        if val_fraction + test_fraction >= 1:
            raise ValueError("data.val_fraction + data.test_fraction must be < 1")
        if path is None and block_size is None:
            raise ValueError("data.block_size is required with data.sources")
        self.sources = [
            SourceSpec(path=s) if isinstance(s, str) else SourceSpec(**dict(s))
            for s in sources or []
        ]
        self.path = path
        self.block_size = block_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.split = Split(val_fraction=val_fraction, test_fraction=test_fraction, salt=split_salt)
        self.seed = seed
        self.num_workers, self.pin_memory, self.num_proc = num_workers, pin_memory, num_proc
        self.cache_dir = Path(cache_dir).expanduser()
        self.stages = {"clean": clean, "filter": filter, "dedup": dedup}
        self.decontaminate = decontaminate
        self.document_mask, self.eval_stride, self.progress = document_mask, eval_stride, progress
        self.storage_options = storage_options
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.blocks: dict[str, np.ndarray] = {}
        self.columns: dict[str, dict[str, np.ndarray]] = {}
        self.stats: dict[str, Any] = {}

    # ---------------------------------------------------------------- preparation
    def _prepare_sources(self, tokenizer_factory: Any) -> str:
        segment = Pack(self.block_size, self.document_mask, self.eval_stride)
        kwargs = dict(
            **self.stages, split=self.split, decontaminate=self.decontaminate, segment=segment
        )
        key = fingerprint(
            [s.model_dump() for s in self.sources], {k: repr(v) for k, v in kwargs.items()}
        )
        lock_dir = self.cache_dir / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(lock_dir / f"prepare-{key}.lock")):  # DDP ranks: one prepares
            card = prepare_dataset(
                self.sources,
                tokenizer=tokenizer_factory,
                work_dir=self.cache_dir / "prepare",
                cache_dir=self.cache_dir,
                num_proc=self.num_proc,
                progress=self.progress,
                storage_options=self.storage_options,
                **kwargs,
            )
        return card["path"]

    def prepare(self, tokenizer_factory: Any) -> PreTrainedTokenizerBase:
        """Prepare (or load) the blocks; returns the tokenizer they were tokenized with.

        Args:
            tokenizer_factory: ``factory(texts=, fingerprint=, cache_dir=)`` (tokenizer group);
                unused with ``path`` (the dataset carries its tokenizer).
        """
        from fmlab.data.tokenizer import pretrained

        try:
            path = self.path or self._prepare_sources(tokenizer_factory)
            if is_remote(path):  # s3://: blocks are memory-mapped, so from a local copy
                path = fetch_dataset(path, self.cache_dir, self.storage_options)
            columns, card = load_blocks(path)
        except PrepareError as err:
            raise ValueError(str(err)) from err
        size = card["segment"]["block_size"]
        if self.block_size is not None and self.block_size != size:
            raise ValueError(
                f"data.block_size={self.block_size} but {path} holds blocks of {size} tokens "
                "(set data.block_size=null to take the dataset's)"
            )
        self.block_size = size
        tok = pretrained(name_or_path=str(Path(path) / "tokenizer"))
        self.tokenizer = tok
        self.columns = columns
        self.blocks = {s: columns[s]["input_ids"] for s in SPLITS}
        self.stats = {
            "sources": [s.path for s in self.sources] or [s["source"] for s in card["sources"]],
            "path": str(self.path or path),
            "block_size": size,
            "vocab_size": len(tok),
            "dates": card.get("dates"),
            "split_sources": card.get("split_sources"),
            **{s: {k: v for k, v in card["splits"][s].items()} for s in SPLITS},
            "stages": {
                n: {k: st[k] for k in ("in", "out", "removed") if k in st}
                for n, st in card["stages"].items()
                if st.get("enabled")
            },
        }
        self._check_sizes()
        return tok

    def _check_sizes(self) -> None:
        declared = {s.label: s.split for s in self.sources}
        p = self.split.params
        for split, minimum in (("train", self.batch_size), ("validation", 1), ("test", 1)):
            n = len(self.blocks[split])
            if n < minimum:
                info = self.stats.get(split, {})
                cause = empty_split_cause(split, declared, p["val_fraction"], p["test_fraction"])
                if self.sources and cause and not info.get("documents"):
                    raise ConfigError(f"data: {cause}")
                raise ValueError(
                    f"data: the {split} split of {self.stats['sources']} has {n} rows of "
                    f"{self.block_size} tokens ({info.get('documents', 0)} documents, "
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

    def _dataset(self, split: str) -> tuple[BlockDataset, Any]:
        extra = {k: v for k, v in self.columns[split].items() if k != "input_ids"}
        if "seq_ids" in extra:  # documents must not attend to each other: 4-D mask in collate
            return BlockDataset(self.blocks[split], extra), _collate_documents
        return BlockDataset(self.blocks[split], extra), None

    def train_dataloader(self) -> StatefulDataLoader:
        # The data position is part of the checkpoint: the loader and sampler are stateful, and
        # each epoch's order is a pure function of (seed, epoch) (Lightning calls set_epoch), so
        # resume continues mid-epoch with the exact next batch. The sampler also shards across
        # ranks (trainer presets set use_distributed_sampler=false so Lightning keeps it).
        rank, world = self._rank_world()
        dataset, collate = self._dataset("train")
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

    def _eval_loader(self, split: str) -> DataLoader:
        # Each rank takes every world-th block, without the padding DistributedSampler adds:
        # token-weighted metrics then count every block exactly once.
        rank, world = self._rank_world()
        dataset, collate = self._dataset(split)
        return eval_loader(
            dataset,
            batch_size=self.eval_batch_size,
            rank=rank,
            world=world,
            collate_fn=collate,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("validation")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
