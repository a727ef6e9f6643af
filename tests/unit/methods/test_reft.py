"""ReFT (LoReFT/DiReFT): the maths of DESIGN.md §5, positions, hooks, padding, generation, I/O."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from fmlab.methods.reft import (
    DiReFTIntervention,
    LoReFTIntervention,
    ReftModel,
    direft,
    load_reft,
    loreft,
    parse_positions,
    position_masks,
    save_reft,
)

V, D = 97, 32  # tiny vocabulary and hidden size


def tiny(arch: str = "llama", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    common = dict(vocab_size=V, pad_token_id=0, bos_token_id=1, eos_token_id=None)
    if arch == "gpt2":
        cfg = GPT2Config(n_embd=D, n_layer=3, n_head=4, n_positions=64, **common)
        model = GPT2LMHeadModel(cfg)
    else:
        cls, cfg_cls = {
            "llama": (LlamaForCausalLM, LlamaConfig),
            "qwen2": (Qwen2ForCausalLM, Qwen2Config),
            "mistral": (MistralForCausalLM, MistralConfig),
        }[arch]
        cfg = cfg_cls(
            hidden_size=D,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            **common,
        )
        model = cls(cfg)
    return model.eval()


def kick(model: ReftModel, scale: float = 2.0) -> ReftModel:
    """Make every intervention clearly non-trivial (a large bias)."""
    with torch.no_grad():
        for iv in model.interventions.values():
            iv.b.normal_(0, scale)
    return model


def record(model: ReftModel, layer: int) -> list[torch.Tensor]:
    """Record the (edited) output of a decoder layer: registered after ReftModel's own hook."""
    out: list[torch.Tensor] = []
    block = model.base.get_submodule(model.layer_path)[layer]
    block.register_forward_hook(lambda m, a, o: out.append(o[0] if isinstance(o, tuple) else o))
    return out


# ---------------------------------------------------------------------- the maths (DESIGN §5)
def test_hand_checkable_loreft_case():
    iv = LoReFTIntervention(4, 2)
    s = 1 / math.sqrt(2)
    iv.set_R(torch.tensor([[s, s, 0, 0], [0, 0, s, -s]]))
    with torch.no_grad():
        iv.W.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0]]))
        iv.b.zero_()
    out = iv(torch.tensor([[1.0, 2, 3, 4]]))
    expected = torch.tensor([[0.2071068, 1.2071068, 4.9142136, 2.0857864]])
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loreft_invariants(seed):
    torch.manual_seed(seed)
    iv = LoReFTIntervention(16, 4)
    with torch.no_grad():
        iv.b.normal_()
    h = torch.randn(10, 16) * 3
    out = iv(h)
    R = iv.R.detach()
    torch.testing.assert_close(R @ R.T, torch.eye(4), atol=1e-5, rtol=0)
    # R Φ(h) = W h + b
    torch.testing.assert_close(out @ R.T, iv.source(h).detach(), atol=1e-5, rtol=0)
    # the component orthogonal to R's rows is unchanged
    P = torch.eye(16) - R.T @ R
    torch.testing.assert_close(out @ P, h @ P, atol=1e-5, rtol=0)


def test_loreft_identity_at_init():
    iv = LoReFTIntervention(16, 4, init_identity=True)
    h = torch.randn(5, 16)
    torch.testing.assert_close(iv(h), h, atol=1e-6, rtol=0)
    torch.testing.assert_close(iv.W, iv.R, atol=0, rtol=0)


