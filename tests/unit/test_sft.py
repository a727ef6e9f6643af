import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from fmlab.data.sft import (
    IGNORE_INDEX,
    collate_sft,
    encode_prompt,
    encode_sft,
    pack_sft,
    packed_attention_mask,
)
from fmlab.data.tokenizer import bpe


@pytest.fixture(scope="module")
def tok(tmp_path_factory, corpus_docs):
    return bpe(
        lambda: iter(corpus_docs), "sft-test", tmp_path_factory.mktemp("tok"), vocab_size=300
    )


def test_encode_masks_prompt_and_appends_eos(tok):
    enc = encode_sft("the model reads", " tokens.", tok, max_length=64, template="Q: {prompt} A:")
    prompt = encode_prompt("the model reads", tok, template="Q: {prompt} A:")
    n = len(prompt)
    assert enc["input_ids"][:n] == prompt
    assert enc["labels"][:n] == [IGNORE_INDEX] * n
    assert enc["labels"][n:] == enc["input_ids"][n:]
    assert enc["input_ids"][-1] == tok.eos_token_id
    assert tok.decode(enc["input_ids"][n:-1]) == " tokens."


def test_truncation_keeps_prompt_and_drops_rows_without_response(tok):
    enc = encode_sft("a b", " the model reads tokens and blocks", tok, max_length=5)
    assert len(enc["input_ids"]) == 5
    assert sum(x != IGNORE_INDEX for x in enc["labels"]) == 5 - len(encode_prompt("a b", tok))
    long_prompt = "the model reads tokens " * 10
    assert encode_sft(long_prompt, " x", tok, max_length=8) is None  # would give a NaN loss


def test_chat_template(tok):
    tok = tok.__class__.from_pretrained(tok.name_or_path) if tok.name_or_path else tok
    tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    enc = encode_sft("hi", " there", tok, max_length=64, chat_template=True, system="be brief")
    n = enc["labels"].count(IGNORE_INDEX)
    assert tok.decode(enc["input_ids"][:n]) == "<system>be brief<user>hi<assistant>"
    with pytest.raises(ValueError, match="no chat template"):
        tok.chat_template = None
        encode_sft("hi", " there", tok, max_length=64, chat_template=True)


def test_collate_right_and_left_padding_agree(tok):
    exs = [encode_sft(p, r, tok, max_length=64) for p, r in [("a", " b c"), ("the model", " x")]]
    right = collate_sft(exs, pad_id=tok.pad_token_id, padding_side="right")
    left = collate_sft(exs, pad_id=tok.pad_token_id, padding_side="left")
    for i, ex in enumerate(exs):
        n = len(ex["input_ids"])
        r_sel, l_sel = right["attention_mask"][i].bool(), left["attention_mask"][i].bool()
        assert r_sel.sum() == l_sel.sum() == n
        for key in ("input_ids", "labels", "prompt_mask", "position_ids"):
            assert torch.equal(right[key][i][r_sel], left[key][i][l_sel]), key
        assert right["position_ids"][i][r_sel].tolist() == list(range(n))
    assert (right["labels"][~right["attention_mask"].bool()] == IGNORE_INDEX).all()
    with pytest.raises(ValueError, match="padding_side"):
        collate_sft(exs, pad_id=0, padding_side="middle")


def test_pack_sft_layout():
    a = {"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}
    b = {"input_ids": [4, 5], "labels": [-100, 5]}
    c = {"input_ids": [6, 7, 8, 9], "labels": [-100, -100, 8, 9]}
    p = pack_sft([a, b, c], block_size=6, pad_id=0)
    assert p["input_ids"].tolist() == [[1, 2, 3, 4, 5, 0], [6, 7, 8, 9, 0, 0]]
    assert p["labels"].tolist() == [[-100, 2, 3, -100, 5, -100], [-100, -100, 8, 9, -100, -100]]
    assert p["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 0]]
    assert p["seq_ids"].tolist() == [[0, 0, 0, 1, 1, -1], [0, 0, 0, 0, -1, -1]]
    with pytest.raises(ValueError, match="does not fit"):
        pack_sft([c], block_size=3, pad_id=0)


def test_packed_mask_isolates_examples_in_the_model():
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
    )
    model = LlamaForCausalLM(cfg).eval()
    a, b = [1, 2, 3, 4, 5], [6, 7, 8]
    p = pack_sft([{"input_ids": a, "labels": a}, {"input_ids": b, "labels": b}], 10, 0)
    mask = packed_attention_mask(torch.as_tensor(p["seq_ids"]))
    assert mask.shape == (1, 1, 10, 10)
    with torch.no_grad():
        packed = model(
            input_ids=torch.as_tensor(p["input_ids"]),
            position_ids=torch.as_tensor(p["position_ids"]),
            attention_mask=mask,
        ).logits
        alone_a = model(input_ids=torch.tensor([a])).logits
        alone_b = model(input_ids=torch.tensor([b])).logits
    assert torch.allclose(packed[0, :5], alone_a[0], atol=1e-5)
    assert torch.allclose(packed[0, 5:8], alone_b[0], atol=1e-5)  # b never sees a
    assert np.isfinite(packed.numpy()).all()  # padding rows are not fully masked
