"""CausalLMModule's per-step fast paths behave as Lightning's general ones do."""

from __future__ import annotations

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import nn

from fmlab.modules import CausalLMModule


def _module() -> CausalLMModule:
    return CausalLMModule(nn.Linear(4, 4), optimizer=None)


def test_flat_batches_move_like_lightnings_default():
    module = _module()
    batch = {"input_ids": torch.arange(6).view(2, 3), "labels": torch.ones(2, 3)}
    moved = module.transfer_batch_to_device(batch, torch.device("cpu"), 0)
    expected = move_data_to_device(batch, torch.device("cpu"))
    assert type(moved) is dict and list(moved) == list(expected)
    assert all(moved[k] is expected[k] for k in batch)  # same device: the same tensors
    # anything else takes Lightning's general path (nested values, non-tensors)
    nested = {"input_ids": batch["input_ids"], "meta": {"task": "logic", "n": torch.ones(1)}}
    out = module.transfer_batch_to_device(nested, torch.device("cpu"), 0)
    assert out["meta"]["task"] == "logic" and torch.equal(out["meta"]["n"], torch.ones(1))


def test_per_step_attributes_are_plain_and_never_registered():
    module = _module()
    keys = set(module.state_dict())
    module._current_fx_name = "training_step"
    module.tokens_seen = 128
    module._step_norm = torch.tensor(1.0)
    assert set(module.state_dict()) == keys and not module._buffers
    assert module.__dict__["_current_fx_name"] == "training_step"
    assert module.tokens_seen == 128
