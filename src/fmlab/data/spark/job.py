"""``fmlab-prepare engine=spark``: the preparation stages as one Spark job.

Structure → clean → filter → dedup (exact + near) → split → decontaminate run on Spark with
fmlab's own row functions (see the modules of this package) and write a *records* dataset:
``<dir>/{train,validation,test}/part-*.parquet`` in corpus order plus ``card.json``/``card.md``,
the layout of ``fmlab-prepare prepare/recipe=records write.format=parquet``. When the config has
a segment stage (the default ``pretrain`` recipe tokenizes and packs), the records go to
``spark.records_dir`` and the single-machine pipeline tokenizes and packs them into
``output_dir`` (re-deriving the same split of every record from its content hash), so
``data=prepared data.path=<output_dir>`` trains on it as on any fmlab-prepare output. With
``output_format=streaming`` the executors tokenize and pack too (:mod:`fmlab.data.streaming.spark`):
the corpus never passes through one machine.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from fsspec.core import url_to_fs

from fmlab.data.pipeline.clean import Clean
from fmlab.data.pipeline.dedup import Dedup
from fmlab.data.pipeline.engine import PIPELINE_VERSION, fingerprint
from fmlab.data.pipeline.quality import Filter
from fmlab.data.pipeline.read import resolve_source
from fmlab.data.pipeline.records import PrepareError, SourceSpec
from fmlab.data.pipeline.run import as_specs, prepare_dataset
from fmlab.data.pipeline.segment import SFT, Classify, Pack
from fmlab.data.pipeline.split import Decontaminate, Split
from fmlab.data.pipeline.structure import Structure
from fmlab.data.pipeline.write import Write, _refuse_foreign, load_card
from fmlab.data.spark.dedup import dedup_records
from fmlab.data.spark.frames import SparkRun
from fmlab.data.spark.session import SparkSettings
from fmlab.data.spark.stages import (
    clean_records,
    decontaminate_records,
    filter_records,
    split_records,
)
from fmlab.data.spark.structure import read_records
from fmlab.data.spark.write import RecordsWriter, rewrite_card, summaries
from fmlab.data.splits import SPLITS

__all__ = ["prepare_on_spark"]

log = logging.getLogger("fmlab.prepare")
_ORDER = ("structure", "clean", "filter", "dedup", "split", "decontaminate", "segment")


def _check(structure: Structure, split: Split, segment: Any, tokenizer: Any) -> None:
    """The single-machine pipeline's checks of the stage combination."""
    kind = structure.kind
    if kind == "preference":
        raise PrepareError(
            "structure.kind=preference runs on engine=local only (preference pairs are not "
            "implemented on Spark)"
        )
    if segment is not None and tokenizer is None:
        raise PrepareError("segment needs a tokenizer (the tokenizer config group)")
    fits = {"text": (Pack,), "sft": (SFT,), "classification": (Classify,)}[kind]
    if segment is not None and not isinstance(segment, fits):
        raise PrepareError(
            f"segment {type(segment).__name__} does not fit structure.kind='{kind}' "
            f"(use {fits[0].__name__}, or the prepare/recipe that matches the kind)"
        )
    if split.params["by"] == "prompt" and kind != "sft":
        raise PrepareError(f"split.by=prompt needs structure.kind=sft (kind is '{kind}')")
    if split.params["by"] == "date":  # its held-out bound is a property of the whole corpus
        raise PrepareError("split.by=date runs on engine=local only (engine is spark)")


