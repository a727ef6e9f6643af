"""DataLoaders: evaluation must not consume the global RNG (exact resume across validation)."""

from __future__ import annotations

import torch

from fmlab.data.loaders import eval_loader, train_loader


def test_iterating_an_eval_loader_leaves_the_global_rng_alone():
    data = [torch.tensor([i]) for i in range(10)]
    before = torch.get_rng_state()
    batches = list(eval_loader(data, batch_size=3, rank=1, world=2))
    assert torch.equal(torch.get_rng_state(), before)  # training dropout after it is unchanged
    assert [b.flatten().tolist() for b in batches] == [[1, 3, 5], [7, 9]]  # rank 1, unpadded


def test_train_loader_order_is_a_function_of_the_seed_only():
    data = list(range(32))
    first = [b.tolist() for b in train_loader(data, batch_size=4, seed=7)]
    torch.rand(5)  # global RNG use in between does not change the order
    again = [b.tolist() for b in train_loader(data, batch_size=4, seed=7)]
    assert first == again and sorted(x for b in first for x in b) == data
