"""fmlab-prepare engine=spark (master local[2]) against the single-machine pipeline.

One corpus with every case the stages handle (a bad row, boilerplate lines, low-quality
documents, exact copies, near-duplicates including a chain where the order of decisions matters,
held-out and benchmark contamination), prepared by both engines with the same config: the
records of every split, in order, and the stage statistics must be equal. Then fmlab training
reads what the Spark engine wrote, and S3 in and out works in local mode without Hadoop's S3
connector. One SparkSession serves the module.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
from pathlib import Path

import pyarrow.dataset as pads
import pytest
from tests.s3 import moto_options
from tests.unit.data.prep_helpers import random_doc, write_jsonl

from fmlab.config import compose_config
from fmlab.data.pipeline import PrepareError, Structure
from fmlab.data.splits import SPLITS, split_of
from fmlab.prepare import prepare

pytestmark = pytest.mark.slow

VF = TF = 0.1
FOOTER = "Subscribe to our newsletter for the latest updates and offers"


def _need_spark() -> None:
    """Skip without Java/pyspark, except on CI (.ci/run installs Java): there it fails."""
    missing = []
    if shutil.which("java") is None:
        missing.append("java (a JRE 17)")
    try:
        import pyspark  # noqa: F401
    except ImportError:
        missing.append("pyspark (pip install 'fmlab[spark]')")
    if missing:
        message = f"Spark tests need {' and '.join(missing)}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; .ci/run installs Java, the dev extra installs pyspark")
        pytest.skip(message)


@pytest.fixture(scope="module")
def spark():
    """One local[2] session for the module, tuned for tiny inputs."""
    _need_spark()
    from pyspark.sql import SparkSession

    from fmlab.data.spark import SparkSettings

    before = os.environ.get("PYSPARK_PYTHON")
    os.environ["PYSPARK_PYTHON"] = sys.executable  # the workers must run this venv
    builder = (
        SparkSession.builder.master("local[2]")
        .appName("fmlab-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.default.parallelism", "2")
        .config("spark.driver.memory", "1g")
        # short jobs on tiny data: a JVM that compiles less (C1 JIT only, no whole-stage code
        # generation, no adaptive re-planning) used 40% less CPU here
        .config("spark.driver.extraJavaOptions", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")
        .config("spark.sql.codegen.wholeStage", "false")
        .config("spark.sql.adaptive.enabled", "false")
    )
    for key, value in SparkSettings().daemon_conf().items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
    if before is None:
        os.environ.pop("PYSPARK_PYTHON", None)
    else:
        os.environ["PYSPARK_PYTHON"] = before


def _changed(text: str, n: int, seed: int) -> str:
    words = text.split()
    for i in random.Random(seed).sample(range(len(words)), n):
        words[i] = "zzz" + words[i]
    return " ".join(words)


def _train_doc(prefix: str, seed: int) -> str:
    """``prefix`` + random words, chosen so that the document lands in train."""
    for s in range(seed, seed + 100):
        text = f"{prefix} {random_doc(s, 90)}".strip()
        if split_of(text, VF, TF) == "train":
            return text
    raise AssertionError("no seed puts the document in train")


def _write_corpus(root: Path) -> Path:
    docs = [random_doc(i, 120) for i in range(160)]
    rows = [
        {
            "body": d,
            "id": f"d{i}",
            "src": "news" if i % 3 == 0 else "web",
            "day": f"2024-01-{d_:02d}",
        }
        for i, (d, d_) in enumerate(zip(docs, [i % 28 + 1 for i in range(160)]))
    ]
    for row in rows[0:40:5]:  # a line in 8 documents: boilerplate at boilerplate_min_docs=5
        row["body"] += "\n" + FOOTER
    near = _changed(docs[30], 2, 1)
    b50 = _changed(docs[50], 1, 4)
    held = next(d for d in docs if split_of(d, VF, TF) == "test")
    bench = random_doc(7777, 30)
    extra = [
        ("exact-of-10", docs[10].upper().replace(".", " !")),  # same normalized words
        ("copy-of-20", docs[20]),
        ("near-of-30", near),
        ("copy-of-near-30", near),  # an exact copy of a near-duplicate
        ("near-of-40", _changed(docs[40], 1, 3)),
        ("B-near-of-50", b50),
        ("C-near-of-B", _changed(b50, 2, 5)),  # near B (removed) but not near d50: kept
        ("short", "too short to keep"),
        ("symbols", "#### ... $$$ %%% " * 30),
        ("contaminated", _train_doc(" ".join(held.split()[:40]), 5000)),
        ("has-benchmark", _train_doc(bench, 8000)),
    ]
    rows_b = [{"body": text, "id": i, "src": "web"} for i, text in extra]
    rows_b.insert(3, {"id": "no-text", "src": "web"})  # a bad row: b.jsonl line 4
    write_jsonl(root / "raw" / "a.jsonl", rows[:80])
    write_jsonl(root / "raw" / "b.jsonl", rows_b + rows[80:])
    write_jsonl(root / "bench.jsonl", [{"question": bench, "answer": "x"}])
    return root


def _overrides(root: Path) -> list[str]:
    return [
        f"sources=[{{path: '{root / 'raw'}', text_field: body, id_field: id, domain_field: src, "
        "date_field: day}]",
        "prepare/recipe=records",
        "write.format=parquet",
        f"split.val_fraction={VF}",
        f"split.test_fraction={TF}",
        "clean.boilerplate_min_docs=5",
        "filter.min_words=20",
        f"decontaminate.benchmarks=['{root / 'bench.jsonl'}']",
        "print_config=false",
        "progress=false",
    ]


def _records(path: Path, split: str) -> list[dict]:
    return pads.dataset(str(path / split), format="parquet").to_table().to_pylist()


@pytest.fixture(scope="module")
def prepared(spark, tmp_path_factory):
    """The corpus prepared by both engines: (root, local card, spark card, spark config)."""
    root = _write_corpus(tmp_path_factory.mktemp("spark_prepare"))
    local = prepare(
        compose_config(
            "prepare", [*_overrides(root), f"output_dir={root / 'local'}"], output_dir=root / "r1"
        )
    )
    cfg = compose_config(
        "prepare",
        [*_overrides(root), f"output_dir={root / 'spark'}", "engine=spark"],
        output_dir=root / "r2",
    )
    return root, local, prepare(cfg), cfg


def test_spark_records_equal_the_single_machine_ones(prepared):
    root, local, card, cfg = prepared
    assert card["engine"]["name"] == "spark" and card["engine"]["master"] == "local[2]"
    for split in SPLITS:
        assert _records(root / "spark", split) == _records(root / "local", split), split
    ids = {r["id"] for s in SPLITS for r in _records(root / "spark", s)}
    gone = {"exact-of-10", "copy-of-20", "near-of-30", "copy-of-near-30", "near-of-40"}
    gone |= {"B-near-of-50", "short", "symbols", "contaminated", "has-benchmark", "no-text"}
    assert ids.isdisjoint(gone) and {"d10", "d30", "d50", "C-near-of-B"} <= ids
    assert all(FOOTER not in r["text"] for s in SPLITS for r in _records(root / "spark", s))
    timing = {"seconds", "cpu_seconds", "docs_per_s", "mb_per_s", "in_bytes"}
    for name in ("structure", "clean", "filter", "dedup", "split", "decontaminate"):
        mine = {k: v for k, v in card["stages"][name].items() if k not in timing}
        theirs = {k: v for k, v in local["stages"][name].items() if k not in timing}
        assert mine == theirs, name
    st = card["stages"]
    assert st["structure"]["removed"] == {"missing_field": 1}
    assert st["structure"]["examples"]["missing_field"][0]["where"].endswith("b.jsonl:4")
    assert st["clean"]["changed"]["boilerplate_lines"] == 8
    assert st["filter"]["removed"] == {"too_few_words": 1, "hash_ellipsis_ratio": 1}
    assert st["dedup"]["removed"] == {"exact": 3, "near": 3}
    assert st["decontaminate"]["removed"] == {"test": 1, f"benchmark:{root / 'bench.jsonl'}": 1}
    assert card["duplicates"] == local["duplicates"] and card["duplicates"]["count"] == 5
    assert (card["dates"], card["domains"]) == (local["dates"], local["domains"])
    assert card["splits"] == {s: {"documents": n, "rows": n} for s, n in _counts(local).items()}
    assert json.loads((root / "spark" / "card.json").read_text())["plan_fingerprint"]
    markdown = (root / "spark" / "card.md").read_text()
    assert f"| dedup | {st['dedup']['in']:,} | {st['dedup']['out']:,} |" in markdown
    again = prepare(cfg)  # same config and inputs: nothing runs
    assert again["up_to_date"] is True


def _counts(card: dict) -> dict[str, int]:
    return {s: card["splits"][s]["documents"] for s in SPLITS}


def test_training_reads_the_spark_output(prepared, tmp_path):
    """The pretrain recipe on the Spark engine: records from Spark (up to date here), then
    tokenize + pack on this machine; the DataModule of fmlab-train loads the result."""
    root, _, card, _ = prepared
    cfg = compose_config(
        "prepare",
        [
            *[o for o in _overrides(root) if o not in ("prepare/recipe=records",)],
            f"output_dir={tmp_path / 'packed'}",
            "engine=spark",
            f"spark.records_dir={root / 'spark'}",  # the dataset the Spark job wrote above
            "segment.block_size=32",
            "tokenizer.vocab_size=300",
        ],
        output_dir=tmp_path / "run",
    )
    packed = prepare(cfg)
    assert _counts(packed) == _counts(card)  # the same documents in every split
    assert packed["stages"]["dedup"]["removed"] == {"exact": 3, "near": 3}
    assert packed["engine"]["records"] == str(root / "spark")
    assert packed["segment"]["block_size"] == 32 and packed["splits"]["train"]["tokens"] > 0
    from fmlab.data import PretrainDataModule

    dm = PretrainDataModule(path=str(tmp_path / "packed"), block_size=None, batch_size=4)
    tok = dm.prepare(None)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (4, 32) and int(batch["input_ids"].max()) < len(tok)
    assert dm.stats["train"]["documents"] == card["splits"]["train"]["documents"]


def test_a_bad_source_fails_as_on_one_machine(spark, tmp_path):
    from fmlab.data.pipeline import prepare_dataset
    from fmlab.data.spark import prepare_on_spark

    write_jsonl(tmp_path / "bad.jsonl", [{"body": "x"}, {"body": 3}, {"other": "y"}])
    source = [{"path": str(tmp_path / "bad.jsonl")}]
    with pytest.raises(PrepareError) as one:
        prepare_dataset(source, str(tmp_path / "o1"), work_dir=tmp_path / "w", progress=False)
    with pytest.raises(PrepareError) as two:
        prepare_on_spark(source, str(tmp_path / "o2"), structure=Structure(), work_dir=tmp_path)
    assert str(two.value) == str(one.value)
    assert "no valid record among 3 rows" in str(two.value) and "bad.jsonl" in str(two.value)
    assert not (tmp_path / "o2").exists()


def test_connected_components_of_a_long_chain(spark):
    """A path needs several large-star/small-star rounds; every node gets its component's
    smallest node."""
    from fmlab.data.spark.dedup import connected_components
    from fmlab.data.spark.frames import SparkRun

    order = list(range(16))
    random.Random(0).shuffle(order)  # a path through 0..15 in random node order
    edges = [(order[i], order[i + 1]) for i in range(15)]
    edges += [(100, 105), (105, 103), (200, 201)]
    df = spark.createDataFrame(edges, "u long, v long")
    labels = dict(connected_components(SparkRun(spark, "text"), df).collect())
    want = {**{n: 0 for n in order}, 100: 100, 103: 100, 105: 100, 200: 200, 201: 200}
    assert labels == want


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on a free loopback port, and the fsspec options to reach it."""
    with moto_options("corpus") as served:
        yield served


