"""Data mixtures: exact shares over any number of steps, determinism, resume and sharding."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from fmlab.data.datamodule import BlockDataset
from fmlab.data.mixture import MixtureDataset, MixtureSampler, mixture_shares, schedule_slots


def test_shares_from_replay_and_weights():
    names = ["code", "general", "wiki"]
    s = mixture_shares(names, None, 0.05, "code")
    assert s == {"code": Fraction(19, 20), "general": Fraction(1, 40), "wiki": Fraction(1, 40)}
    s = mixture_shares(names, {"general": 3, "wiki": 1}, 0.2, "code")
    assert s == {"code": Fraction(4, 5), "general": Fraction(3, 20), "wiki": Fraction(1, 20)}
    assert mixture_shares(names, {"code": 1, "general": 1}, None, "code")["wiki"] == 0
    assert mixture_shares(names, None, None, "code") == {"code": 1, "general": 0, "wiki": 0}
    with pytest.raises(ValueError, match=r"data.weights: unknown component\(s\) \['nope'\]"):
        mixture_shares(names, {"nope": 1}, None, "code")
    with pytest.raises(ValueError, match="needs a second component"):
        mixture_shares(["code"], None, 0.1, "code")


@pytest.mark.parametrize(
    "shares",
    [
        [Fraction(19, 20), Fraction(1, 20)],
        [Fraction(1, 2), Fraction(1, 3), Fraction(1, 6)],
        [Fraction(7, 10), Fraction(29, 100), Fraction(1, 100)],
        [Fraction(1), Fraction(0)],
    ],
)
def test_realized_mix_is_within_one_row_of_the_shares_after_every_slot(shares):
    counts = [0] * len(shares)
    schedule_slots(shares, 0, counts, 3000)
    assert sum(counts) == 3000
    running = [0] * len(shares)
    for k, i in enumerate(schedule_slots(shares, 0, [0] * len(shares), 3000), start=1):
        running[i] += 1
        assert all(abs(c - s * k) < 1 for c, s in zip(running, shares)), (k, running)
    assert running == counts


def test_five_percent_replay_is_exact_per_twenty_batches_of_sixteen():
    counts = [0, 0]
    slots = schedule_slots([Fraction(19, 20), Fraction(1, 20)], 0, counts, 16 * 200)
    per_20_batches = [sum(slots[j : j + 320]) for j in range(0, len(slots), 320)]
    assert per_20_batches == [16] * 10
    assert counts == [3040, 160]


def _dataset(sizes: list[int]) -> MixtureDataset:
    parts = [
        BlockDataset(np.full((n, 4), 1000 * (c + 1), dtype=np.int64) + np.arange(n)[:, None])
        for c, n in enumerate(sizes)
    ]
    return MixtureDataset(parts, domain_index=0)


def _loader(sizes, shares, batch=8, rank=0, world=1) -> StatefulDataLoader:
    sampler = MixtureSampler(sizes, shares, epoch_rows=48, seed=3, rank=rank, world=world)
    return StatefulDataLoader(_dataset(sizes), batch_size=batch, sampler=sampler, drop_last=True)


def _stream(loader, epochs: int) -> list[tuple[int, int]]:
    out = []
    for _ in range(epochs):
        for b in loader:
            out += [(int(s), int(x)) for s, x in zip(b["source"], b["input_ids"][:, 0])]
    return out


SIZES, SHARES = [30, 7], [Fraction(3, 4), Fraction(1, 4)]


def test_stream_is_deterministic_and_each_component_is_reshuffled_when_used_up():
    a, b = _stream(_loader(SIZES, SHARES), 5), _stream(_loader(SIZES, SHARES), 5)
    assert a == b and len(a) == 5 * 48
    assert sum(s for s, _ in a) == 60  # a quarter of 240 rows from component 1
    general = [x for s, x in a if s == 1]
    for j in range(0, 56, 7):  # every 7 draws: a permutation of component 1's 7 rows
        assert sorted(general[j : j + 7]) == [2000 + i for i in range(7)]
    assert general[:7] != general[7:14]
    first = _loader(SIZES, SHARES)
    assert next(iter(first))["replay"].dtype == torch.bool


@pytest.mark.parametrize("stop_after", [1, 5, 6, 13])  # mid-epoch and at an epoch boundary
def test_resume_continues_with_the_exact_next_rows(stop_after):
    reference = _stream(_loader(SIZES, SHARES), 4)
    loader = _loader(SIZES, SHARES)
    seen, it, epoch, state = [], iter(loader), 0, None
    for _ in range(stop_after):
        try:
            b = next(it)
        except StopIteration:
            epoch += 1
            it = iter(loader)
            b = next(it)
        seen += [(int(s), int(x)) for s, x in zip(b["source"], b["input_ids"][:, 0])]
        state = loader.state_dict()
    resumed = _loader(SIZES, SHARES)
    resumed.load_state_dict(state)
    rest = _stream(resumed, 4)
    assert seen + rest[: len(reference) - len(seen)] == reference


def test_ranks_split_the_global_stream():
    single = _stream(_loader(SIZES, SHARES, batch=4), 2)
    r0 = _stream(_loader(SIZES, SHARES, batch=4, rank=0, world=2), 2)
    r1 = _stream(_loader(SIZES, SHARES, batch=4, rank=1, world=2), 2)
    assert r0[: len(single) // 2] == single[0::2]
    assert r1[: len(single) // 2] == single[1::2]


def test_a_component_with_a_share_but_no_rows_is_refused():
    with pytest.raises(ValueError, match="no training rows"):
        MixtureSampler([10, 0], SHARES, epoch_rows=8)
