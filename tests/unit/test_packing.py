import numpy as np
import pytest

from fmlab.data.packing import pack_documents, token_dtype


def test_pack_concatenates_with_eos_and_drops_tail():
    blocks = pack_documents([[1, 2, 3], [4, 5], [6]], eos_id=0, block_size=3)
    # stream: 1 2 3 0 4 5 0 6 0  -> 3 full blocks, nothing dropped
    assert blocks.tolist() == [[1, 2, 3], [0, 4, 5], [0, 6, 0]]
    blocks = pack_documents([[1, 2, 3], [4, 5]], eos_id=0, block_size=4)
    # stream: 1 2 3 0 4 5 0 -> one block, tail of 3 dropped
    assert blocks.tolist() == [[1, 2, 3, 0]]


def test_pack_every_token_kept_in_order():
    rng = np.random.default_rng(0)
    docs = [rng.integers(1, 500, size=rng.integers(1, 50)).tolist() for _ in range(100)]
    blocks = pack_documents(docs, eos_id=0, block_size=16)
    stream = [t for d in docs for t in [*d, 0]]
    n = len(stream) // 16
    assert blocks.shape == (n, 16)
    assert blocks.reshape(-1).tolist() == stream[: n * 16]


def test_pack_empty_and_bad_block_size():
    assert pack_documents([], eos_id=0, block_size=8).shape == (0, 8)
    with pytest.raises(ValueError, match="block_size"):
        pack_documents([[1]], eos_id=0, block_size=0)


def test_token_dtype():
    assert token_dtype(4096) == np.uint16
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32