def test_direft_equation():
    iv = DiReFTIntervention(16, 4)
    h = torch.randn(5, 16)
    expected = h + (h @ iv.W1.T + iv.b) @ iv.W2
    torch.testing.assert_close(iv(h), expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("cls", [LoReFTIntervention, DiReFTIntervention])
def test_parameter_count(cls):
    for d, r in [(4, 2), (32, 8), (48, 5)]:
        assert cls(d, r).n_params == 2 * d * r + r
    # LLaMA-7B shape: d = 4096, rank 8, all 32 layers, tied: the paper's 2,097,408 (0.031%)
    n = cls(4096, 8).n_params * 32
    assert n == 2_097_408
    assert round(100 * n / 6_738_415_616, 3) == 0.031


def test_model_parameter_count_and_frozen_base():
    tied = loreft(tiny(), rank=4, positions="f3+l3")
    untied = direft(tiny(), rank=4, positions="f3+l3", tied=False, layers=[0, 2])
    assert tied.n_trainable() == 3 * (2 * D * 4 + 4)
    assert untied.n_trainable() == 2 * 2 * (2 * D * 4 + 4)
    assert sorted(untied.interventions) == [
        "layer0_first",
        "layer0_last",
        "layer2_first",
        "layer2_last",
    ]
    names = [n for n, p in tied.named_parameters() if p.requires_grad]
    assert names and all(n.startswith("interventions.") for n in names)
    assert tied.accepts_prompt_mask and tied.config is tied.base.config


def test_orthonormal_after_training_and_base_unchanged():
    model = kick(loreft(tiny(), rank=4, positions="f3+l3", tied=False)).train()
    before = {k: v.clone() for k, v in model.base.state_dict().items()}
    R0 = {k: iv.R.detach().clone() for k, iv in model.interventions.items()}
    other0 = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    # weight decay on: torch's own orthogonal parametrization loses R Rᵀ = I after one such step
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=5e-2, weight_decay=0.1)
    ids = torch.randint(2, V, (4, 12))
    for _ in range(5):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    for k, iv in model.interventions.items():
        R = iv.R.detach()
        torch.testing.assert_close(R @ R.T, torch.eye(4), atol=1e-5, rtol=0)
        assert not torch.allclose(R, R0[k])  # R did train
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert not torch.equal(p, other0[n]), n
    after = model.base.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.base.parameters())


def test_unused_interventions_still_get_gradients():
    """A batch with no position to edit (1-token prompts) keeps every parameter in the graph."""
    model = loreft(tiny(), rank=2, positions="f3+l3")
    ids = torch.randint(2, V, (2, 6))
    pm = torch.zeros_like(ids, dtype=torch.bool)
    pm[:, 0] = True
    model(input_ids=ids, labels=ids, prompt_mask=pm).loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------------- positions and arguments
def test_positions_parse_and_short_prompt_cap():
    assert parse_positions("f7+l7") == parse_positions("l7+f7")
    assert str(parse_positions(" f5 ")) == "f5"
    for bad in ["", "f0", "x3", "f3+f4", "first7", "f-1", "f3+"]:
        with pytest.raises(ValueError, match=r"method\.positions"):
            parse_positions(bad)
    pm = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [0, 1, 1, 1, 1]], dtype=torch.bool)
    m = position_masks(pm, parse_positions("f7+l7"))  # caps ⌊n/2⌋: 1, 0, 2
    assert m["first"].int().tolist() == [[1, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 1, 1, 0, 0]]
    assert m["last"].int().tolist() == [[0, 0, 1, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 1, 1]]
    single = position_masks(pm, parse_positions("l3"))  # a single group is capped at n
    assert single["last"].int().tolist() == [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 1, 1, 1]]


def test_argument_errors_name_the_key():
    with pytest.raises(ValueError, match=r"method\.layers"):
        loreft(tiny(), layers=[0, 3])
    with pytest.raises(ValueError, match=r"method\.layers"):
        loreft(tiny(), layers=[1, -2])  # -2 is layer 1 again
    with pytest.raises(ValueError, match=r"method\.layers"):
        loreft(tiny(), layers="first")
    with pytest.raises(ValueError, match=r"method\.positions"):
        direft(tiny(), positions="p7")
    with pytest.raises(ValueError, match=r"method\.rank"):
        loreft(tiny(), rank=D + 1)
    base = tiny()
    with pytest.raises(ValueError):
        loreft(base, rank=0)
    assert all(p.requires_grad for p in base.parameters())  # untouched by a failed build
    assert loreft(tiny(), layers="0, -1").layers == [0, 2]


# ---------------------------------------------------------------------- hooks on real models
@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2", "mistral"])
def test_remove_restores_base_outputs_exactly(arch):
    base = tiny(arch)
    ids = torch.randint(2, V, (2, 10))
    ref = base(input_ids=ids).logits
    model = kick(loreft(base, rank=4))
    assert not torch.allclose(model(input_ids=ids).logits, ref)
    with model.disabled():
        assert torch.equal(model(input_ids=ids).logits, ref)
    assert not torch.allclose(model(input_ids=ids).logits, ref)  # back after the block
    model.remove()
    assert torch.equal(model(input_ids=ids).logits, ref)
    assert torch.equal(base(input_ids=ids).logits, ref)
    with kick(direft(base, rank=2)) as model2:
        assert not torch.allclose(model2(input_ids=ids).logits, ref)
    assert torch.equal(base(input_ids=ids).logits, ref)