def test_s3_in_and_out_in_local_mode(spark, s3, tmp_path):
    """Executors read s3:// through fsspec; the output is uploaded through fsspec (no Hadoop
    S3 connector); the records equal the single-machine pipeline's on the same S3 input."""
    from fmlab.data.pipeline import Dedup, Split, Write, prepare_dataset
    from fmlab.data.spark import prepare_on_spark

    fs, options = s3
    docs = [random_doc(i, 60) for i in range(60)]
    docs[40] = docs[3].upper()  # an exact copy
    for part in range(2):
        rows = [{"text": d} for d in docs[part * 30 : (part + 1) * 30]]
        fs.pipe(f"corpus/raw/part-{part}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    kwargs = dict(
        dedup=Dedup(),
        split=Split(val_fraction=0.2, test_fraction=0.2),
        write=Write(format="parquet"),
        storage_options=options,
        work_dir=tmp_path / "work",
    )
    one = prepare_dataset(["s3://corpus/raw/"], "s3://corpus/one", progress=False, **kwargs)
    two = prepare_on_spark(["s3://corpus/raw/"], "s3://corpus/two", **kwargs)
    assert two["stages"]["dedup"]["removed"] == one["stages"]["dedup"]["removed"]
    assert two["stages"]["dedup"]["removed"]["exact"] == 1
    assert json.loads(fs.cat("corpus/two/card.json"))["engine"]["name"] == "spark"
    for split in SPLITS:
        files = sorted(fs.glob(f"corpus/two/{split}/*.parquet"))
        mine = pads.dataset(files, format="parquet", filesystem=fs).to_table().to_pylist()
        files = sorted(fs.glob(f"corpus/one/{split}/*.parquet"))
        theirs = pads.dataset(files, format="parquet", filesystem=fs).to_table().to_pylist()
        assert mine == theirs and mine, split
    assert mine[0]["id"].startswith("s3://corpus/raw/part-")  # ids: file:line, as on one machine
    # the pretrain recipe to S3: records from above (up to date), packed here, trained from S3
    import functools

    from fmlab.data import PretrainDataModule
    from fmlab.data.pipeline import Pack
    from fmlab.data.spark import SparkSettings
    from fmlab.data.tokenizer import bpe

    packed = prepare_on_spark(
        ["s3://corpus/raw/"],
        "s3://corpus/packed",
        segment=Pack(block_size=16),
        tokenizer=functools.partial(bpe, vocab_size=300),
        cache_dir=tmp_path / "cache",
        spark=SparkSettings(records_dir="s3://corpus/two"),
        progress=False,
        **kwargs,
    )
    assert _counts(packed) == _counts(two) and packed["engine"]["records"] == "s3://corpus/two"
    dm = PretrainDataModule(
        path="s3://corpus/packed", block_size=None, storage_options=options, cache_dir=tmp_path
    )
    dm.prepare(None)
    assert dm.blocks["train"].shape[1] == 16 and len(dm.blocks["train"]) > 0


