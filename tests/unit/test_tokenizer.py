from fmlab.data.tokenizer import EOS, PAD, bpe, pretrained, tokenizer_fingerprint


def test_bpe_trains_once_and_roundtrips(tmp_path, corpus_docs):
    calls = []

    def texts():
        calls.append(1)
        return iter(corpus_docs)

    tok = bpe(texts, "fp-1", tmp_path, vocab_size=400)
    assert len(tok) <= 400 and tok.eos_token == EOS and tok.pad_token == PAD
    text = "the model reads tokens. ünïcödé ✓"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text  # byte-level: lossless for any text
    again = bpe(texts, "fp-1", tmp_path, vocab_size=400)
    assert len(calls) == 1  # cached
    assert tokenizer_fingerprint(again) == tokenizer_fingerprint(tok)
    other = bpe(texts, "fp-1", tmp_path, vocab_size=300)
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(tok)


def test_pretrained_loads_local_dir_and_sets_pad(tmp_path, corpus_docs):
    tok = bpe(lambda: iter(corpus_docs), "fp-2", tmp_path, vocab_size=300)
    tok.pad_token = None
    tok.save_pretrained(str(tmp_path / "saved"))
    loaded = pretrained(name_or_path=str(tmp_path / "saved"))
    assert loaded.pad_token == loaded.eos_token == EOS
