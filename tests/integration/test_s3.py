"""Object storage end to end, against a real local S3 endpoint (moto's server): fmlab-prepare reads
what AWS data tools leave on S3 and writes its dataset there; fmlab-train reads that dataset,
mirrors its checkpoints to S3, dies, resumes on a "new machine" from S3 alone with the same
per-step losses as an uninterrupted run, and uploads its export."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import pytest
from tests.conftest import _sentences, run_train

pytest.importorskip("moto.server")
pytest.importorskip("s3fs")

from tests.s3 import FAKE_SECRET, athena_csv, moto_s3, parquet_bytes, query_id

pytestmark = pytest.mark.slow
# checkpoints at steps 7 and 14, validation at 10 and 20 (debug=fast); the crash loses 2 steps.
# Not on a validation step: last.ckpt is written before that step's validation, which draws from
# the global RNG (measured: a resume from such a last.ckpt differs from step 10 on, locally too).
MAX_STEPS, EVERY, CRASH_AT = 20, 7, 16
DATASET = "s3://corpus/prepared"


@pytest.fixture(scope="module")
def s3():
    with moto_s3("corpus", "runs") as server:
        yield server


def _upload_aws_outputs(fs) -> dict[str, int]:
    """60 documents as four tools leave them; returns the data rows per source. Everything that
    is not data (side files, markers, a Spark attempt's leftovers) holds rows that would change
    the counts if it were read."""
    docs = _sentences(60, seed=7)
    junk = parquet_bytes({"body": ["LEFTOVER of a failed task attempt"] * 5})
    # a plain JSON-lines export
    fs.pipe("corpus/raw/docs.jsonl", "".join(json.dumps({"body": d}) + "\n" for d in docs[:15]))
    # Athena query results: <id>.csv with its binary .csv.metadata, and a CTAS data manifest
    qid = query_id()
    rows = [{"id": str(i), "body": d} for i, d in enumerate(docs[15:30])]
    fs.pipe(f"corpus/athena/{qid}.csv", athena_csv(rows))
    fs.pipe(f"corpus/athena/{qid}.csv.metadata", b"\n\x1b20240101_000000_00001_abcde\x22\x19")
    fs.pipe(f"corpus/athena/{query_id()}-manifest.csv", b"s3://corpus/glue/docs/x.parquet\n")
    # a Glue / Spark job, partitionBy("dt"): Hive folders, _SUCCESS, a leftover attempt, a .crc
    for day, part in (("2024-01-01", docs[30:38]), ("2024-01-02", docs[38:45])):
        name = f"part-00000-{query_id()}.c000.snappy.parquet"
        fs.pipe(f"corpus/glue/docs/dt={day}/{name}", parquet_bytes({"body": part}))
        fs.pipe(f"corpus/glue/docs/dt={day}/.{name}.crc", b"\x00\x01")
    fs.pipe("corpus/glue/docs/_SUCCESS", b"")
    fs.pipe("corpus/glue/docs/_temporary/0/task_1/dt=2024-01-01/part-00001.parquet", junk)
    fs.pipe("corpus/glue/docs/dt=2024-01-01_$folder$", b"")
    # Athena UNLOAD ... WITH (format = 'PARQUET', partitioned_by = ARRAY['dt']): no extensions
    fs.pipe(
        f"corpus/unload/dt=2024-01-03/20240103_101010_00007_abcde_{query_id()}",
        parquet_bytes({"body": docs[45:60]}),
    )
    return {"raw": 15, "athena": 15, "glue": 15, "unload": 15}


@pytest.fixture(scope="module")
def prepared(s3, tmp_path_factory):
    """fmlab-prepare: S3 sources (the AWS tools' layouts) → a token-block dataset on S3."""
    from fmlab.config import compose_config
    from fmlab.prepare import prepare

    counts = _upload_aws_outputs(s3.fs)
    sources = (
        "[{path: 's3://corpus/raw/docs.jsonl', text_field: body},"
        " {path: 's3://corpus/athena/', text_field: body, id_field: id},"
        " {path: 's3://corpus/glue/docs', text_field: body, date_field: dt},"
        " {path: 's3://corpus/unload', text_field: body, date_field: dt}]"
    )
    overrides = [
        f"sources={sources}",
        f"output_dir={DATASET}",
        "tokenizer.vocab_size=300",
        "segment.block_size=64",
        "split.val_fraction=0.2",
        "split.test_fraction=0.2",
        "filter.enabled=false",  # Gopher's web-text rules would drop the synthetic documents
        "write.plots=false",
        "progress=false",
        "print_config=false",
    ]
    run_dir = tmp_path_factory.mktemp("prepare-run")
    card = prepare(compose_config("prepare", overrides, output_dir=run_dir))
    return card, counts


def test_prepare_reads_aws_tool_outputs_and_writes_s3(prepared, s3):
    card, counts = prepared
    structure = card["stages"]["structure"]
    assert structure["in"] == structure["out"] == sum(counts.values())  # no side file was read
    assert [s["source"] for s in card["sources"]] == [
        "s3://corpus/raw/docs.jsonl",
        "s3://corpus/athena/",
        "s3://corpus/glue/docs",
        "s3://corpus/unload",
    ]
    # partition folders became the date field: 30 dated documents over three days
    assert card["dates"]["min"] == "2024-01-01" and card["dates"]["max"] == "2024-01-03"
    assert card["dates"]["with_date"] == counts["glue"] + counts["unload"]
    for name in ("card.json", "dataset_dict.json", "tokenizer/tokenizer.json"):
        assert s3.fs.isfile(f"{DATASET[5:]}/{name}"), name


def test_sft_style_sources_read_s3_as_prepare_does(prepared, cache_dir):
    """``load_text_source`` (SFT and multi-task raw sources) lists S3 like fmlab-prepare."""
    from fmlab.data.sources import load_text_source

    _, counts = prepared
    for name, path in (("athena", "s3://corpus/athena/"), ("unload", "s3://corpus/unload")):
        ds = load_text_source(path, text_field="body", cache_dir=str(cache_dir))
        assert len(ds) == counts[name] and all(t.strip() for t in ds["text"]), name


def test_unload_json_gzip_and_partition_values(s3, tmp_path):
    """UNLOAD ... WITH (format = 'JSON'): gzip, no extension; partition values are URL-encoded,
    Hive's null partition is null, and a row's own field wins over its folder's."""
    import gzip

    from fmlab.data.pipeline import SourceSpec
    from fmlab.data.pipeline.read import iter_rows, resolve_source

    rows = [{"body": "a"}, {"body": "b", "lang": "own"}]
    data = gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode())
    s3.fs.pipe(f"corpus/json-unload/lang=en%20us/20240104_000000_00002_x_{query_id()}", data)
    s3.fs.pipe(f"corpus/json-unload/lang=__HIVE_DEFAULT_PARTITION__/{query_id()}.gz", data)
    src = resolve_source(SourceSpec(path="s3://corpus/json-unload"), cache_dir=str(tmp_path))
    got = sorted((r["lang"] or "", r["body"]) for _, r in iter_rows(src))
    assert got == [("", "a"), ("en us", "a"), ("own", "b"), ("own", "b")]


def test_side_files_only_is_a_clear_error(s3, tmp_path):
    from fmlab.data.pipeline import PrepareError, SourceSpec
    from fmlab.data.pipeline.read import resolve_source

    s3.fs.pipe("corpus/empty-table/_SUCCESS", b"")
    s3.fs.pipe(f"corpus/empty-table/{query_id()}.csv.metadata", b"\x00")
    with pytest.raises(PrepareError, match=r"s3://corpus/empty-table.*2 other files ignored"):
        resolve_source(SourceSpec(path="s3://corpus/empty-table"), cache_dir=str(tmp_path))
    with pytest.raises(PrepareError, match=r"s3://no-such-bucket/x"):
        resolve_source(SourceSpec(path="s3://no-such-bucket/x"), cache_dir=str(tmp_path))


def _train(run_dir: Path, *extra: str) -> dict:
    return run_train(
        run_dir,
        "data=prepared",
        f"data.path={DATASET}",
        "data.batch_size=8",
        f"trainer.max_steps={MAX_STEPS}",
        f"callbacks.checkpoint_last.every_n_train_steps={EVERY}",
        "+model.attention_dropout=0.1",  # the resumed run must restore the RNG too
        "run_test=false",
        *extra,
    )


def _step_losses(run_dir: Path) -> dict[int, str]:
    with (run_dir / "csv" / "metrics.csv").open() as fh:
        return {int(r["step"]): r["train/loss"] for r in csv.DictReader(fh) if r["train/loss"]}


@pytest.fixture(scope="module")
def runs(prepared, s3, tmp_path_factory):
    """An uninterrupted run; a run mirrored to S3 that crashes at step 16 and whose machine is
    gone; a run on a fresh directory that resumes from S3 alone and exports there."""
    from fmlab.reliability import NonFiniteError

    base = tmp_path_factory.mktemp("runs")
    _train(base / "full", "paths.remote_dir=s3://runs/full", "export.hf=false")
    remote = "s3://runs/exp1"
    with pytest.raises(NonFiniteError):  # a real crash mid-epoch: the loss of step 16 is NaN
        _train(
            base / "crashed",
            f"paths.remote_dir={remote}",
            "export.hf=false",
            "+callbacks.poison._target_=tests.helpers.PoisonAt",
            f"+callbacks.poison.labels_at=[{CRASH_AT}]",
        )
    shutil.rmtree(base / "crashed")  # the machine is lost; only S3 remains
    options = ", ".join(f"{k}: '{v}'" for k, v in s3.options.items())
    summary = _train(
        base / "resumed",
        f"paths.remote_dir={remote}",
        "resume=must",  # nothing local: it must find the checkpoint on S3
        f"paths.storage_options={{{options}}}",  # as well as AWS_*: never written in clear
    )
    return base, remote, summary


def test_resume_from_s3_continues_exactly(runs):
    base, _, summary = runs
    reference = _step_losses(base / "full")
    assert sorted(reference) == list(range(MAX_STEPS))
    after = _step_losses(base / "resumed")
    resumed_at = (CRASH_AT // EVERY) * EVERY
    assert sorted(after) == list(range(resumed_at, MAX_STEPS))
    assert {s: reference[s] for s in after} == after  # bitwise: identical float strings
    assert summary["global_step"] == MAX_STEPS
    local = base / "resumed" / "from_remote" / "checkpoints"
    assert [p.name for p in local.glob("*.ckpt")] == ["last.ckpt"]


def test_checkpoints_export_and_summary_on_s3(runs, s3, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    base, remote, _ = runs
    fs, root = s3.fs, remote[5:]
    fs.invalidate_cache()
    # the uninterrupted run's mirror: best-step10 was pruned there when best-step20 replaced it
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls("runs/full/checkpoints"))
    assert names == sorted(p.name for p in (base / "full" / "checkpoints").glob("*.ckpt"))
    assert names == ["best-step20.ckpt", "last.ckpt"]
    with fs.open("runs/full/checkpoints/last.ckpt") as fh:
        assert torch.load(fh, weights_only=True)["global_step"] == 14

    on_s3 = json.loads(fs.cat_file(f"{root}/summary.json"))
    assert on_s3["status"] == "ok" and on_s3["paths"]["remote_export_dir"] == f"{remote}/export"
    assert on_s3["global_step"] == MAX_STEPS
    config = fs.cat_file(f"{root}/config.yaml").decode()
    assert "remote_dir: s3://runs/exp1" in config and FAKE_SECRET not in config

    fs.get(f"{root}/export/", str(tmp_path / "export"), recursive=True)
    downloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "export")
    local = AutoModelForCausalLM.from_pretrained(base / "resumed" / "export")
    ids = torch.arange(1, 33).unsqueeze(0)
    with torch.no_grad():
        assert torch.equal(downloaded(ids).logits, local(ids).logits)


def test_remote_checkpoint_choice(runs, s3, tmp_path, caplog):
    """A corrupt newest object is skipped (named), an aborted upload is invisible, resume=off
    with a named unusable checkpoint is an error, a missing bucket is named."""
    import boto3

    from fmlab.reliability import CheckpointError, inspect_checkpoint, resolve_resume

    fs = s3.fs
    good = fs.cat_file("runs/full/checkpoints/last.ckpt")  # step 14
    fs.pipe("runs/copy/checkpoints/step14.ckpt", good)
    fs.pipe("runs/copy/checkpoints/last.ckpt", good[: len(good) // 2])  # newer, truncated
    # a killed multipart upload of a newer last.ckpt into a third prefix: never visible
    fs.pipe("runs/aborted/checkpoints/last.ckpt", good)
    client = boto3.client("s3", endpoint_url=s3.endpoint)
    upload = client.create_multipart_upload(Bucket="runs", Key="aborted/checkpoints/last.ckpt")
    client.upload_part(
        Bucket="runs",
        Key="aborted/checkpoints/last.ckpt",
        UploadId=upload["UploadId"],
        PartNumber=1,
        Body=b"\x00" * 1024,
    )

    with caplog.at_level(logging.WARNING, logger="fmlab"):
        chosen = resolve_resume("s3://runs/copy", "auto", tmp_path / "a")
    assert Path(chosen).name == "step14.ckpt" and inspect_checkpoint(chosen).global_step == 14
    assert "s3://runs/copy/checkpoints/last.ckpt" in caplog.text  # the skipped one, named

    chosen = resolve_resume("s3://runs/aborted/checkpoints/last.ckpt", "off", tmp_path / "b")
    assert inspect_checkpoint(chosen).global_step == 14

    with pytest.raises(CheckpointError, match=r"s3://runs/copy/checkpoints/last.ckpt.*truncated"):
        resolve_resume("s3://runs/copy/checkpoints/last.ckpt", "off", tmp_path / "c")
    with pytest.raises(CheckpointError, match=r"ckpt_path=s3://runs/nothing-here: no such"):
        resolve_resume("s3://runs/nothing-here", "auto", tmp_path / "d")
    with pytest.raises(CheckpointError, match=r"s3://no-such-bucket/run.*bucket does not exist"):
        resolve_resume("s3://no-such-bucket/run", "auto", tmp_path / "e")


def test_bad_remote_inputs_fail_before_training(prepared, s3, tmp_path):
    from fmlab.config import ConfigError

    with pytest.raises(ConfigError, match=r"paths.remote_dir=s3://no-such-bucket/r.*bucket"):
        _train(tmp_path / "a", "paths.remote_dir=s3://no-such-bucket/r")
    assert not (tmp_path / "a" / "checkpoints").exists()  # refused before anything trained
    with pytest.raises(ValueError, match=r"data.path=s3://corpus/not-prepared: no card.json"):
        run_train(tmp_path / "b", "data=prepared", "data.path=s3://corpus/not-prepared")
