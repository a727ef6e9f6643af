"""Reading from and writing to S3 through s3fs, against a real local endpoint (moto's server)."""

from __future__ import annotations

import functools
import io
import json

import datasets
import pandas as pd
import pytest
from tests.s3 import moto_options
from tests.unit.data.prep_helpers import random_doc

from fmlab.data.pipeline import Dedup, Pack, Split, prepare_dataset
from fmlab.data.tokenizer import bpe

pytest.importorskip("moto.server")
s3fs = pytest.importorskip("s3fs")


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on a free loopback port, and the fsspec options to reach it."""
    with moto_options("corpus") as served:
        yield served


def test_prepare_reads_and_writes_s3(s3, tmp_path):
    fs, options = s3
    docs = [random_doc(i, 60) for i in range(90)]
    for part in range(2):
        lines = [json.dumps({"text": d}) for d in docs[part * 40 : (part + 1) * 40]]
        if part == 1:
            lines.insert(2, "{broken json")  # line 3 of part-1
        fs.pipe(f"corpus/raw/part-{part}.jsonl", ("\n".join(lines) + "\n").encode())
    buf = io.BytesIO()
    pd.DataFrame({"body": docs[80:]}).to_parquet(buf)
    fs.pipe("corpus/extra/more.parquet", buf.getvalue())

    kwargs = dict(
        dedup=Dedup(),
        split=Split(val_fraction=0.1, test_fraction=0.1),
        segment=Pack(block_size=32),
        tokenizer=functools.partial(bpe, vocab_size=300),
        work_dir=tmp_path / "work",
        cache_dir=tmp_path / "cache",
        progress=False,
        storage_options=options,
    )
    sources = [
        "s3://corpus/raw/*.jsonl",
        {"path": "s3://corpus/extra/more.parquet", "text_field": "body"},
    ]
    card = prepare_dataset(sources, "s3://corpus/prepared", **kwargs)

    assert card["stages"]["structure"]["in"] == 91 and card["stages"]["structure"]["out"] == 90
    bad = card["stages"]["structure"]["examples"]["unparsable"][0]
    assert bad["where"] == "s3://corpus/raw/part-1.jsonl:3"
    assert [s["source"] for s in card["sources"]] == [
        "s3://corpus/raw/*.jsonl",
        "s3://corpus/extra/more.parquet",
    ]
    assert fs.isfile("corpus/prepared/card.json") and fs.isfile("corpus/prepared/card.md")
    assert fs.isfile("corpus/prepared/tokenizer/tokenizer.json")
    dd = datasets.load_from_disk("s3://corpus/prepared", storage_options=options)
    assert len(dd["train"]) == card["splits"]["train"]["rows"] > 0

    again = prepare_dataset(sources, "s3://corpus/prepared", **kwargs)
    assert again["up_to_date"]  # the card on S3 says so: nothing is recomputed or uploaded
    fs.pipe("corpus/raw/part-2.jsonl", (json.dumps({"text": random_doc(500, 60)}) + "\n").encode())
    fs.invalidate_cache()
    grown = prepare_dataset(sources, "s3://corpus/prepared", **kwargs)
    assert not grown["up_to_date"] and grown["stages"]["structure"]["in"] == 92
