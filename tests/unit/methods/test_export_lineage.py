"""Adapter/ReFT exports record their base and, with include_base, carry it along."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from tests.unit.test_lineage import _tiny
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from fmlab.config import ConfigError
from fmlab.lineage import resolve_model_ref
from fmlab.methods.adapters import load_trained, save_trained
from fmlab.methods.lora import lora
from fmlab.methods.reft import loreft


def _base(path: Path) -> Path:
    _tiny(path, 0, vocab_size=16, num_hidden_layers=2, eos_token_id=1, pad_token_id=0)
    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "<unk>", *"abcdefghijklm"])}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.save_pretrained(str(path))
    return path


@pytest.mark.parametrize("method", ["lora", "loreft"])
def test_include_base_makes_the_export_self_contained(method, tmp_path):
    base_dir = _base(tmp_path / "base")
    ref = resolve_model_ref(str(base_dir), "model.name_or_path")
    model = LlamaForCausalLM.from_pretrained(str(base_dir))
    torch.manual_seed(1)
    wrapped = lora(model, r=2) if method == "lora" else loreft(model, rank=2)
    if method == "loreft":  # interventions start near identity: move them off it
        with torch.no_grad():
            for p in wrapped.interventions.parameters():
                p.add_(0.1)
    else:
        with torch.no_grad():
            for n, p in wrapped.named_parameters():
                if "lora_B" in n:
                    p.add_(0.1)
    tok = PreTrainedTokenizerFast.from_pretrained(str(base_dir))
    paths = save_trained(
        wrapped, tok, tmp_path / "run" / "export", {"run_id": "r1"}, base=ref, include_base=True
    )
    ids = torch.tensor([[3, 4, 5, 6]])
    expected = load_trained(tmp_path / "run")[0](input_ids=ids).logits
    sub = "adapter" if method == "lora" else "reft"
    lineage = json.loads(Path(paths[sub], "fmlab_lineage.json").read_text())
    assert lineage["base"]["fingerprint"] == ref.fingerprint and lineage["run_id"] == "r1"
    assert lineage["bundled_base"]["path"] == "base"
    # the export alone, on another tree; the original base and run are gone
    shutil.copytree(tmp_path / "run" / "export", tmp_path / "moved" / "export")
    shutil.rmtree(base_dir)
    shutil.rmtree(tmp_path / "run")
    info: dict = {}
    again, _ = load_trained(tmp_path / "moved" / "export", lineage=info)
    torch.testing.assert_close(again(input_ids=ids).logits, expected, rtol=0, atol=0)
    assert info["base"]["path"] == str((tmp_path / "moved" / "export" / "base").resolve())
    # tampering with the bundled base is caught
    weights = tmp_path / "moved" / "export" / "base" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ConfigError, match="fingerprint"):
        load_trained(tmp_path / "moved" / "export")


def test_legacy_adapter_with_a_relative_base_is_refused(tmp_path):
    base_dir = _base(tmp_path / "base")
    model = lora(LlamaForCausalLM.from_pretrained(str(base_dir)), r=2)
    tok = PreTrainedTokenizerFast.from_pretrained(str(base_dir))
    adapter = Path(save_trained(model, tok, tmp_path / "export", {})["adapter"])
    (adapter / "fmlab_lineage.json").unlink()  # as written before fingerprints existed
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "logs/train/latest/export"
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="relative path 'logs/train/latest/export'.*base_model="):
        load_trained(adapter)
    load_trained(adapter, base=str(base_dir))  # the explicit base works (nothing to compare)