def prepare_on_spark(
    sources: list[str | SourceSpec | dict[str, Any]],
    output_dir: str | None = None,
    *,
    structure: Structure | None = None,
    clean: Clean | None = None,
    filter: Filter | None = None,
    dedup: Dedup | None = None,
    split: Split | None = None,
    decontaminate: Decontaminate | None = None,
    segment: Pack | SFT | Classify | None = None,
    write: Write | None = None,
    tokenizer: Callable[..., Any] | None = None,
    work_dir: str = ".cache/fmlab/prepare",
    cache_dir: str = ".cache/fmlab",
    num_proc: int = 1,
    batch_size: int = 1000,
    progress: bool = True,
    storage_options: dict[str, Any] | None = None,
    tokenizer_train_docs: int | None = None,
    name: str | None = None,
    force: bool = False,
    spark: SparkSettings | None = None,
) -> dict[str, Any]:
    """Run the pipeline with the Spark engine; return the data card (as ``prepare_dataset``).

    Arguments are those of :func:`fmlab.data.pipeline.prepare_dataset` plus ``spark``.
    ``num_proc`` only applies to the single-machine tokenize + pack step; ``batch_size`` is the
    number of records per Arrow batch handed to the stage functions.
    """
    if not output_dir:
        raise PrepareError("engine=spark needs output_dir (a local directory or s3:// URI)")
    spark = spark or SparkSettings()
    specs = as_specs(sources)
    structure, split, write = structure or Structure(), split or Split(), write or Write()
    _check(structure, split, segment, tokenizer)
    resolved = [resolve_source(s, storage_options, str(cache_dir)) for s in specs]
    dec = decontaminate if decontaminate is not None and decontaminate.enabled else None
    bench = [
        resolve_source(b, storage_options, str(cache_dir)) for b in (dec.benchmarks if dec else [])
    ]
    on = {
        n: s for n, s in (("clean", clean), ("filter", filter), ("dedup", dedup)) if s and s.enabled
    }
    plan = fingerprint(
        "spark",
        PIPELINE_VERSION,
        structure.params,
        [s.spec.model_dump() for s in resolved],
        [s.identity for s in resolved],
        {n: s.describe() for n, s in on.items()},
        split.describe(),
        dec.describe() if dec else None,
        [b.identity for b in bench],
        write.params["max_shard_size"],  # records are Parquet whatever write.format says
    )
    records_dir = (
        output_dir
        if segment is None
        else (spark.records_dir or f"{output_dir.rstrip('/')}-records")
    )
    fs, root = url_to_fs(records_dir, **(storage_options or {}))
    _refuse_foreign(fs, root, records_dir)  # before any work, not after it
    card = None if force else load_card(records_dir, storage_options)
    fresh = not (card and card.get("plan_fingerprint") == plan)
    if fresh:
        card = _run(
            spark, resolved, bench, records_dir, name if segment is None else None,
            structure=structure, stages=on, split=split, decontaminate=dec,
            disabled=[s for s in (clean, filter, dedup, decontaminate) if s and not s.enabled],
            write=write, plan=plan, specs=specs, cache_dir=str(cache_dir), work_dir=str(work_dir),
            batch_size=batch_size, storage_options=storage_options,
        )  # fmt: skip
    if segment is None:
        return {**card, "path": output_dir, "up_to_date": not fresh}
    if write.params["format"] == "streaming":  # tokenized and packed on the executors too
        from fmlab.data.streaming.spark import pack_on_spark

        return pack_on_spark(
            spark, card, records_dir, output_dir, kind=structure.kind, segment=segment,
            write=write, tokenizer=tokenizer, work_dir=str(work_dir), cache_dir=str(cache_dir),
            storage_options=storage_options, tokenizer_train_docs=tokenizer_train_docs,
            name=name, force=force,
        )  # fmt: skip
    return _tokenize_here(
        card, records_dir, output_dir, structure, split, segment, write, tokenizer,
        dict(work_dir=work_dir, cache_dir=cache_dir, num_proc=num_proc, batch_size=batch_size,
             progress=progress, storage_options=storage_options,
             tokenizer_train_docs=tokenizer_train_docs, name=name, force=force),
    )  # fmt: skip


def _run(
    settings: SparkSettings,
    resolved: list[Any],
    bench: list[Any],
    out: str,
    name: str | None,
    *,
    structure: Structure,
    stages: dict[str, Any],
    split: Split,
    decontaminate: Decontaminate | None,
    disabled: list[Any],
    write: Write,
    plan: str,
    specs: list[SourceSpec],
    cache_dir: str,
    work_dir: str,
    batch_size: int,
    storage_options: dict[str, Any] | None,
) -> dict[str, Any]:
    session, created = settings.session()
    session.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_size))
    # pandas → DataFrame through Arrow on the driver, without starting a Python worker
    session.conf.set("spark.sql.execution.arrow.pyspark.enabled", "true")
    sc = session.sparkContext
    if sc.master.startswith("local") and not sc.getConf().contains("spark.sql.shuffle.partitions"):
        # 200 shuffle partitions (Spark's default, sized for clusters) cost a task each per
        # shuffle; on one machine that made dedup 30x slower on a small corpus
        session.conf.set("spark.sql.shuffle.partitions", str(max(2, sc.defaultParallelism)))
    if settings.checkpoint_dir:
        session.sparkContext.setCheckpointDir(settings.checkpoint_dir)
    run = SparkRun(session, structure.kind, reliable=settings.checkpoint_dir is not None)
    report: dict[str, dict[str, Any]] = {
        s.name: {"enabled": False, "settings": s.describe()} for s in disabled
    }
    writer = None
    try:
        writer = RecordsWriter(run, out, work_dir, storage_options)
        df, st = read_records(run, resolved, structure, cache_dir, batch_size)
        _done(run, report, "structure", structure, st)
        for key, stage in stages.items():  # clean, filter, dedup (the enabled ones, in order)
            step = {"clean": clean_records, "filter": filter_records, "dedup": dedup_records}
            df, st = step[key](run, df, stage, st["out"])
            _done(run, report, key, stage, st)
        declared = {s.label: s.split for s in specs if s.split}  # sources with their own split
        df, st = split_records(run, df, split, st["out"], declared)
        _done(run, report, "split", split, st)
        if decontaminate is not None:
            df, st = decontaminate_records(run, df, decontaminate, bench, cache_dir, st["out"])
            _done(run, report, "decontaminate", decontaminate, st)
        rows, seconds = writer.write(df, write)
        card = _card(name or out.rstrip("/").split("/")[-1], structure.kind, report, rows, plan)
        card.update(summaries(df))
        card["settings"] = {
            "sources": [s.model_dump(exclude_defaults=True) for s in specs],
            **{n: st.get("settings", {}) for n, st in card["stages"].items()},
        }
        card["engine"] = {
            "name": "spark",
            "spark_version": session.version,
            "master": session.sparkContext.master,
        }
        card["stages"]["write"] = {
            "enabled": True,
            "settings": write.describe(),
            "seconds": round(seconds, 3),
        }
        writer.finish(card)
        return card
    finally:
        if writer is not None:
            writer.discard()
        run.release()
        if created:
            session.stop()


