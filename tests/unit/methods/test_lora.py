"""LoRA family through PEFT: targets, strict loading, PEFT round trip, checked merge."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from fmlab.config import ConfigError, compose_config, validate_config
from fmlab.methods.lora import dora, load_lora, lora, merge_lora, qlora, qlora_backend_error


def _llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg).eval()


def _gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4)).eval()


def _perturb(model: PeftModel) -> None:
    """LoRA B starts at zero (the adapter is a no-op): make it do something."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)


IDS = torch.tensor([[1, 5, 9, 13, 2, 7], [3, 3, 8, 1, 0, 4]])


def test_auto_targets_per_architecture():
    llama = lora(_llama(), r=4)
    targets = set(llama.peft_config["default"].target_modules)
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    gpt2 = lora(_gpt2(), r=4)
    assert set(gpt2.peft_config["default"].target_modules) == {"c_attn", "c_proj", "c_fc"}
    trainable = [n for n, p in llama.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with pytest.raises(ValueError, match=r"method.target_modules: \['nope'\]"):
        lora(_llama(), target_modules=["q_proj", "nope"])


def test_values_peft_accepts_silently_are_refused(tmp_path):
    for override, message in [
        ("method.r=-4", "method.r: Input should be greater than 0"),
        ("method.alpha=0", "method.alpha: Input should be greater than 0"),
        ("method.dropout=1.5", "method.dropout: Input should be less than 1"),
    ]:
        cfg = compose_config("train", ["method=lora", override], output_dir=tmp_path)
        with pytest.raises(ConfigError, match=message):
            validate_config(cfg)


def test_peft_round_trip_through_plain_peft(tmp_path):
    model = lora(_llama(), r=4).eval()  # eval: no adapter dropout
    _perturb(model)
    with torch.no_grad():
        expected = model(input_ids=IDS).logits
    model.save_pretrained(str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    plain = PeftModel.from_pretrained(_llama(), str(tmp_path / "adapter")).eval()
    strict = load_lora(_llama(), tmp_path / "adapter").eval()
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=IDS).logits, expected, atol=1e-6)
        assert torch.allclose(strict(input_ids=IDS).logits, expected, atol=1e-6)
        # and the adapter really changes the model
        assert not torch.allclose(_llama()(input_ids=IDS).logits, expected, atol=1e-3)


def test_mismatched_adapter_keys_fail_loudly(tmp_path):
    adapter = lora(_llama(), r=4, target_modules=["q_proj"])
    adapter.save_pretrained(str(tmp_path / "a"))
    # the same module names exist, but in a model with fewer layers: keys do not match
    small = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=4,
            intermediate_size=64,
        )
    )
    from safetensors.torch import load_file, save_file

    weights = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    renamed = {k.replace("q_proj", "v_proj"): v for k, v in weights.items()}
    save_file(renamed, str(tmp_path / "a" / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match="does not match the model"):
        load_lora(_llama(), tmp_path / "a")
    save_file(weights, str(tmp_path / "a" / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match="does not match the model"):
        load_lora(small, tmp_path / "a")


def test_merge_is_checked_and_exact():
    model = dora(_llama(), r=4).eval()
    _perturb(model)
    merged, diff = merge_lora(model, IDS)
    assert diff < 1e-4
    assert not isinstance(merged, PeftModel)
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=IDS).logits, model(input_ids=IDS).logits, atol=1e-4)
    assert any("lora_" in n for n, _ in model.named_parameters())  # the original is untouched
    with pytest.raises(ValueError, match="merged LoRA logits differ"):
        merge_lora(model, IDS, atol=-1.0)


def test_merged_export_loads_as_plain_hf(tmp_path):
    model = lora(_llama(), r=4).eval()
    _perturb(model)
    merged, _ = merge_lora(model, IDS)
    merged.save_pretrained(str(tmp_path / "m"))
    again = AutoModelForCausalLM.from_pretrained(str(tmp_path / "m")).eval()
    with torch.no_grad():
        assert torch.allclose(again(input_ids=IDS).logits, model(input_ids=IDS).logits, atol=1e-4)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without CUDA")
def test_qlora_fails_clearly_without_a_gpu():
    assert "CUDA" in qlora_backend_error()
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        qlora(_llama())
