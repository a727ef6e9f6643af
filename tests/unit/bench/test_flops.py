"""FLOPs per token (PaLM convention) and device peaks: the numbers MFU is computed from."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from fmlab.bench.flops import (
    device_peak_flops,
    flops_per_token,
    matmul_params,
    model_flops_per_token,
)
from fmlab.methods import lora


def _meta(cls, config):
    with torch.device("meta"):  # shapes only: no 500 MB of weights
        return cls(config)


def test_gpt2_124m_palm_flops_per_token():
    # GPT-2 small: 124,439,808 parameters, of which 786,432 are position embeddings (lookups);
    # the token embedding is tied to the head and counted once. T = 1024 → 8.55e8 FLOPs/token.
    model = _meta(GPT2LMHeadModel, GPT2Config(n_layer=12, n_head=12, n_embd=768, n_positions=1024))
    total, trainable = matmul_params(model)
    assert total == trainable == 124_439_808 - 1024 * 768
    assert flops_per_token(total, 12, 12, 64, 1024) == pytest.approx(8.55e8, rel=1e-3)
    assert model_flops_per_token(model, 1024) == pytest.approx(8.551e8, rel=2e-4)


def test_formula_terms():
    assert flops_per_token(1e6, 0, 0, 0, 0) == 6e6  # 2N forward + 4N backward
    # attention: 12·L·H·Q·T, linear in the sequence length
    assert flops_per_token(0, 2, 3, 4, 5) == 12 * 2 * 3 * 4 * 5


def _llama_config(**overrides) -> LlamaConfig:
    shape = dict(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2)
    return LlamaConfig(**{**shape, "num_attention_heads": 4, **overrides})


def test_untied_llama_counts_head_not_input_embedding():
    cfg = _llama_config(vocab_size=1000, hidden_size=64, tie_word_embeddings=False)
    model = _meta(LlamaForCausalLM, cfg)
    total, _ = matmul_params(model)
    every = sum(p.numel() for p in model.parameters())
    assert total == every - 1000 * 64  # the input table is a lookup; the head is a matmul


def test_frozen_weights_skip_their_weight_gradients():
    cfg = _llama_config()
    full = model_flops_per_token(LlamaForCausalLM(cfg), 16)
    adapted = lora(LlamaForCausalLM(cfg), r=4)
    total, trainable = matmul_params(adapted)
    assert 0 < trainable < total
    # 4N + 2N_train + attention: less than 6N of the same weights, more than a forward + backprop
    attn = 12 * 2 * 4 * 8 * 16
    assert model_flops_per_token(adapted, 16) == pytest.approx(4 * total + 2 * trainable + attn)
    assert model_flops_per_token(adapted, 16) < full + 6 * trainable


def test_device_peak(monkeypatch):
    monkeypatch.setenv("FMLAB_PEAK_FLOPS", "1.5e12")
    assert device_peak_flops("cpu") == 1.5e12
    monkeypatch.delenv("FMLAB_PEAK_FLOPS")
    peak = device_peak_flops("cpu", torch.float32)
    assert 1e8 < peak < 1e14  # a measured fp32 matmul: from a slow VM core to a big server
    assert device_peak_flops("cpu", torch.float32) == peak  # cached: measured once per process