def _done(run: SparkRun, report: dict, name: str, stage: Any, stats: dict[str, Any]) -> None:
    run.release()  # the stage's output is a checkpoint now: its intermediates can go
    report[name] = {"enabled": getattr(stage, "enabled", True), "settings": stage.describe()}
    report[name].update(stats)
    log.info("spark %s: %s → %s (%.1fs)", name, stats["in"], stats["out"], stats["seconds"])


def _card(name: str, kind: str, report: dict, rows: dict[str, int], plan: str) -> dict[str, Any]:
    for st in report.values():
        if st.get("seconds"):
            st["docs_per_s"] = round(st.get("in", 0) / st["seconds"], 1)
    stages = {n: report.get(n, {"enabled": False}) for n in _ORDER}
    return {
        "name": name,
        "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "kind": kind,
        "segment": {"mode": "records"},
        "fingerprint": plan,
        "plan_fingerprint": plan,
        "pipeline_version": PIPELINE_VERSION,
        "splits": {s: {"documents": rows.get(s, 0), "rows": rows.get(s, 0)} for s in SPLITS},
        "stages": stages,
        "sources": report["structure"]["sources"],
        "duplicates": report.get("dedup", {}).get("clusters"),
        "histograms": {},
    }


def _tokenize_here(
    card: dict[str, Any],
    records_dir: str,
    output_dir: str,
    structure: Structure,
    split: Split,
    segment: Any,
    write: Write,
    tokenizer: Any,
    kwargs: dict[str, Any],
) -> dict[str, Any]:
    """Tokenize + pack the Spark records on this machine with the single-machine pipeline."""
    source = SourceSpec(
        path=f"{records_dir.rstrip('/')}/*/*.parquet",
        id_field="id",
        domain_field="domain",
        date_field="date",
        name=records_dir,
    )
    done = prepare_dataset(
        [source],
        output_dir,
        structure=Structure(kind=structure.kind, max_bad_fraction=0.0),
        split=split,
        segment=segment,
        write=write,
        tokenizer=tokenizer,
        **kwargs,
    )
    if done.get("engine"):  # up to date: the card written below
        return done
    for s in SPLITS:  # the split is a hash of the content: the same records land in each split
        have, want = done["splits"][s]["documents"], card["splits"][s]["documents"]
        if have != want:
            raise PrepareError(
                f"tokenizing the Spark records in {records_dir}: split '{s}' has {have} documents "
                f"where the Spark job wrote {want} (were they modified?)"
            )
    merged = dict(done)
    merged["stages"] = {
        **{n: card["stages"][n] for n in _ORDER if n != "segment"},
        "segment": done["stages"]["segment"],
        "write": done["stages"]["write"],
    }
    merged["sources"], merged["duplicates"] = card["sources"], card["duplicates"]
    merged["settings"] = {**done["settings"], **card["settings"]}
    merged["engine"] = {**card["engine"], "records": records_dir}
    for key in ("path", "up_to_date"):
        merged.pop(key, None)
    rewrite_card(merged, output_dir, kwargs["storage_options"])
    return {**merged, "path": output_dir, "up_to_date": False}
