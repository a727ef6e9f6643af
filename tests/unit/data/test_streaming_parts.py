"""Streaming data without a server: option translation, cache budgets, chunk parts and the
part-by-part packing the Spark engine uses."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from fmlab.config import ConfigError
from fmlab.data.packing import BlockPacker
from fmlab.data.streaming.cache import SplitSize, cache_budgets, parse_size
from fmlab.data.streaming.storage import litdata_options


def test_fsspec_storage_options_become_boto3_client_options():
    client, session = litdata_options(
        {
            "endpoint_url": "https://s3.example.org",
            "key": "AKIA",
            "secret": "s3cr3t",
            "token": "tok",
            "client_kwargs": {"region_name": "eu-west-1"},
            "profile": "research",
        }
    )
    assert client == {
        "endpoint_url": "https://s3.example.org",
        "aws_access_key_id": "AKIA",
        "aws_secret_access_key": "s3cr3t",
        "aws_session_token": "tok",
        "region_name": "eu-west-1",
    }
    assert session == {"profile_name": "research"}
    assert litdata_options(None) == (None, None)  # the AWS environment / ~/.aws
    with pytest.raises(ConfigError, match="storage_options.requester_pays: not supported"):
        litdata_options({"requester_pays": True})


def _index(chunks: int, chunk_bytes: int) -> dict:
    return {
        "chunks": [
            {"chunk_bytes": chunk_bytes, "chunk_size": 10, "filename": f"chunk-0-{i}.bin"}
            for i in range(chunks)
        ],
        "config": {"data_format": ["no_header_numpy:5"]},
    }


def test_cache_budgets_keep_the_directory_under_the_limit():
    sizes = {
        "train": SplitSize(_index(200, 10_000)),
        "validation": SplitSize(_index(3, 10_000)),
        "test": SplitSize(_index(3, 10_000)),
    }
    limit = parse_size("400KB")
    one = cache_budgets(limit, sizes)
    # evaluation fits in a quarter of the limit: cached whole (a budget it never reaches)
    assert one["validation"] > sizes["validation"].bytes and one["test"] > sizes["test"].bytes
    evals = sizes["validation"].whole() + sizes["test"].whole()
    train = sizes["train"]
    assert one["train"] == int((limit - evals - train.index_bytes - 4 * train.largest) / 1.05)
    assert cache_budgets(limit, sizes, readers=4)["train"] < one["train"]  # room per reader
    # evaluation too large for a quarter: streamed, an eighth of the limit each
    big = {**sizes, "validation": SplitSize(_index(12, 10_000))}
    streamed = cache_budgets(parse_size("600KB"), big)
    assert streamed["validation"] < big["validation"].bytes
    with pytest.raises(ConfigError, match=r"write\.chunk_bytes"):
        cache_budgets(parse_size("60KB"), sizes)
    with pytest.raises(ConfigError, match="data.cache_limit: expected a size"):
        parse_size("lots")


def test_chunk_parts_merge_into_one_split_in_part_order(tmp_path):
    pytest.importorskip("litdata")
    from litdata import StreamingDataset

    from fmlab.data.streaming.chunks import merge_indexes, save_index, write_chunks

    rng = np.random.default_rng(0)
    rows = [{"input_ids": rng.integers(0, 60_000, 16).astype(np.uint16)} for _ in range(50)]
    parts = [
        write_chunks(rows[a:b], tmp_path, chunk_bytes=300, part=i)
        for i, (a, b) in enumerate([(0, 20), (20, 20), (20, 50)])
    ]
    assert parts[1] == {}  # a part without rows writes nothing
    save_index(merge_indexes(parts), tmp_path)
    read = [r["input_ids"] for r in StreamingDataset(str(tmp_path))]
    assert len(read) == 50 and all(np.array_equal(a, b["input_ids"]) for a, b in zip(read, rows))
    assert read[0].dtype == np.uint16


@pytest.mark.parametrize("document_mask", [False, True])
def test_packing_part_by_part_gives_the_single_stream_blocks(document_mask):
    """Parts of any size (some shorter than a block) packed with the carries computed from
    their tails give exactly the blocks of the whole stream, masks and positions included."""
    from fmlab.data.streaming.spark import _suffix, carries, pack_part

    rng = np.random.default_rng(1)
    block = 16
    docs = [rng.integers(3, 500, int(rng.integers(1, 40))).astype(np.uint16) for _ in range(60)]
    cuts = [0, 1, 2, 9, 10, 30, 31, 60]  # parts of 1, 1, 7, 1, 20, 1 and 29 documents
    parts = []
    for a, b in itertools.pairwise(cuts):
        lens = np.array([len(d) for d in docs[a:b]])
        parts.append((np.concatenate(docs[a:b]), lens))
    whole = BlockPacker(block, np.uint16, document_mask)
    want = whole.add(*(np.concatenate(x) for x in zip(*parts)))
    tails = []
    for tokens, lens in parts:
        tail, pieces = _suffix(tokens, lens, min(len(tokens), block - 1))
        tails.append({"n": len(tokens), "tokens": tail, "lens": pieces})
    got = [
        row
        for part, carry in zip(parts, carries(tails, block))
        for row in pack_part(carry, [part], block, np.uint16, document_mask)
    ]
    assert len(got) == len(want["input_ids"]) == sum(len(t) for t, _ in parts) // block
    for i, row in enumerate(got):
        for key, value in row.items():
            assert np.array_equal(value, want[key][i]), (i, key)
