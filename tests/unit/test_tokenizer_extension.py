"""Tokenizer extension with domain tokens: mining, adding, and the new embedding rows."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from tests.conftest import _sentences

from fmlab.config import ConfigError, compose_config, validate_config
from fmlab.continual import init_tokenizer_factory
from fmlab.data.tokenizer import bpe, tokenizer_fingerprint
from fmlab.data.tokenizer_extension import add_tokens, extension_factory, mine_tokens
from fmlab.models import llama
from fmlab.models.embeddings import grow_embeddings, subtoken_ids

DOMAIN = [
    f"the kubernetes cluster reads tokens. {'the kubeflow model packs blocks. ' * (i % 3)}"
    for i in range(40)
] + ["a zymurgy note."]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    docs = _sentences(200, seed=3)
    return bpe(lambda: iter(docs), "ext-test", tmp_path_factory.mktemp("tok"), vocab_size=300)


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_mining_ranks_frequent_words_the_base_splits_into_many_pieces(base):
    mined = mine_tokens(DOMAIN, base, n=5, min_pieces=3, min_count=5)
    assert mined[0] == " kubernetes"  # 40 occurrences x many pieces: the most tokens saved
    assert " kubeflow" in mined
    assert " zymurgy" not in mined  # once: below min_count
    assert not {" the", " tokens", " reads"} & set(mined)  # already one or two base tokens
    assert mine_tokens(DOMAIN, base, n=0) == []


def test_added_tokens_encode_as_one_token_and_decode_to_the_same_text(base):
    tok = add_tokens(base, [" kubernetes", " kubernetes", " the", "<gene>"])
    assert len(tok) == len(base) + 2  # duplicate and existing token skipped
    assert tok.get_vocab() | base.get_vocab() == tok.get_vocab()  # old ids unchanged
    text = "the kubernetes cluster reads <gene> tokens."
    ids = _ids(tok, text)
    assert tok.convert_ids_to_tokens(len(base)) in tok.convert_ids_to_tokens(ids)
    assert len(ids) < len(_ids(base, text))
    assert tok.decode(ids) == base.decode(_ids(base, text)) == text
    assert _ids(tok, " kubernetes") == [len(base)]
    assert tokenizer_fingerprint(tok) != tokenizer_fingerprint(base)  # a copy: base untouched
    assert _ids(base, " kubernetes") != [len(base)]
    with pytest.raises(ValueError, match="extend_tokenizer.tokens: empty"):
        add_tokens(base, [""])


def test_the_factory_mines_from_the_training_texts_and_is_described_by_its_settings(base):
    factory = extension_factory(base, tokens=["<gene>"], mine=2, min_count=5)
    tok = factory(texts=lambda: iter(DOMAIN), fingerprint="x", cache_dir=None)
    added = tok.convert_ids_to_tokens(list(range(len(base), len(tok))))
    assert added == ["<gene>", " kubernetes", " kubeflow"]
    other = extension_factory(base, tokens=["<gene>"], mine=3)
    assert factory.keywords != other.keywords  # cached data is keyed by these


def _weights(model):
    return model.get_input_embeddings().weight, model.get_output_embeddings().weight


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("init", ["mean", "subtokens"])
def test_new_rows_are_the_mean_or_the_subtoken_mean_and_old_rows_stay(base, tied, init):
    tok = add_tokens(base, [" kubernetes", "<gene>"])
    torch.manual_seed(0)
    model = llama(vocab_size=len(base), max_position_embeddings=32, tie_word_embeddings=tied)
    emb0, head0 = (w.detach().clone() for w in _weights(model))
    added = grow_embeddings(model, base, tok, init)
    assert added == [" kubernetes", "<gene>"]
    emb, head = _weights(model)
    n = len(base)
    assert emb.shape[0] == len(tok) and model.config.vocab_size == len(tok)
    assert (emb.data_ptr() == head.data_ptr()) is tied
    pieces = subtoken_ids(base, tok)
    for before, after in ((emb0, emb), (head0, head)):
        assert torch.equal(after[:n], before)
        for k, word in enumerate(added):
            want = before[pieces[word]].mean(0) if init == "subtokens" else before.mean(0)
            assert torch.equal(after[n + k], want)
    if init == "subtokens":  # different words, different rows
        assert not torch.equal(emb[n], emb[n + 1])
    logits = model(torch.tensor([_ids(tok, "the kubernetes <gene>")])).logits
    assert logits.shape[-1] == len(tok) and torch.isfinite(logits).all()


def test_a_tokenizer_that_is_not_the_base_plus_tokens_is_refused(base, tmp_path):
    other = bpe(lambda: iter(DOMAIN), "ext-other", tmp_path, vocab_size=300)
    model = llama(vocab_size=len(base), max_position_embeddings=32)
    with pytest.raises(ValueError, match="not the base tokenizer with tokens appended"):
        grow_embeddings(model, base, add_tokens(other, ["<gene>"]))
    with pytest.raises(ValueError, match="extend_tokenizer.init='zero'"):
        grow_embeddings(model, base, add_tokens(base, ["<gene>"]), "zero")  # type: ignore[arg-type]


def test_config_switch_is_validated_and_needs_init_from(tmp_path):
    cfg = compose_config("train", ["extend_tokenizer.mine=8"], output_dir=tmp_path)
    validate_config(cfg)
    with pytest.raises(ConfigError, match="extend_tokenizer: .*needs init_from"):
        init_tokenizer_factory(None, cfg.extend_tokenizer)
    assert init_tokenizer_factory(None, OmegaConf.create({"tokens": [], "mine": 0})) is None
    bad = compose_config(
        "train",
        ["extend_tokenizer.init=zero", "extend_tokenizer.min_pieces=1"],
        output_dir=tmp_path,
    )
    with pytest.raises(ConfigError) as err:
        validate_config(bad)
    assert "extend_tokenizer.init" in str(err.value) and "extend_tokenizer.min_pieces" in str(
        err.value
    )