def _stream_rows(path: Path, split: str) -> list[dict]:
    from litdata import StreamingDataset

    return [{k: v.tolist() for k, v in row.items()} for row in StreamingDataset(str(path / split))]


def test_streaming_output_packed_on_spark_equals_the_single_machine_one(prepared, tmp_path):
    """engine=spark output_format=streaming tokenizes and packs on the executors, one task per
    part of the records, and blocks run across parts (the records are cut into three parts per
    split here, as a cluster writes them): every split's rows, in order, are those written on
    one machine, with document masks and sliding-window evaluation rows."""
    pytest.importorskip("litdata")
    import pyarrow as pa
    import pyarrow.parquet as pq

    root, _, _, _ = prepared
    records = tmp_path / "records"
    shutil.copytree(root / "spark", records)  # the records and their card (up to date)
    for split in SPLITS:
        files = sorted((records / split).glob("*.parquet"))
        table = pa.concat_tables([pq.read_table(f) for f in files])
        for f in files:
            f.unlink()
        cuts = [0, table.num_rows // 3, 2 * table.num_rows // 3, table.num_rows]
        for i in range(3):
            part = table.slice(cuts[i], cuts[i + 1] - cuts[i])
            pq.write_table(part, records / split / f"part-{i:05d}-test.snappy.parquet")
    common = [
        *[
            o
            for o in _overrides(root)
            if o not in ("prepare/recipe=records", "write.format=parquet")
        ],
        "output_format=streaming",
        "write.chunk_bytes=1KB",
        "segment.block_size=16",
        "segment.document_mask=true",
        "segment.eval_stride=8",
        "tokenizer.vocab_size=300",
    ]
    one = prepare(
        compose_config(
            "prepare", [*common, f"output_dir={tmp_path / 'one'}"], output_dir=tmp_path / "r1"
        )
    )
    spark_overrides = ["engine=spark", f"spark.records_dir={records}"]
    two = prepare(
        compose_config(
            "prepare",
            [*common, *spark_overrides, f"output_dir={tmp_path / 'two'}"],
            output_dir=tmp_path / "r2",
        )
    )
    assert two["engine"]["records"] == str(records) and two["engine"]["name"] == "spark"
    assert two["splits"] == one["splits"] and one["splits"]["train"]["rows"] > 0
    for split in SPLITS:
        assert _stream_rows(tmp_path / "two", split) == _stream_rows(tmp_path / "one", split), split
    chunks = {p.name.split("-")[1] for p in (tmp_path / "two" / "train").glob("chunk-*.bin")}
    assert chunks == {"0", "1", "2"}  # each part wrote its own chunks
