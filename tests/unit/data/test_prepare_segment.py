"""Segment: packing with EOS (+ per-document ids), eval windows, SFT masks with packing, labels."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from tests.unit.data.prep_helpers import random_doc

from fmlab.data.packing import BlockPacker, chunk_document, pack_documents
from fmlab.data.pipeline import SFT, Classify, Pack
from fmlab.data.pipeline.engine import Runner, read_table
from fmlab.data.pipeline.records import record_schema
from fmlab.data.sft import IGNORE_INDEX, encode_sft, pack_sft
from fmlab.data.tokenizer import bpe


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    docs = [random_doc(i, 60) for i in range(200)] + ["Q: what? A: yes. " * 20]
    return bpe(lambda: iter(docs), "segment-tests", tmp_path_factory.mktemp("tok"), vocab_size=400)


def _records(kind, rows, splits):
    n = len(splits)
    base = {
        "id": [f"r{i}" for i in range(n)],
        "source": ["s"] * n,
        "domain": ["a", "b"] * (n // 2) + ["a"] * (n % 2),
        "date": [None] * n,
    }
    table = pa.Table.from_pydict({**base, **rows}, schema=record_schema(kind))
    return table.append_column("split", pa.array(splits))


def _run(stage, table, tmp_path, tok, kind="text", num_proc=1):
    tmp_path.mkdir(parents=True, exist_ok=True)
    runner = Runner(tmp_path / "work", num_proc=num_proc, batch_size=7, progress=False)
    stats = stage.run(runner, table, tmp_path, kind, tok)
    return stats, {s: read_table(tmp_path / f"{s}.arrow") for s in ("train", "validation", "test")}


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_pack_matches_reference_packing_per_split(tmp_path, tok):
    texts = [random_doc(i, 30 + 7 * i) for i in range(30)]
    splits = ["train", "validation", "train", "test", "train"] * 6
    stats, out = _run(
        Pack(block_size=32), _records("text", {"text": texts}, splits), tmp_path, tok, num_proc=2
    )
    eos = tok.eos_token_id
    for split in ("train", "validation", "test"):
        docs = [_ids(tok, t) for t, s in zip(texts, splits) if s == split]
        expected = pack_documents(docs, eos, 32)
        got = np.array(out[split].column("input_ids").to_pylist())
        assert np.array_equal(got.reshape(-1, 32), expected), split
        info = stats["splits"][split]
        assert info["documents"] == len(docs)
        assert info["tokens"] == sum(len(d) + 1 for d in docs)
        assert info["rows"] == len(expected)
        assert info["dropped_tail_tokens"] == info["tokens"] - expected.size
    dom = stats["domains"]["train"]
    assert dom["a"]["documents"] + dom["b"]["documents"] == splits.count("train")
    lengths = np.load(tmp_path / "lengths.npz")
    assert lengths["train/tokens"].sum() == stats["splits"]["train"]["tokens"]


def test_block_packer_streams_like_pack_documents_with_document_ids():
    rng = np.random.default_rng(0)
    docs = [rng.integers(2, 50, size=rng.integers(1, 20)).tolist() for _ in range(60)]
    packer, blocks, seqs, pos = BlockPacker(8, np.uint16, document_ids=True), [], [], []
    for start in range(0, 60, 7):  # documents arrive in uneven chunks
        chunk = docs[start : start + 7]
        stream = np.concatenate([[*d, 0] for d in chunk])
        out = packer.add(stream, np.array([len(d) + 1 for d in chunk]))
        if out:
            blocks.append(out["input_ids"])
            seqs.append(out["seq_ids"])
            pos.append(out["position_ids"])
    blocks, seqs, pos = np.concatenate(blocks), np.concatenate(seqs), np.concatenate(pos)
    assert np.array_equal(blocks, pack_documents(docs, 0, 8))
    doc_of_token = np.concatenate([[i] * (len(d) + 1) for i, d in enumerate(docs)])[: blocks.size]
    doc_of_token = doc_of_token.reshape(-1, 8)
    assert np.array_equal(seqs, doc_of_token - doc_of_token[:, :1])
    for r in range(len(blocks)):  # positions restart at each document (and at each block)
        for t in range(8):
            same = [u for u in range(t + 1) if seqs[r, u] == seqs[r, t]]
            assert pos[r, t] == len(same) - 1
    assert packer.tail == sum(len(d) + 1 for d in docs) - blocks.size


def test_eval_windows_score_every_token_once():
    ids = np.arange(1, 24)
    w = chunk_document(ids, block_size=8, stride=5, pad_id=0)
    labels = w["labels"]
    scored = labels[labels != IGNORE_INDEX]
    assert sorted(scored.tolist()) == ids.tolist()  # each token labelled once
    # every window but the first has 3 tokens of context (block - stride) before its targets
    assert (labels[1:, :3] == IGNORE_INDEX).all()
    assert len(labels) == 4 and w["attention_mask"].all()  # windows at 0, 5, 10, 15: no padding
    short = chunk_document(np.arange(1, 4), block_size=8, stride=5, pad_id=0)
    assert short["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0, 0, 0]]
    assert short["labels"].tolist() == [[1, 2, 3] + [IGNORE_INDEX] * 5]


def test_pack_document_mask_and_eval_stride_columns(tmp_path, tok):
    texts = [random_doc(i, 80) for i in range(12)]
    splits = ["train", "test"] * 6
    stage = Pack(block_size=16, document_mask=True, eval_stride=12)
    _, out = _run(stage, _records("text", {"text": texts}, splits), tmp_path, tok)
    assert out["train"].column_names == ["input_ids", "seq_ids", "position_ids"]
    assert out["test"].column_names == ["input_ids", "labels", "attention_mask"]
    labels = np.array(out["test"].column("labels").to_pylist())
    n_test_tokens = sum(len(_ids(tok, t)) + 1 for t, s in zip(texts, splits) if s == "test")
    # every test token is labelled exactly once (a document's first label is never used: the
    # model shifts labels by one)
    assert (labels != IGNORE_INDEX).sum() == n_test_tokens


def test_sft_masks_truncation_and_packing(tmp_path, tok):
    prompts = ["Q: " + random_doc(i, 6) for i in range(10)] + ["Q: " + random_doc(99, 200)]
    responses = [random_doc(100 + i, 5) for i in range(10)] + ["lost"]
    splits = ["train"] * 9 + ["test", "train"]
    table = _records("sft", {"prompt": prompts, "response": responses}, splits)
    fmt = {"template": "### {prompt}\n### Answer:"}
    stats, out = _run(SFT(max_length=128, pack=True, **fmt), table, tmp_path, tok, "sft")
    # the long prompt leaves no room for the response: dropped and counted (no NaN loss)
    assert stats["removed"] == {"truncated_away": 1}
    assert stats["splits"]["train"]["truncated_away"] == 1
    expected = [
        encode_sft(p, r, tok, max_length=128, **fmt) for p, r in zip(prompts[:9], responses[:9])
    ]
    ref = pack_sft(expected, 128, tok.pad_token_id)
    got = {k: np.array(out["train"].column(k).to_pylist()) for k in ref}
    for key in ref:
        assert np.array_equal(got[key], ref[key]), key
    # prompt tokens never carry a label; each response token (and EOS) does, in the packed rows
    n_targets = sum(sum(x != IGNORE_INDEX for x in e["labels"]) for e in expected)
    assert (got["labels"] != IGNORE_INDEX).sum() == n_targets
    assert set(got["seq_ids"][got["labels"] != IGNORE_INDEX].tolist()) <= set(range(9))
    # unpacked: one row per example, same labels
    _, plain = _run(SFT(max_length=128, **fmt), table, tmp_path / "plain", tok, "sft")
    assert plain["train"].column("labels").to_pylist() == [e["labels"] for e in expected]


def test_classify_keeps_labels(tmp_path, tok):
    texts = [random_doc(i, 300) for i in range(4)]
    table = _records(
        "classification", {"text": texts, "label": ["pos", "neg", "neg", "pos"]}, ["train"] * 4
    )
    stats, out = _run(Classify(max_length=20), table, tmp_path, tok, "classification")
    rows = out["train"].to_pylist()
    assert [r["label"] for r in rows] == ["pos", "neg", "neg", "pos"]
    assert all(len(r["input_ids"]) == 20 and r["input_ids"][-1] == tok.eos_token_id for r in rows)
    assert stats["labels"]["train"] == {"neg": 2, "pos": 2}