def test_only_prompt_positions_are_edited():
    base = tiny()
    ids = torch.randint(2, V, (2, 12))
    pm = torch.zeros_like(ids, dtype=torch.bool)
    pm[0, :8] = True  # prompt of 8 tokens, then the response
    pm[1, :5] = True
    ref_hidden: list[torch.Tensor] = []
    handle = base.model.layers[1].register_forward_hook(lambda m, a, o: ref_hidden.append(o))
    ref_logits = base(input_ids=ids).logits
    handle.remove()
    model = kick(loreft(base, rank=4, layers=[1], positions="f2+l2"))
    hidden = record(model, 1)
    out = model(input_ids=ids, prompt_mask=pm)
    edited = (hidden[-1] != ref_hidden[0]).any(-1)  # (B, T) positions changed at layer 1
    expected = torch.zeros_like(pm)
    expected[0, [0, 1, 6, 7]] = True
    expected[1, [0, 1, 3, 4]] = True
    assert torch.equal(edited, expected)
    assert not torch.allclose(out.logits, ref_logits)
    # causal: with suffix positions only, logits before the first edited token cannot change
    model.remove()
    out = kick(loreft(base, rank=4, layers=[1], positions="l2"))(input_ids=ids, prompt_mask=pm)
    for i, first_edit in enumerate([6, 3]):
        assert torch.equal(out.logits[i, :first_edit], ref_logits[i, :first_edit])
        assert not torch.allclose(out.logits[i, first_edit:], ref_logits[i, first_edit:])


