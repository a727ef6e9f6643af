"""``data=streaming``: pre-training on a prepared dataset read chunk by chunk from object storage.

The dataset is an ``fmlab-prepare output_format=streaming`` output (litdata chunks per split,
the tokenizer and the data card), on ``s3://`` or a local/shared filesystem. Nothing is
downloaded up front: litdata's ``StreamingDataset`` fetches the chunks a rank needs in a
background thread (``prefetch_chunks`` ahead) into ``<cache_dir>/streaming`` and deletes consumed
ones, so the cache stays under ``cache_limit`` (per machine: the ranks of a node share it; see
:mod:`fmlab.data.streaming.cache`).

Training order: each epoch permutes the chunks (seed, epoch) and shuffles rows within a chunk
in windows of ``shuffle_window`` rows (0: the whole chunk); every rank (and DataLoader worker)
reads a disjoint range of that order, full batches only (the remainder is dropped, as with
``data=prepared``). The loader's position (epoch, rows yielded) is in the checkpoint, so a
resumed run continues with the exact next batch. Validation and test are read in order (in the main
process), each row by exactly one rank, without padding.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path
from typing import Annotated, Any

import lightning as L
import numpy as np
import torch
from filelock import FileLock
from pydantic import Field
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from fmlab.config import ConfigError
from fmlab.data.datamodule import _collate_documents
from fmlab.data.loaders import rank_world
from fmlab.data.splits import SPLITS
from fmlab.data.streaming.cache import SplitSize, cache_budgets, parse_size
from fmlab.data.streaming.storage import litdata_options, read_index, split_url

__all__ = ["StreamingDataModule", "collate_rows", "row_tensors", "stack_rows"]

log = logging.getLogger(__name__)


def row_tensors(row: dict[str, Any]) -> dict[str, torch.Tensor]:
    """One streamed row (a dict of 1-D arrays) as int64 tensors, as ``BlockDataset`` gives."""
    return {k: torch.from_numpy(np.asarray(v).astype(np.int64)) for k, v in row.items()}


def stack_rows(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """A batch of rows; ``seq_ids`` (``document_mask`` datasets) become the 4-D mask."""
    if "seq_ids" in rows[0]:
        return _collate_documents(rows)
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def collate_rows(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """The training/evaluation batch of streamed rows."""
    return stack_rows([row_tensors(r) for r in rows])


def _loader_class() -> type:
    from litdata import StreamingDataLoader

    class ResumableLoader(StreamingDataLoader):
        """litdata's loader, resumable on another machine or with another ``cache_dir``.

        Its state names the local cache directory, which litdata checks on load; the cache is
        not part of the data position, so the loaded state is pointed at this run's cache. A
        dataset rewritten since the checkpoint (a new version in its ``index.json``) is refused.
        """

        def load_state_dict(self, obj: dict[str, Any]) -> None:
            state = obj.get("dataset", {})
            ds = self.dataset
            if state.get("input_dir_url") and ds.input_dir.url == state["input_dir_url"]:
                len(ds)  # resolves this run's cache path (reads index.json)
                old, new = Path(state["input_dir_path"]).name, Path(ds.input_dir.path).name
                if old != new:
                    raise ConfigError(
                        f"data.path={ds.input_dir.url}: the dataset was rewritten after the "
                        f"checkpoint was saved (version {old} → {new}); resume with the data "
                        "it was trained on or start a new run"
                    )
                state["cache_dir_path"] = ds.cache_dir.path
                state["input_dir_path"] = ds.input_dir.path
            super().load_state_dict(obj)

    return ResumableLoader


class StreamingDataModule(L.LightningDataModule):
    """Token blocks streamed from a prepared dataset in litdata's format (local or ``s3://``).

    Args:
        path: The dataset (``fmlab-prepare ... output_format=streaming`` output).
        block_size: Expected sequence length T (null: the dataset's).
        batch_size: Blocks per training batch (per device).
        eval_batch_size: Blocks per validation/test batch (defaults to ``batch_size``).
        seed: Seed of the chunk and row shuffle (independent of the global RNG).
        cache_dir: fmlab cache directory; chunks go to ``<cache_dir>/streaming``.
        cache_limit: Largest size of that cache on one machine, e.g. ``2GB``.
        shuffle_window: Rows shuffled together within a chunk (0: the whole chunk).
        prefetch_chunks: Chunks each reader downloads ahead of the one it reads.
        num_workers: DataLoader worker processes (0: chunks still arrive in a background thread).
        pin_memory: Pin host memory (GPU training).
        storage_options: fsspec options of ``path`` (default: the AWS environment / ``~/.aws``).
    """

    def __init__(
        self,
        path: str,
        block_size: Annotated[int, Field(gt=0)] | None = None,
        batch_size: Annotated[int, Field(gt=0)] = 16,
        eval_batch_size: Annotated[int, Field(gt=0)] | None = None,
        seed: int = 0,
        cache_dir: str = ".cache/fmlab",
        cache_limit: str | int = "2GB",
        shuffle_window: Annotated[int, Field(ge=0)] = 0,
        prefetch_chunks: Annotated[int, Field(ge=2)] = 2,
        num_workers: Annotated[int, Field(ge=0)] = 0,
        pin_memory: bool = False,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.path = str(path).rstrip("/")
        self.block_size = block_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.seed = seed
        self.cache_dir = Path(cache_dir).expanduser()
        self.cache_limit = parse_size(cache_limit)
        self.shuffle_window, self.prefetch_chunks = shuffle_window, prefetch_chunks
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.storage_options = storage_options
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.columns: dict[str, list[str]] = {}
        self.sizes: dict[str, SplitSize] = {}
        self.budgets: dict[str, int] = {}
        self.stats: dict[str, Any] = {}

    @property
    def streaming_cache(self) -> Path:
        """Where litdata keeps the chunks of this dataset (bounded by ``cache_limit``)."""
        key = hashlib.sha256(self.path.encode()).hexdigest()[:16]
        return self.cache_dir / "streaming" / key

    # ---------------------------------------------------------------- preparation
    def prepare(self, tokenizer_factory: Any = None) -> PreTrainedTokenizerBase:
        """Read the card and indexes, fetch the tokenizer; returns it (the factory is unused:
        the dataset carries the tokenizer it was tokenized with).

        Raises:
            ConfigError: Not a streaming dataset of token blocks, a block size that differs,
                too few rows, or a cache limit too small for the chunks.
        """
        from fmlab.data.pipeline import load_card
        from fmlab.data.tokenizer import pretrained
        from fmlab.utils.optional import require

        require("litdata", "streaming", "data=streaming")
        card = load_card(self.path, self.storage_options)
        if card is None:
            raise ConfigError(
                f"data.path={self.path}: no card.json: not an fmlab-prepare output, or its "
                "upload has not finished"
            )
        fmt = card["stages"].get("write", {}).get("settings", {}).get("format")
        if card["segment"]["mode"] != "pack" or fmt != "streaming":
            raise ConfigError(
                f"data.path={self.path}: a '{card['segment']['mode']}' dataset written as "
                f"'{fmt}'; data=streaming reads token blocks written with fmlab-prepare "
                "prepare/recipe=pretrain output_format=streaming (data=prepared reads the others)"
            )
        size = card["segment"]["block_size"]
        if self.block_size is not None and self.block_size != size:
            raise ConfigError(
                f"data.block_size={self.block_size} but {self.path} holds blocks of {size} "
                "tokens (set data.block_size=null to take the dataset's)"
            )
        self.block_size = size
        indexes = {s: read_index(self.path, s, self.storage_options) for s in SPLITS}
        self.sizes = {s: SplitSize(i) for s, i in indexes.items() if i is not None}
        self.budgets = cache_budgets(self.cache_limit, self.sizes)  # checked early: 1 reader
        # A run killed mid-download leaves partial files and chunks it had read but not yet
        # deleted, which litdata would neither count nor evict. Every rank gets here before any
        # reads (the process group forms after preparation), so starting empty is safe; it
        # means one job per cache directory at a time.
        shutil.rmtree(self.streaming_cache, ignore_errors=True)
        extra = ["seq_ids", "position_ids"] if card["segment"].get("document_mask") else []
        self.columns = {"train": ["input_ids", *extra]}
        self.tokenizer = pretrained(name_or_path=str(self._fetch_tokenizer(card)))
        self._check_tokenizer(tokenizer_factory)
        self.stats = {
            "sources": [s["source"] for s in card["sources"]],
            "path": self.path,
            "block_size": size,
            "vocab_size": len(self.tokenizer),
            "dates": card.get("dates"),
            **{s: dict(card["splits"][s]) for s in SPLITS},
            "stages": {
                n: {k: st[k] for k in ("in", "out", "removed") if k in st}
                for n, st in card["stages"].items()
                if st.get("enabled")
            },
            "streaming": {"cache_limit": self.cache_limit, "budgets": self.budgets},
        }
        for split, minimum in (("train", self.batch_size), ("validation", 1), ("test", 1)):
            n = self.sizes[split].rows if split in self.sizes else 0
            if n < minimum:
                raise ConfigError(
                    f"data.path={self.path}: the {split} split has {n} rows of {size} tokens; "
                    f"need at least {minimum}"
                )
        return self.tokenizer

    def _check_tokenizer(self, factory: Any) -> None:
        """A run that fixes the tokenizer (a mixture's other components, ``init_from``) needs
        this dataset tokenized with that very tokenizer: its token ids are stored."""
        from fmlab.data.tokenizer import tokenizer_fingerprint

        want = (getattr(factory, "keywords", None) or {}).get("content")
        have = tokenizer_fingerprint(self.tokenizer)
        if want is not None and want != have:
            raise ConfigError(
                f"data.path={self.path}: tokenized with another tokenizer ({have}) than this run "
                f"uses ({want}); prepare it with tokenizer=pretrained tokenizer.name_or_path=<the "
                "run's tokenizer> (with init_from: the base model's)"
            )

    def _fetch_tokenizer(self, card: dict[str, Any]) -> Path:
        """A local copy of ``<path>/tokenizer`` (small), keyed by the dataset's fingerprint."""
        from fmlab.utils.remote import is_remote, open_fs

        if not is_remote(self.path):
            return Path(self.path.removeprefix("file://")) / "tokenizer"
        key = hashlib.sha256(f"{self.path}\0{card['plan_fingerprint']}".encode()).hexdigest()[:20]
        local = self.cache_dir / "streaming-tokenizers" / key
        local.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(local) + ".lock"):  # the ranks of a node: one downloads
            if not (local / "tokenizer_config.json").is_file():
                fs, root = open_fs(f"{self.path}/tokenizer", self.storage_options, "data.path")
                tmp = local.with_name(local.name + ".tmp")
                shutil.rmtree(tmp, ignore_errors=True)
                fs.get(f"{root}/", f"{tmp}/", recursive=True)
                shutil.rmtree(local, ignore_errors=True)
                tmp.replace(local)
        return local

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None:
            raise RuntimeError("StreamingDataModule.prepare(tokenizer_factory) must run before fit")

    # ---------------------------------------------------------------- readers
    def dataset(self, split: str, *, shuffle: bool, drop_last: bool) -> Any:
        """litdata's ``StreamingDataset`` of one split, sharded for this trainer's rank."""
        from litdata import StreamingDataset
        from litdata.utilities.env import _DistributedEnv

        rank, world = rank_world(self)
        trainer = getattr(self, "trainer", None)
        nodes = max(1, trainer.num_nodes) if trainer is not None else 1
        # every rank of this machine reads the split at once; for training each worker too
        readers = max(1, world // nodes) * (max(1, self.num_workers) if split == "train" else 1)
        self.budgets[split] = cache_budgets(self.cache_limit, self.sizes, readers)[split]
        options, session = litdata_options(self.storage_options)
        quiet = logging.getLogger("litdata.streaming.dataset")
        level = quiet.level
        # its warnings here: a cache under 25GB (sized by data.cache_limit on purpose) and
        # drop_last=False under DDP (evaluation: every row on exactly one rank, on purpose)
        quiet.setLevel(logging.ERROR)
        # litdata sets up <cache>/<URL hash>/<version>/ and deletes a hash directory holding
        # anything else: ranks of one machine doing this at once can delete each other's fresh
        # directory, so they take turns (constructing and get_len create it).
        self.streaming_cache.mkdir(parents=True, exist_ok=True)
        try:
            with FileLock(str(self.streaming_cache) + ".lock"):
                ds = StreamingDataset(
                    split_url(self.path, split),
                    cache_dir=str(self.streaming_cache),
                    shuffle=shuffle,
                    drop_last=drop_last,
                    seed=self.seed,
                    max_cache_size=self.budgets[split],
                    storage_options=options,
                    session_options=session,
                    max_pre_download=self.prefetch_chunks,
                    item_shuffle_window=self.shuffle_window,
                )
                ds.get_len(1, 1)
        finally:
            quiet.setLevel(level)
        env = ds.distributed_env  # litdata reads rank/world from torch.distributed or WORLD_SIZE
        if (env.world_size, env.global_rank) != (world, rank):
            raise RuntimeError(
                f"litdata sees rank {env.global_rank} of {env.world_size}, the trainer rank "
                f"{rank} of {world}: shards would overlap (WORLD_SIZE/GLOBAL_RANK set wrongly?)"
            )
        if trainer is not None:  # its node count is a guess on CPU nodes; the trainer knows
            ds.distributed_env = _DistributedEnv(world, rank, nodes)
        return ds

    def train_dataloader(self) -> Any:
        ds = self.dataset("train", shuffle=True, drop_last=True)
        return _loader_class()(
            ds,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=collate_rows,
            drop_last=True,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def eval_loader(self, split: str) -> DataLoader:
        """``split`` in order, each row on exactly one rank: ``N div world`` rows each, the last
        rank also the remainder. A plain loader: litdata's would hand out whole batches, so a
        split smaller than ``world`` batches would leave ranks without any."""
        return DataLoader(
            self.dataset(split, shuffle=False, drop_last=False),
            batch_size=self.eval_batch_size,
            collate_fn=collate_rows,
            pin_memory=self.pin_memory,
        )

    def val_dataloader(self) -> Any:
        return self.eval_loader("validation")

    def test_dataloader(self) -> Any:
        return self.eval_loader("test")
