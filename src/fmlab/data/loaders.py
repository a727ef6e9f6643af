"""DataLoaders shared by the DataModules: stateful, self-sharded training; unpadded eval shards.

Training: a ``StatefulDataLoader`` over a ``StatefulDistributedSampler`` whose order is a pure
function of (seed, epoch) — Lightning calls ``set_epoch`` — so the data position is part of the
checkpoint and resume continues mid-epoch with the exact next batch, on one process or many.
Trainer presets set ``use_distributed_sampler=false`` so Lightning keeps these samplers.

Evaluation: each rank takes every world-th example, without the padding ``DistributedSampler``
adds, so token-weighted metrics count every example exactly once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler

__all__ = ["eval_loader", "rank_world", "train_loader"]


def rank_world(datamodule: Any) -> tuple[int, int]:
    """(global rank, world size) of the trainer a DataModule is attached to, else (0, 1)."""
    trainer = getattr(datamodule, "trainer", None)
    return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)


def train_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    seed: int,
    rank: int = 0,
    world: int = 1,
    collate_fn: Callable | None = None,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> StatefulDataLoader:
    """Shuffled, sharded, exactly resumable training loader (full batches only)."""
    sampler = StatefulDistributedSampler(
        dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True
    )
    return StatefulDataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        # Its own generator: creating an iterator draws a base seed, which must not come from
        # the global RNG, or a run resumed at an epoch boundary would see different dropout.
        generator=torch.Generator().manual_seed(seed),
        drop_last=True,
        collate_fn=collate_fn,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )


def eval_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    rank: int = 0,
    world: int = 1,
    collate_fn: Callable | None = None,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """In-order loader over this rank's shard (every world-th example)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=list(range(rank, len(dataset), world)),
        # Its own generator: creating an iterator draws a base seed, which must not come from the
        # global RNG, or validation would shift the training randomness (dropout) after it, and a
        # run resumed from a checkpoint written at a validation step would not match.
        generator=torch.Generator().manual_seed(0),
        collate_fn=collate_fn,
        num_workers=num_workers,
        pin_memory=pin_memory,
    )