def _pad(seqs: list[torch.Tensor], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), T, dtype=torch.long)
    am = torch.zeros(len(seqs), T, dtype=torch.long)
    for i, s in enumerate(seqs):
        sl = slice(0, len(s)) if side == "right" else slice(T - len(s), T)
        ids[i, sl], am[i, sl] = s, 1
    return ids, am


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("tied", [True, False])
def test_padded_batches_match_unpadded(arch, tied):
    model = kick(loreft(tiny(arch), rank=4, positions="f3+l3", tied=tied))
    torch.manual_seed(1)
    lens, prompt_lens = [9, 5, 13], [6, 2, 8]
    seqs = [torch.randint(2, V, (n,)) for n in lens]
    alone = []
    for s, p in zip(seqs, prompt_lens):
        pm = torch.arange(len(s))[None] < p
        alone.append(model(input_ids=s[None], prompt_mask=pm).logits[0])
    for side in ["right", "left"]:
        ids, am = _pad(seqs, side)
        pm = torch.zeros_like(ids, dtype=torch.bool)
        for i, (n, p) in enumerate(zip(lens, prompt_lens)):
            start = 0 if side == "right" else ids.shape[1] - n
            pm[i, start : start + p] = True
        pos = (am.cumsum(1) - 1).clamp(min=0)  # left padding needs real positions (any model)
        logits = model(input_ids=ids, attention_mask=am, prompt_mask=pm, position_ids=pos).logits
        for i, ref in enumerate(alone):
            torch.testing.assert_close(logits[i][am[i].bool()], ref, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------- generation
def _greedy_by_forward(model: ReftModel, prompt: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy decoding with full forwards: the prompt (only) edited at every step."""
    ids = prompt
    for _ in range(n):
        pm = torch.arange(ids.shape[1])[None] < prompt.shape[1]
        nxt = model(input_ids=ids, prompt_mask=pm).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
    return ids


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_generation_prefill_only(arch):
    base = tiny(arch)
    prompt = torch.randint(2, V, (1, 9))
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    base_out = base.generate(prompt, **kw)
    model = kick(loreft(base, rank=4, positions="f3+l3"), scale=4.0)
    calls = []
    for name, iv in model.interventions.items():
        iv.register_forward_hook(lambda m, a, o, name=name: calls.append((name, a[0].shape[0])))
    out = model.generate(prompt, **kw)
    # one call per intervention (the prefill), on the 6 edited prompt tokens
    assert sorted(calls) == sorted((k, 6) for k in model.interventions)
    assert torch.equal(out, model.generate(prompt, **kw))  # greedy is deterministic
    assert torch.equal(out, _greedy_by_forward(model, prompt, 6))  # KV cache ≡ full recompute
    assert torch.equal(out, model.generate(prompt, use_cache=False, **kw))
    assert not torch.equal(out, base_out)
    model.remove()
    assert torch.equal(model.generate(prompt, **kw), base_out)


def test_generation_sampled_and_left_padded_batch():
    model = kick(direft(tiny(), rank=4, positions="f2+l2"), scale=4.0)
    prompts = [torch.randint(2, V, (n,)) for n in (7, 4)]
    ids, am = _pad(prompts, "left")
    kw = dict(max_new_tokens=5, pad_token_id=0)
    batch = model.generate(ids, attention_mask=am, do_sample=False, **kw)
    for i, p in enumerate(prompts):
        single = model.generate(p[None], do_sample=False, **kw)
        assert torch.equal(batch[i, -5:], single[0, -5:])
    torch.manual_seed(3)
    s1 = model.generate(ids, attention_mask=am, do_sample=True, top_k=0, **kw)
    torch.manual_seed(3)
    s2 = model.generate(ids, attention_mask=am, do_sample=True, top_k=0, **kw)
    assert s1.shape == (2, ids.shape[1] + 5) and torch.equal(s1, s2)
    beams = model.generate(ids, attention_mask=am, num_beams=2, do_sample=False, **kw)
    assert beams.shape == (2, ids.shape[1] + 5)


# ---------------------------------------------------------------------- save / load
@pytest.mark.parametrize(("factory", "tied"), [(loreft, True), (direft, False)])
def test_save_load_round_trip(tmp_path, factory, tied):
    base = tiny()
    fresh = copy.deepcopy(base)
    model = kick(factory(base, rank=4, layers=[0, 2], positions="f3+l2", tied=tied))
    ids = torch.randint(2, V, (2, 10))
    ref = model(input_ids=ids).logits
    save_reft(model, tmp_path)
    cfg = json.loads((tmp_path / "reft_config.json").read_text())
    assert cfg["type"] == factory.__name__ and cfg["rank"] == 4 and cfg["layers"] == [0, 2]
    assert cfg["positions"] == "f3+l2" and cfg["tied"] is tied
    assert cfg["base_model_class"] == "LlamaForCausalLM" and cfg["hidden_size"] == D
    tensors = load_file(str(tmp_path / "interventions.safetensors"))
    if factory is loreft:
        torch.testing.assert_close(tensors["layer0.R"], model.interventions["layer0"].R.detach())
    loaded = load_reft(fresh, tmp_path)
    assert torch.equal(loaded(input_ids=ids).logits, ref)


def test_load_mismatch_raises_and_leaves_base_alone(tmp_path):
    model = kick(loreft(tiny(), rank=4, layers=[0, 1]))
    save_reft(model, tmp_path)
    fresh = tiny()
    ids = torch.randint(2, V, (1, 8))
    ref = fresh(input_ids=ids).logits
    weights = tmp_path / "interventions.safetensors"
    tensors = load_file(str(weights))

    bad = dict(tensors)
    bad["layer1.source.weight"] = torch.zeros(3, D)
    save_file(bad, str(weights))
    with pytest.raises(ValueError, match=r"layer1\.source\.weight"):
        load_reft(fresh, tmp_path)

    bad = {k: v for k, v in tensors.items() if k != "layer0.source.bias"}
    save_file(bad, str(weights))
    with pytest.raises(ValueError, match=r"missing.*layer0\.source\.bias"):
        load_reft(fresh, tmp_path)

    save_file({**tensors, "layer7.source.bias": torch.zeros(4)}, str(weights))
    with pytest.raises(ValueError, match=r"unexpected.*layer7\.source\.bias"):
        load_reft(fresh, tmp_path)

    bad = dict(tensors)
    bad["layer0.R"] = torch.flip(tensors["layer0.R"], dims=[0])
    save_file(bad, str(weights))
    with pytest.raises(ValueError, match=r"layer0\.R"):
        load_reft(fresh, tmp_path)

    save_file(tensors, str(weights))
    with pytest.raises(ValueError, match="hidden_size"):
        load_reft(tiny("gpt2").__class__(GPT2Config(n_embd=16, n_layer=2, n_head=2)), tmp_path)

    # after every failure the base is untouched: no hooks, still trainable
    assert torch.equal(fresh(input_ids=ids).logits, ref)
    assert all(p.requires_grad for p in fresh.parameters())
    assert torch.equal(
        load_reft(fresh, tmp_path)(input_ids=ids).logits, model(input_ids=ids).logits
    )


# ---------------------------------------------------------------------- dtypes
def test_bf16_base_with_float32_interventions():
    base = tiny().to(torch.bfloat16)
    ids = torch.randint(2, V, (2, 10))
    base_logits = base(input_ids=ids).logits
    model = kick(loreft(base, rank=4)).train()
    hidden = record(model, 0)
    out = model(input_ids=ids, labels=ids)
    assert out.logits.dtype == base_logits.dtype
    assert hidden[-1].dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.interventions.parameters())
    assert model.interventions["layer0"].R.dtype == torch.float32
    out.loss.backward()
    assert all(p.grad.dtype == torch.float32 for p in model.interventions.parameters())
    model.to(torch.bfloat16)  # e.g. Lightning "bf16-true": interventions stay float32
    assert all(p.dtype == torch.float32 for p in model.interventions.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16-mixed
        assert torch.isfinite(model(input_ids=ids, labels=ids).loss)


def test_train_eval_propagate():
    model = loreft(tiny(), rank=2, dropout=0.1)
    model.train()
    assert model.base.training and all(iv.training for iv in model.interventions.values())
    model.eval()
    assert not model.base.training and not any(m.training for m in model.modules())


def test_deepcopy_is_independent_and_double_attach_refused():
    model = kick(loreft(tiny(), rank=2, layers=[1]))
    ids = torch.randint(2, V, (1, 8))
    ref = model(input_ids=ids).logits
    twin = copy.deepcopy(model)
    assert torch.equal(twin(input_ids=ids).logits, ref)
    with torch.no_grad():
        twin.interventions["layer1"].b.add_(5.0)
    assert not torch.allclose(twin(input_ids=ids).logits, ref)
    twin.remove()
    assert torch.equal(model(input_ids=ids).logits, ref)  # the original kept its own hooks
    with pytest.raises(RuntimeError, match="already has interventions"):
        loreft(model.base)


class _Block(torch.nn.Module):
    def __init__(self, tuple_out: bool) -> None:
        super().__init__()
        self.lin, self.tuple_out = torch.nn.Linear(8, 8), tuple_out

    def forward(self, h):
        h = h + torch.tanh(self.lin(h))
        return (h, None) if self.tuple_out else h  # transformers 4.x layers returned tuples


class _Toy(torch.nn.Module):
    """A model with no known layer path: found as the ModuleList of num_hidden_layers."""

    def __init__(self, tuple_out: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.config = type("Cfg", (), {"hidden_size": 8, "num_hidden_layers": 2})()
        self.emb = torch.nn.Embedding(11, 8)
        self.blocks = torch.nn.ModuleList(_Block(tuple_out) for _ in range(2))

    def forward(self, input_ids, attention_mask=None, labels=None):
        h = self.emb(input_ids)
        for block in self.blocks:
            out = block(h)
            h = out[0] if isinstance(out, tuple) else out
        return h


def test_tuple_layer_outputs_and_generic_layer_search():
    ids = torch.randint(0, 11, (2, 6))
    outs = []
    for tuple_out in (False, True):
        torch.manual_seed(1)
        model = kick(loreft(_Toy(tuple_out), rank=2, positions="l2"))
        assert model.layer_path == "blocks"
        outs.append(model(input_ids=ids))
        with model.disabled():
            assert torch.equal(model(input_ids=ids)[:, :4], outs[-1][:, :4])
    torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)


def test_packed_rows_get_positions_per_document():
    # row: doc A (4 prompt + 2 response), doc B (6 prompt + 1 response), 2 pads
    lens, prompts = [6, 7], [4, 6]
    pos = torch.tensor([[0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 6, 0, 0]])
    pm = torch.zeros(1, 15, dtype=torch.bool)
    pm[0, 0:4] = pm[0, 6:12] = True
    m = position_masks(pm, parse_positions("f2+l2"), pos)
    assert m["first"].nonzero()[:, 1].tolist() == [0, 1, 6, 7]
    assert m["last"].nonzero()[:, 1].tolist() == [2, 3, 10, 11]

    model = kick(loreft(tiny(), rank=4, positions="f2+l2", tied=False))
    torch.manual_seed(2)
    docs = [torch.randint(2, V, (n,)) for n in lens]
    ids = torch.cat([*docs, torch.zeros(2, dtype=torch.long)])[None]
    seg = torch.tensor([[0] * 6 + [1] * 7 + [2, 3]])
    allowed = (seg[:, :, None] == seg[:, None, :]) & torch.ones(15, 15, dtype=torch.bool).tril()
    mask4d = torch.zeros(1, 1, 15, 15).masked_fill(
        ~allowed[:, None], torch.finfo(torch.float32).min
    )
    packed = model(input_ids=ids, attention_mask=mask4d, position_ids=pos, prompt_mask=pm).logits
    start = 0
    for doc, p in zip(docs, prompts):
        alone = model(input_ids=doc[None], prompt_mask=torch.arange(len(doc))[None] < p).logits
        torch.testing.assert_close(
            packed[0, start : start + len(doc)], alone[0], atol=1e-5, rtol=1e-5
        )
        start += len(doc)
