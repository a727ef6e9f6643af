"""Mixtures with streamed components: ``data=mixture`` where a component is ``data=streaming``
(replay of a local corpus while streaming a new one, or two streamed corpora).

A streamed component cannot be indexed at random like a memory-mapped one, so the mixture is
scheduled per rank: every rank runs the same largest-deficit schedule
(:func:`fmlab.data.mixture.schedule_slots`) over its own rows and takes each component's next row
from that component's shard for this rank (litdata's sharding for streamed components; rows
``r, r + world, ...`` of a per-epoch permutation for memory-mapped ones). Each component is
reshuffled whenever this rank has used up its shard, independently of the others.

Guarantee (weaker than the all-ranks one of an all-local mixture by the number of ranks): on
every rank, after ``n`` rows each component has ``round(share * n)`` rows, give or take less than
one; over all ranks, give or take less than ``world``. Every rank's counts are the same, so the
state (slot, counts) that rank 0 checkpoints restores every rank exactly: a component's position
is its count, and a streamed component is put back there by litdata's own resume (epoch, rows
yielded). Streamed components are read in the main process (``num_workers=0``); litdata still
downloads their chunks in a background thread.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from fractions import Fraction
from typing import Any

import torch
from torch.utils.data import IterableDataset
from torchdata.stateful_dataloader import StatefulDataLoader

from fmlab.config import ConfigError
from fmlab.data.loaders import rank_world
from fmlab.data.streaming.datamodule import StreamingDataModule, row_tensors, stack_rows

__all__ = ["MixtureStream", "is_streaming", "streaming_mixture_loader"]


def is_streaming(component: Any) -> bool:
    return isinstance(component, StreamingDataModule)


class _LocalRows:
    """A memory-mapped component on rank ``rank``: its ``j``-th row is row ``(j mod L)·world +
    rank`` of a permutation drawn from ``(seed, part, j div L)``, ``L = N div world``."""

    def __init__(self, dataset: Any, part: int, seed: int, rank: int, world: int) -> None:
        self.dataset, self.part, self.seed, self.rank, self.world = dataset, part, seed, rank, world
        self.length = len(dataset) // world
        self._perm: tuple[int, torch.Tensor] | None = None

    def row(self, j: int) -> dict[str, torch.Tensor]:
        epoch, pos = divmod(j, self.length)
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + 7_919 * self.part + epoch)
            self._perm = (epoch, torch.randperm(len(self.dataset), generator=g))
        return dict(self.dataset[int(self._perm[1][pos * self.world + self.rank])])


class _StreamedRows:
    """A streamed component on this rank: row ``j`` is row ``j mod L`` of litdata's epoch
    ``j div L + 1`` of this rank's shard (``L`` rows); read in order, put back by position."""

    def __init__(self, component: StreamingDataModule) -> None:
        self.component = component
        self.dataset = component.dataset("train", shuffle=True, drop_last=True)
        self.length = self.dataset.get_len(1, 1)
        self.position = 0
        self._iter: Iterator | None = None

    def seek(self, j: int) -> None:
        """Make ``row(j)`` the next row (rebuilds the reader at litdata's saved position)."""
        ds = self.component.dataset("train", shuffle=True, drop_last=True)
        epoch, offset = divmod(j, self.length)
        ds.set_epoch(epoch + 1)  # litdata counts epochs from 1
        ds.get_len(1, 1)
        if offset:
            ds.load_state_dict(ds.state_dict(offset, num_workers=1, batch_size=1))
        self.dataset, self.position, self._iter = ds, j, iter(ds)

    def row(self, j: int) -> dict[str, torch.Tensor]:
        if self._iter is None or j != self.position:
            self.seek(j)
        try:
            item = next(self._iter)
        except StopIteration:  # this rank's shard is used up: litdata's next epoch
            self._iter = iter(self.dataset)
            item = next(self._iter)
        self.position += 1
        return row_tensors(item)


class MixtureStream(IterableDataset):
    """This rank's rows of the mixture, ``epoch_rows`` per epoch; stateful for exact resume.

    Each row also carries ``source`` (the component's index) and ``replay`` (not the domain).
    """

    def __init__(
        self,
        parts: Sequence[_LocalRows | _StreamedRows],
        shares: Sequence[Fraction],
        epoch_rows: int,
        domain_index: int,
        world: int,
    ) -> None:
        self.parts, self.shares = list(parts), list(shares)
        self.epoch_rows, self.domain_index, self.world = epoch_rows, domain_index, world
        self.slot = 0  # next slot of this rank
        self.local = [0] * len(self.parts)  # rows taken per component on this rank

    @property
    def counts(self) -> list[int]:
        """Rows taken per component, all ranks together (every rank takes the same)."""
        return [c * self.world for c in self.local]

    def __len__(self) -> int:
        return self.epoch_rows

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        from fmlab.data.mixture import schedule_slots

        end = (self.slot // self.epoch_rows + 1) * self.epoch_rows
        while self.slot < end:
            draws = list(self.local)
            (i,) = schedule_slots(self.shares, self.slot, self.local, 1)
            self.slot += 1
            item = self.parts[i].row(draws[i])
            item["source"] = torch.tensor(i)
            item["replay"] = torch.tensor(i != self.domain_index)
            yield item

    def state_dict(self) -> dict[str, Any]:
        return {"slot": self.slot, "counts": list(self.local)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["counts"]) != len(self.parts):
            raise ValueError("data: the checkpoint's mixture has a different number of components")
        self.slot, self.local = int(state["slot"]), [int(c) for c in state["counts"]]


def streaming_mixture_loader(mixture: Any) -> StatefulDataLoader:
    """The training loader of a :class:`~fmlab.data.mixture.MixtureDataModule` with at least one
    streamed component (see the module docstring); sets ``mixture.sampler`` to its stream."""
    if mixture.num_workers:
        raise ConfigError(
            "data.num_workers: a mixture with streamed components is read in the main process "
            "(litdata downloads in a background thread); set data.num_workers=0"
        )
    rank, world = rank_world(mixture)
    parts: list[_LocalRows | _StreamedRows] = []
    for i, name in enumerate(mixture.names):
        comp = mixture.components[name]
        if is_streaming(comp):
            comp.trainer = getattr(mixture, "trainer", None)  # shards for this trainer's ranks
            parts.append(_StreamedRows(comp))
        else:
            dataset, _ = comp._dataset("train")
            parts.append(_LocalRows(dataset, i, mixture.seed, rank, world))
    shares = [mixture.shares[n] for n in mixture.names]
    if empty := [n for n, s, p in zip(mixture.names, shares, parts) if s > 0 and not p.length]:
        raise ConfigError(f"data.components: {empty} have a share but no training rows per rank")
    nominal = sum(p.length for p in parts)
    epoch_rows = max(1, nominal // mixture.batch_size) * mixture.batch_size
    stream = MixtureStream(parts, shares, epoch_rows, mixture.names.index(mixture.domain), world)
    mixture.sampler = stream
    return StatefulDataLoader(
        stream,
        batch_size=mixture.batch_size,
        drop_last=True,
        collate_fn=stack_rows,
        pin_memory=mixture.pin_memory,
    )
