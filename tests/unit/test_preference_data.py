"""Preference pairs: encoding and truncation rules, batch layouts, references, bad rows, files."""

from __future__ import annotations

import copy
import json
import random

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from fmlab.config import ConfigError
from fmlab.data import PreferenceDataModule
from fmlab.data.preference_encode import PairStats, collate_pairs, encode_pair
from fmlab.data.sft import IGNORE_INDEX, encode_prompt
from fmlab.data.tokenizer import bpe
from fmlab.methods import lora, loreft
from fmlab.modules import PreferenceModule
from fmlab.modules.preference_losses import sequence_logps
from fmlab.tasks import TASKS, generate_task
from fmlab.tasks.builtin import wrong_answer


@pytest.fixture(scope="module")
def tok(tmp_path_factory, corpus_docs):
    return bpe(
        lambda: iter(corpus_docs), "pref-test", tmp_path_factory.mktemp("tok"), vocab_size=300
    )


def _tiny(vocab: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(cfg).eval()


def test_wrong_answers_are_plausible_and_never_right():
    for name in TASKS:
        rng = random.Random(0)
        for rec in generate_task(name, n_train=300, n_val=10, n_test=10, seed=3)["train"]:
            wrong = wrong_answer(name, rec, rng)
            assert wrong.split() != rec["response"].split()
            if name == "arithmetic":  # off by 1, 2 or 10
                right, off = int(rec["response"].replace(" ", "")), int(wrong.replace(" ", ""))
                assert abs(right - off) in (1, 2, 10)
            else:  # the same words (or one word) rearranged or replaced
                assert len(wrong.split()) == len(rec["response"].split())


def test_pair_shares_prompt_and_appends_eos(tok):
    pair = encode_pair("the model reads", " tokens.", " blocks.", tok, max_length=64)
    assert pair["prompt"] == encode_prompt("the model reads", tok)
    assert pair["chosen"][-1] == pair["rejected"][-1] == tok.eos_token_id
    batch = collate_pairs([pair], pad_id=tok.pad_token_id)
    n = len(pair["prompt"])
    assert torch.equal(batch["input_ids"][0, :n], batch["input_ids"][1, :n])  # same prompt ids
    assert (batch["labels"][:, :n] == IGNORE_INDEX).all() and batch["prompt_mask"][:, :n].all()


def test_truncation_rules_are_applied_and_counted(tok):
    prompt, long = "the model reads tokens " * 6, " the optimizer checks gradients" * 4
    n_prompt = len(encode_prompt(prompt, tok))
    stats = PairStats()
    # the prompt gives up its start, down to max_prompt_length; then responses lose their end
    pair = encode_pair(prompt, long, " x", tok, max_length=20, max_prompt_length=8, stats=stats)
    assert n_prompt > 8 and pair["prompt"] == encode_prompt(prompt, tok)[-8:]
    assert len(pair["chosen"]) == 12 and pair["chosen"][-1] != tok.eos_token_id
    assert pair["rejected"][-1] == tok.eos_token_id  # short: untouched
    assert (stats.prompt_truncated, stats.response_truncated, stats.pairs) == (1, 1, 1)
    # a long prompt with short responses is cut only as far as needed
    fits = encode_pair(prompt, " a", " b", tok, max_length=n_prompt + 2, max_prompt_length=4)
    assert fits["prompt"] == encode_prompt(prompt, tok)[-(n_prompt - 1) :]
    # drop: nothing that does not fit whole; identical after truncation: dropped
    assert (
        encode_pair(prompt, long, " x", tok, max_length=20, truncation="drop", stats=stats) is None
    )
    same = encode_pair("a", long + " red", long + " blue", tok, max_length=6, stats=stats)
    assert same is None
    assert dict(stats.dropped) == {"too_long": 1, "identical_after_truncation": 1}


@pytest.fixture(scope="module")
def pairs(tok):
    rng = random.Random(0)
    recs = generate_task("reverse", n_train=6, n_val=1, n_test=1, seed=0)["train"]
    out = []
    for i, r in enumerate(recs):
        pair = encode_pair(r["prompt"], r["response"], wrong_answer("reverse", r, rng), tok,
                           max_length=40, template="Q: {prompt} A:")  # fmt: skip
        out.append({**pair, "index": i})
    return out


def _logps(model, batch):
    kwargs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    if getattr(model, "accepts_prompt_mask", False):
        kwargs["prompt_mask"] = batch["prompt_mask"]
    with torch.no_grad():
        logits = model(**kwargs).logits
    return sequence_logps(logits, batch["labels"], batch["seq_index"], 2 * len(batch["pair_index"]))


@pytest.mark.parametrize("method", ["base", "loreft"])
def test_padding_side_and_packing_keep_per_example_logps(tok, pairs, method):
    model = _tiny(len(tok))
    if method == "loreft":
        model = loreft(model, rank=2, positions="f2+l2").eval()
    layouts = {
        "right": collate_pairs(pairs, tok.pad_token_id, "right"),
        "left": collate_pairs(pairs, tok.pad_token_id, "left"),
        "packed": collate_pairs(pairs, tok.pad_token_id, pack=True, block_size=80),
    }
    assert layouts["packed"]["input_ids"].shape[0] < 2 * len(pairs)  # really packed
    results = {name: _logps(model, batch) for name, batch in layouts.items()}
    ref, ref_tokens = results["right"]
    for name, (logps, tokens) in results.items():
        torch.testing.assert_close(logps, ref, atol=1e-5, rtol=0, msg=name)
        assert torch.equal(tokens, ref_tokens)
    one = [_logps(model, collate_pairs([p], tok.pad_token_id))[0] for p in pairs]  # unbatched
    torch.testing.assert_close(
        torch.stack([o[0] for o in one]), ref[: len(pairs)], atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("method", ["lora", "loreft"])
def test_reference_is_the_base_with_the_adapter_disabled(tok, pairs, method):
    base = _tiny(len(tok))
    plain = copy.deepcopy(base)
    if method == "lora":
        model = lora(base, r=4, dropout=0.0)
        for name, p in model.named_parameters():
            if "lora_B" in name:  # B starts at zero (a no-op adapter): make it act
                torch.nn.init.normal_(p, std=0.5)
    else:
        model = loreft(base, rank=2, positions="f2+l2")
    module = PreferenceModule(model, optimizer=None)
    module.setup("fit")
    assert "_reference" not in module.__dict__  # no second copy of the weights
    batch = collate_pairs(pairs, tok.pad_token_id)
    n = 2 * len(pairs)
    ref_logps, _ = module._reference_pass(batch, n)
    plain_logps, _ = _logps(plain, batch)
    policy_logps, _ = _logps(model.eval(), batch)
    torch.testing.assert_close(ref_logps, plain_logps, atol=1e-6, rtol=0)
    assert (policy_logps - plain_logps).abs().max() > 1e-3  # the adapter does act


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _rows(n, start=0):
    return [
        {"q": f"question {i} about the model", "good": f" yes {i}", "bad": f" no {i}"}
        for i in range(start, start + n)
    ]


def _dm(tok, sources, **kw):
    fields = {"prompt_field": "q", "chosen_field": "good", "rejected_field": "bad"}
    dm = PreferenceDataModule(sources=sources, batch_size=2, **{**fields, **kw})
    dm.prepare(lambda **_: tok)
    return dm


def test_bad_rows_are_counted_with_their_place_or_refused(tok, tmp_path):
    rows = _rows(40)
    rows[3]["good"] = "  "  # empty chosen
    rows[7]["bad"] = rows[7]["good"]  # identical
    del rows[11]["bad"]  # missing field
    src = _write(tmp_path / "pairs.jsonl", rows)
    dm = _dm(tok, [str(src)], val_fraction=0.25, test_fraction=0.25)
    read = dm.stats["read"][0]
    assert read["bad"] == {"empty_text": 1, "identical_responses": 1, "missing_field": 1}
    assert read["bad_examples"]["identical_responses"][0]["where"] == f"{src}:8"
    assert sum(len(dm.pairs[s]) for s in dm.pairs) == 37
    with pytest.raises(ConfigError, match=rf"{src}:4: empty_text"):
        _dm(tok, [str(src)], on_bad_row="error")


def test_declared_splits_are_used_as_given(tok, tmp_path):
    train = _write(tmp_path / "train.jsonl", _rows(12))
    dev = _write(tmp_path / "dev.jsonl", _rows(3, 100))
    test = _write(tmp_path / "test.csv", [])
    test.write_text("q,good,bad\n" + "".join(f"t{i},' a{i}',' b{i}'\n" for i in range(4)))
    declared = [
        {"path": str(train), "split": "train"},
        {"path": str(dev), "split": "validation"},
        {"path": str(test), "split": "test"},
    ]
    dm = _dm(tok, declared)
    assert {s: len(p) for s, p in dm.pairs.items()} == {"train": 12, "validation": 3, "test": 4}
    assert [r["split"] for r in dm.stats["read"]] == ["train", "validation", "test"]
    none_feeds = "no source feeds the test split: every source declares its split"
    with pytest.raises(ConfigError, match=none_feeds):
        _dm(
            tok, [{"path": str(train), "split": "train"}, {"path": str(dev), "split": "validation"}]
        )
    mixed = _dm(tok, [{"path": str(dev), "split": "test"}, str(train)], val_fraction=0.3)
    assert len(mixed.pairs["test"]) >= 3 and len(mixed.pairs["train"]) < 12  # train hash-split


def test_prepare_recipe_then_train_data_from_it(tmp_path):
    """fmlab-prepare prepare/recipe=preference: bad rows counted with their place in the card,
    truncation counted; the output is what data=preference_files data.path=... reads."""
    from fmlab.config import compose_config
    from fmlab.prepare import prepare

    rows = _rows(60)
    rows[5]["bad"] = rows[5]["good"]
    rows[9]["q"] = "question 9 " + "about the model " * 40  # its prompt is truncated
    src = _write(tmp_path / "pairs.jsonl", rows)
    out = tmp_path / "prepared"
    overrides = [
        "prepare/recipe=preference",
        f"sources=[{{path: '{src}', prompt_field: q, chosen_field: good, rejected_field: bad}}]",
        f"output_dir={out}",
        "tokenizer.vocab_size=300",
        "segment.max_length=48",
        "split.val_fraction=0.2",
        "split.test_fraction=0.2",
        "dedup.enabled=false",
        "decontaminate.enabled=false",
        "progress=false",
        "print_config=false",
    ]
    card = prepare(compose_config("prepare", overrides, output_dir=tmp_path / "run"))
    assert card["segment"]["mode"] == "preference" and card["kind"] == "preference"
    assert card["stages"]["structure"]["removed"] == {"identical_responses": 1}
    assert card["stages"]["structure"]["examples"]["identical_responses"][0]["where"].endswith(
        "pairs.jsonl:6"
    )
    splits = card["splits"]
    assert sum(splits[s]["rows"] for s in splits) == 59
    assert sum(splits[s]["prompt_truncated"] for s in splits) == 1
    dm = PreferenceDataModule(path=str(out), batch_size=4)
    tok = dm.prepare(None)
    assert {s: len(p) for s, p in dm.pairs.items()} == {s: splits[s]["rows"] for s in splits}
    assert dm.max_length == 48 and len(tok) == card["tokenizer"]["vocab_size"]
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 8 and batch["input_ids"].shape[1] <= 48


def test_full_model_reference_is_a_frozen_copy_only_when_live(tok):
    live = PreferenceModule(_tiny(len(tok)), optimizer=None, reference="live")
    live.setup("fit")
    copy_ = live.__dict__["_reference"]
    assert copy_ is not live.model and not any(p.requires_grad for p in copy_.parameters())
    pre = PreferenceModule(_tiny(len(tok)), optimizer=None, reference="precomputed")
    pre.setup("fit")
    assert "_reference" not in pre.__dict__  # no second copy of the weights
    with pytest.raises(ConfigError, match="reference=none"):
        PreferenceModule(_tiny(len(tok)), optimizer=None, loss="dpo", reference="none")
    with pytest.raises(ConfigError, match="reference_model"):  # a full export, no reference
        pre._check_reference()
