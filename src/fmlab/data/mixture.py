"""Data mixtures: several prepared corpora sampled with fixed shares (new domain + replay).

The mix is exact and deterministic. Training rows are handed out slot by slot; slot ``k`` goes to
the component with the largest deficit ``share_i * (k + 1) - taken_i`` (ties: the first), in
integer arithmetic. After any ``n`` slots every component has ``round(share_i * n)`` rows, give or
take less than one row, so 5% replay at 16 rows per batch means exactly 16 replay rows every 20
steps. Within a component, its ``j``-th row is position ``j mod N_i`` of a permutation drawn from
``(seed, component, j div N_i)``: each component is reshuffled whenever it is used up, independently
of the others. The whole stream is a function of the slot counter (and the per-component counts
it implies), which the sampler checkpoints, so resume continues with the exact next row.

Validation and test are the *domain* component's; the other components' validation splits are
the *retention sets* the forgetting monitor evaluates (also with replay 0).

Components may be streamed (``data=streaming``): the mixture is then scheduled per rank, with
the guarantee stated in :mod:`fmlab.data.streaming.mixture`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from fractions import Fraction
from typing import Annotated, Any

import lightning as L
import torch
from pydantic import Field
from torch.utils.data import DataLoader, Dataset, Sampler
from torchdata.stateful_dataloader import StatefulDataLoader
from transformers import PreTrainedTokenizerBase

from fmlab.data.datamodule import BlockDataset, PretrainDataModule
from fmlab.data.loaders import eval_loader, rank_world
from fmlab.data.streaming import StreamingDataModule
from fmlab.data.tokenizer import fixed_tokenizer

__all__ = [
    "MixtureDataModule",
    "MixtureSampler",
    "RowStreams",
    "mixture_shares",
    "schedule_slots",
]

Share = Annotated[float, Field(ge=0.0, lt=1.0)]


def mixture_shares(
    names: Sequence[str],
    weights: dict[str, float] | None,
    replay: float | None,
    domain: str,
) -> dict[str, Fraction]:
    """Exact row shares of the components (summing to 1).

    Args:
        names: Component names, in order.
        weights: Relative weights (missing names weigh 0). Without ``replay``: the shares. With
            ``replay``: how the replay share is divided among the non-domain components (default:
            equally). ``None``: everything on the domain (or on equal parts, for no replay given).
        replay: Share of rows drawn from the non-domain components; the domain gets the rest.
        domain: The component being adapted to.

    Raises:
        ValueError: On unknown names, negative weights, or weights that sum to zero.
    """
    weights = dict(weights or {})
    if unknown := sorted(set(weights) - set(names)):
        raise ValueError(f"data.weights: unknown component(s) {unknown}; components: {names}")
    if bad := {k: v for k, v in weights.items() if v < 0}:
        raise ValueError(f"data.weights: must be >= 0, got {bad}")
    frac = {n: Fraction(str(weights.get(n, 0.0))) for n in names}
    others = [n for n in names if n != domain]
    if replay is None:
        if not weights:
            return {n: Fraction(int(n == domain)) for n in names}
        total = sum(frac.values())
        if total == 0:
            raise ValueError("data.weights: the weights sum to 0")
        return {n: frac[n] / total for n in names}
    replay_f = Fraction(str(replay))
    if replay_f > 0 and not others:
        raise ValueError("data.replay > 0 needs a second component to replay from")
    base = (
        {n: frac[n] for n in others} if any(frac[n] for n in others) else dict.fromkeys(others, 1)
    )
    total = sum(base.values()) or 1
    shares = {n: replay_f * Fraction(base[n]) / total for n in others}
    return {n: (1 - replay_f) if n == domain else shares[n] for n in names}


def schedule_slots(shares: Sequence[Fraction], start: int, counts: list[int], n: int) -> list[int]:
    """Components of slots ``start .. start + n - 1``; ``counts`` (rows taken so far) is updated.

    Largest deficit first: slot ``k`` goes to ``argmax_i share_i * (k + 1) - counts_i``.
    """
    den = 1
    for s in shares:
        den = den * s.denominator // _gcd(den, s.denominator)
    scaled = [int(s * den) for s in shares]  # integers: no float ties
    out = []
    for k in range(start, start + n):
        deficits = [w * (k + 1) - c * den for w, c in zip(scaled, counts)]
        i = max(range(len(scaled)), key=lambda j: (deficits[j], -j))
        counts[i] += 1
        out.append(i)
    return out


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


class RowStreams:
    """Endless row streams of parts laid end to end: part ``i``'s ``j``-th row is position
    ``j mod N_i`` of a permutation drawn from ``(seed, i, j div N_i)`` — each part reshuffled
    whenever it is used up, independently of the others. Returns global indices."""

    def __init__(self, sizes: Sequence[int], seed: int) -> None:
        self.sizes, self.seed = list(sizes), seed
        self.offsets = [sum(self.sizes[:i]) for i in range(len(self.sizes))]
        self._perms: dict[int, tuple[int, torch.Tensor]] = {}

    def row(self, i: int, j: int) -> int:
        epoch, pos = divmod(j, self.sizes[i])
        cached = self._perms.get(i)
        if cached is None or cached[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + 7_919 * i + epoch)
            cached = (epoch, torch.randperm(self.sizes[i], generator=g))
            self._perms[i] = cached
        return self.offsets[i] + int(cached[1][pos])


class MixtureSampler(Sampler[int]):
    """Global row indices of the mixture, continuing across epochs; stateful for exact resume.

    Indices are ``offsets[i] + row`` into a :class:`MixtureDataset`. One epoch is ``epoch_rows``
    slots per rank; rank ``r`` of ``world`` takes every world-th global slot.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        shares: Sequence[Fraction],
        *,
        epoch_rows: int,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        if any(s > 0 and n == 0 for s, n in zip(shares, sizes)):
            raise ValueError("data: a component with a positive share has no training rows")
        self.sizes, self.shares = list(sizes), list(shares)
        self.streams = RowStreams(self.sizes, seed)
        self.epoch_rows, self.seed, self.rank, self.world = epoch_rows, seed, rank, world
        self.slot = 0  # next global slot
        self.counts = [0] * len(self.sizes)  # rows taken per component (global)

    def __len__(self) -> int:
        return self.epoch_rows

    def _row(self, i: int, j: int) -> int:
        """Row of component ``i`` for its ``j``-th draw."""
        return self.streams.row(i, j)

    def __iter__(self) -> Iterator[int]:
        per_epoch = self.epoch_rows * self.world
        end = (self.slot // per_epoch + 1) * per_epoch
        while self.slot < end:
            k = self.slot
            draws = list(self.counts)
            (i,) = schedule_slots(self.shares, k, self.counts, 1)
            self.slot += 1
            if k % self.world == self.rank:
                yield self._row(i, draws[i])

    def state_dict(self) -> dict[str, Any]:
        return {"slot": self.slot, "counts": list(self.counts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["counts"]) != len(self.sizes):
            raise ValueError("data: the checkpoint's mixture has a different number of components")
        self.slot, self.counts = int(state["slot"]), [int(c) for c in state["counts"]]


class MixtureDataset(Dataset):
    """The components' training blocks end to end; each row also says whether it is replay."""

    def __init__(self, parts: Sequence[BlockDataset], domain_index: int) -> None:
        self.parts, self.domain_index = list(parts), domain_index
        self.offsets = [sum(len(p) for p in self.parts[:i]) for i in range(len(self.parts))]

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        i = max(j for j, off in enumerate(self.offsets) if off <= index and len(self.parts[j]))
        item = self.parts[i][index - self.offsets[i]]
        item["source"] = torch.tensor(i)
        item["replay"] = torch.tensor(i != self.domain_index)
        return item


class MixtureDataModule(L.LightningDataModule):
    """Several corpora (each a :class:`PretrainDataModule` node), mixed with exact shares.

    Args:
        components: Name → data module; all are tokenized with one tokenizer (trained on the
            domain's texts, or the base model's with ``init_from``).
        domain: The component adapted to: its validation/test splits are ``val/*``/``test/*``
            (default: the first).
        replay: Share of training rows from the other components (``data.replay=0.05``).
        weights: Relative weights; see :func:`mixture_shares`.
        batch_size: Rows per training batch (per device).
        seed: Seed of every component's shuffle.
        num_workers: DataLoader worker processes.
        pin_memory: Pin host memory (GPU training).
    """

    def __init__(
        self,
        components: dict[str, PretrainDataModule | StreamingDataModule],
        domain: str | None = None,
        replay: Share | None = None,
        weights: dict[str, Annotated[float, Field(ge=0)]] | None = None,
        batch_size: Annotated[int, Field(gt=0)] = 16,
        seed: int = 0,
        num_workers: Annotated[int, Field(ge=0)] = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        if not components:
            raise ValueError("data.components: give at least one component")
        self.components = dict(components)
        self.names = list(self.components)
        self.domain = domain or self.names[0]
        if self.domain not in self.components:
            raise ValueError(f"data.domain={self.domain!r}: not one of {self.names}")
        self.shares = mixture_shares(self.names, weights, replay, self.domain)
        self.batch_size, self.seed = batch_size, seed
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.stats: dict[str, Any] = {}
        self.sampler: MixtureSampler | None = None

    @property
    def _domain(self) -> PretrainDataModule:
        return self.components[self.domain]

    @property
    def blocks(self) -> dict[str, Any]:
        """The domain's blocks (the unigram baseline of ``test/``)."""
        return self._domain.blocks

    @property
    def block_size(self) -> int | None:
        return self._domain.block_size

    def prepare(self, tokenizer_factory: Any) -> PreTrainedTokenizerBase:
        """Prepare every component with one tokenizer; returns it.

        The domain is prepared first, with ``tokenizer_factory``: a tokenizer trained (or
        extended with mined domain tokens) sees the domain's texts; the others reuse it.
        """
        tok = self.components[self.domain].prepare(tokenizer_factory)
        for name in self.names:
            if name != self.domain:
                self.components[name].prepare(fixed_tokenizer(tok))
        sizes = {n: c.block_size for n, c in self.components.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"data.components: block sizes differ {sizes}; set one block_size")
        columns = {n: sorted(c.columns["train"]) for n, c in self.components.items()}
        if len({tuple(c) for c in columns.values()}) > 1:
            raise ValueError(f"data.components: different columns {columns} (document_mask?)")
        self.tokenizer = tok
        comp = {n: c.stats for n, c in self.components.items()}
        self.stats = {
            **{k: v for k, v in comp[self.domain].items() if k != "sources"},
            "sources": [s for c in comp.values() for s in c["sources"]],
            "mixture": {
                "domain": self.domain,
                "shares": {n: float(s) for n, s in self.shares.items()},
            },
            "components": comp,
        }
        return tok

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None:
            raise RuntimeError("MixtureDataModule.prepare(tokenizer_factory) must run before fit")

    def train_dataloader(self) -> StatefulDataLoader:
        if any(isinstance(c, StreamingDataModule) for c in self.components.values()):
            from fmlab.data.streaming.mixture import streaming_mixture_loader

            return streaming_mixture_loader(self)
        rank, world = rank_world(self)
        parts = [self.components[n]._dataset("train") for n in self.names]
        dataset = MixtureDataset([p for p, _ in parts], self.names.index(self.domain))
        nominal = sum(len(d) for d, _ in parts if d is not None)
        epoch_rows = max(1, nominal // (world * self.batch_size)) * self.batch_size
        self.sampler = MixtureSampler(
            [len(d) for d, _ in parts],
            [self.shares[n] for n in self.names],
            epoch_rows=epoch_rows,
            seed=self.seed,
            rank=rank,
            world=world,
        )
        return StatefulDataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=self.sampler,
            drop_last=True,
            collate_fn=parts[0][1],
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def _loader(self, name: str, split: str) -> DataLoader:
        comp = self.components[name]
        if isinstance(comp, StreamingDataModule):
            comp.trainer = getattr(self, "trainer", None)  # its shard of this trainer's ranks
            return comp.eval_loader(split)
        rank, world = rank_world(self)
        dataset, collate = comp._dataset(split)
        return eval_loader(
            dataset,
            batch_size=comp.eval_batch_size,
            rank=rank,
            world=world,
            collate_fn=collate,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.domain, "validation")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.domain, "test")

    def retention_loaders(self, split: str = "validation") -> dict[str, DataLoader]:
        """The non-domain components' ``split`` loaders (what continued training may forget)."""
        return {n: self._loader(n, split) for n in self.names if n != self.domain}

    def domain_loader(self, split: str = "validation") -> DataLoader:
        """The domain component's ``split`` loader."""
        return self._loader(self.domain, split)

    def rows_taken(self) -> dict[str, int]:
        """Training rows drawn so far per component (all ranks together)."""
        counts = self.sampler.counts if self.sampler else [0] * len(self.names)
        return dict(zip(self.names, counts))
