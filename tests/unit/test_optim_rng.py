import random

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from fmlab.modules.optim import adamw, param_groups
from fmlab.modules.rng import get_rng_state, set_rng_state


def _tiny_llama():
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg)


def test_param_groups_decay_only_matrices():
    model = _tiny_llama()
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert "model.embed_tokens.weight" in skipped  # embeddings (tied with lm_head) never decay
    assert all("norm" not in n for n in decayed)
    assert any("norm" in n for n in skipped)
    assert any("q_proj" in n for n in decayed)
    # every trainable tensor exactly once
    total = sum(p.numel() for g in (decay, no_decay) for p in g["params"])
    assert total == sum(p.numel() for p in model.parameters())


def test_adamw_skips_frozen_and_refuses_empty():
    model = _tiny_llama()
    for name, p in model.named_parameters():
        p.requires_grad_("q_proj" in name)
    opt = adamw(model, lr=1e-3)
    assert sum(len(g["params"]) for g in opt.param_groups) == 1
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        adamw(model)


def test_rng_roundtrip_survives_weights_only_load(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = get_rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    loaded = torch.load(tmp_path / "rng.pt", weights_only=True)  # what Lightning checkpoints use
    set_rng_state(loaded)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
