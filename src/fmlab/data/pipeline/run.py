"""The pipeline in order: read+structure → clean → filter → dedup → split → decontaminate →
segment → write (+ data card). Used by ``fmlab-prepare`` and by the training DataModules.

Each stage's output is cached under ``work_dir`` by a fingerprint chained from the sources' file
identities and every earlier stage's settings, so a re-run with the same config and inputs does
nothing and a change reruns from the changed stage on. A stage given as None (or with
``enabled=False``) passes its input through unchanged and keeps the fingerprint.
"""

from __future__ import annotations

import datetime as dt
import functools
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fmlab.data.pipeline.card import card_markdown, plot_lengths
from fmlab.data.pipeline.clean import Clean
from fmlab.data.pipeline.dedup import Dedup
from fmlab.data.pipeline.engine import PIPELINE_VERSION, ArrowSink, Runner, fingerprint, read_table
from fmlab.data.pipeline.preference import Preference
from fmlab.data.pipeline.quality import Filter
from fmlab.data.pipeline.read import resolve_source
from fmlab.data.pipeline.records import PrepareError, SourceSpec, content_fields, content_of
from fmlab.data.pipeline.segment import SFT, Classify, Pack
from fmlab.data.pipeline.split import Decontaminate, Split
from fmlab.data.pipeline.structure import Structure
from fmlab.data.pipeline.write import Write, load_card, publish, staging_dir
from fmlab.data.splits import SPLITS, split_sources
from fmlab.utils import atomic_write_text, write_json
from fmlab.utils.io import is_disk_full

__all__ = ["as_specs", "prepare_dataset"]

Segment = Pack | SFT | Classify | Preference


def as_specs(sources: list[Any]) -> list[SourceSpec]:
    """Source strings / dicts / specs → :class:`SourceSpec` list."""
    specs = []
    for i, s in enumerate(sources):
        try:
            specs.append(
                s
                if isinstance(s, SourceSpec)
                else SourceSpec(path=s)
                if isinstance(s, str)
                else SourceSpec(**dict(s))
            )
        except Exception as err:
            raise PrepareError(f"sources[{i}]: {err}") from err
    if not specs:
        raise PrepareError("sources: at least one source is required")
    return specs


def _describe_factory(factory: Any) -> dict[str, Any] | None:
    if factory is None:
        return None
    func = getattr(factory, "func", factory)
    return {"target": f"{func.__module__}.{func.__qualname__}", **getattr(factory, "keywords", {})}


def _text_bytes(table: pa.Table, kind: str) -> int:
    return sum(
        int(pc.sum(pc.binary_length(table.column(f))).as_py() or 0)
        for f in content_fields(kind)
        if table.num_rows
    )


def _split_records(runner: Runner, table: pa.Table, out: Path, kind: str) -> dict[str, Any]:
    """Segment-less output: records per split (without the ``split`` column) + lengths."""
    schema = table.schema.remove(table.schema.get_field_index("split"))
    lengths: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    sinks = {s: ArrowSink(out / f"{s}.arrow", schema) for s in SPLITS}
    for batch in runner.batches(table):
        labels = batch.column("split")
        chars = np.array([len(t) for t in content_of(batch.to_pydict(), kind)], dtype=np.int64)
        for s in SPLITS:
            mask = pc.equal(labels, s)
            sinks[s].write(batch.filter(mask).drop_columns(["split"]))
            lengths[s].append(chars[np.asarray(mask.to_numpy(zero_copy_only=False))])
    for sink in sinks.values():
        sink.close()
    np.savez_compressed(
        out / "lengths.npz", **{f"{s}/chars": np.concatenate(v) for s, v in lengths.items() if v}
    )
    return {
        "in": table.num_rows,
        "out": table.num_rows,
        "removed": {},
        "splits": {s: {"documents": sinks[s].rows, "rows": sinks[s].rows} for s in SPLITS},
    }


def _train_texts(table: pa.Table, kind: str, limit: int | None) -> Callable[[], Iterator[str]]:
    def texts() -> Iterator[str]:
        n = 0
        for batch in table.to_batches(max_chunksize=1000):
            cols = batch.to_pydict()
            for text, split in zip(content_of(cols, kind), cols["split"]):
                if split == "train":
                    if limit is not None and n >= limit:
                        return
                    n += 1
                    yield text

    return texts


def _by_source(records: pa.Table, specs: list[SourceSpec]) -> dict[str, dict[str, Any]]:
    """Documents per split of every source, and the split each source declared (if any)."""
    counts: dict[str, dict[str, int]] = {}
    if records.num_rows:
        by = records.group_by(["source", "split"]).aggregate([("id", "count")]).to_pylist()
        for row in by:
            counts.setdefault(row["source"], {})[row["split"]] = row["id_count"]
    return split_sources({s.label: s.split for s in specs}, counts)


def _summaries(records: pa.Table, seg_stats: dict[str, Any] | None) -> dict[str, Any]:
    dates = records.column("date")
    valid = pc.drop_null(dates)
    lo_hi = pc.min_max(valid).as_py() if len(valid) else {"min": None, "max": None}
    by = records.group_by(["domain", "split"]).aggregate([("id", "count")]).to_pylist()
    domains: dict[str, dict[str, dict[str, int]]] = {}
    for row in by:
        domains.setdefault(row["domain"] or "unspecified", {})[row["split"]] = {
            "documents": row["id_count"]
        }
    for split, per in ((seg_stats or {}).get("domains") or {}).items():
        for dom, c in per.items():
            domains.setdefault(dom, {}).setdefault(split, {}).update(c)
    spans = records.group_by("split").aggregate([("date", "min"), ("date", "max")]).to_pylist()
    return {
        "dates": {
            "with_date": len(valid),
            "without_date": len(dates) - len(valid),
            "min": lo_hi["min"],
            "max": lo_hi["max"],
            "cutoff": lo_hi["max"],
            # per split: what a model trained on this data saw (train) and is measured on
            "by_split": {
                r["split"]: {"min": r["date_min"], "max": r["date_max"]}
                for r in spans
                if r["date_max"] is not None
            },
        },
        "domains": domains,
    }


def _clear_disk_errors(fn):
    """A full disk (or size quota) mid-preparation: one clear error; the previous dataset at
    ``output_dir`` is untouched (the new one is assembled aside and published by rename)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except OSError as err:
            if not is_disk_full(err):
                raise
            out = kwargs.get("output_dir") or (args[1] if len(args) > 1 else None)
            what = getattr(err, "filename", None) or "its files"
            kept = f"; the dataset already at {out} is intact" if out else ""
            reason = err.strerror or str(err).strip().splitlines()[0]
            raise PrepareError(
                f"data preparation could not write {what}: {reason} (disk full or a size "
                f"quota?){kept}"
            ) from err

    return wrapper


@_clear_disk_errors
def prepare_dataset(
    sources: list[str | SourceSpec | dict[str, Any]],
    output_dir: str | None = None,
    *,
    structure: Structure | None = None,
    clean: Clean | None = None,
    filter: Filter | None = None,
    dedup: Dedup | None = None,
    split: Split | None = None,
    decontaminate: Decontaminate | None = None,
    segment: Segment | None = None,
    write: Write | None = None,
    tokenizer: Callable[..., Any] | None = None,
    work_dir: str | Path = ".cache/fmlab/prepare",
    cache_dir: str | Path = ".cache/fmlab",
    num_proc: int = 1,
    batch_size: int = 1000,
    progress: bool = True,
    storage_options: dict[str, Any] | None = None,
    tokenizer_train_docs: int | None = None,
    name: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Run the pipeline; return the data card (``card["path"]``: where the dataset is).

    Args:
        sources: Source paths/URIs/names or :class:`SourceSpec` (dicts).
        output_dir: Local directory or fsspec URI; default ``<work_dir>/datasets/<fingerprint>``.
        structure, clean, filter, dedup, split, decontaminate, segment, write: Stage objects
            (None: ``Structure()``/``Split()``/``Write()`` defaults; other stages off).
        tokenizer: ``factory(texts=, fingerprint=, cache_dir=)`` (the ``tokenizer`` config
            group); needed when ``segment`` is set.
        work_dir: Stage cache directory.
        cache_dir: fmlab cache (embedded corpora, tokenizers, HF datasets cache).
        num_proc: Worker processes.
        batch_size: Records per unit of work.
        progress: Show progress bars.
        storage_options: fsspec options for remote sources and outputs (e.g. s3 endpoint_url).
        tokenizer_train_docs: Train a BPE tokenizer on at most this many training documents.
        name: Dataset name in the card (default: the output directory's name).
        force: Rebuild the output even if it is up to date (stages stay cached).
    """
    specs = as_specs(sources)
    structure, split, write = structure or Structure(), split or Split(), write or Write()
    if segment is not None and tokenizer is None:
        raise PrepareError("segment needs a tokenizer (the tokenizer config group)")
    kind = structure.kind
    fits = {"text": (Pack,), "sft": (SFT,), "classification": (Classify,)}
    fits = {**fits, "preference": (Preference,)}[kind]
    if segment is not None and not isinstance(segment, fits):
        raise PrepareError(
            f"segment {type(segment).__name__} does not fit structure.kind='{kind}' "
            f"(use {fits[0].__name__}, or the prepare/recipe that matches the kind)"
        )
    if split.params["by"] == "prompt" and kind not in ("sft", "preference"):
        raise PrepareError(
            f"split.by=prompt needs structure.kind=sft or preference (kind is '{kind}')"
        )
    if write.params["format"] == "streaming" and not isinstance(segment, Pack):
        raise PrepareError(
            "output_format=streaming holds token blocks: prepare with prepare/recipe=pretrain"
        )
    cache_dir, work_dir = str(cache_dir), Path(work_dir).expanduser()
    # resolve every source before reading any: a typo in a path fails in a second
    resolved = [resolve_source(s, storage_options, cache_dir) for s in specs]
    dec = decontaminate if decontaminate is not None and decontaminate.enabled else None
    bench = [resolve_source(b, storage_options, cache_dir) for b in (dec.benchmarks if dec else [])]

    fp = fingerprint(
        PIPELINE_VERSION,
        "structure",
        structure.version,
        structure.params,
        [s.spec.model_dump() for s in resolved],
        [s.identity for s in resolved],
    )
    chain: list[tuple[str, Any, str]] = [("structure", structure, fp)]
    stages: dict[str, dict[str, Any]] = {}  # per stage: settings and what it did, for the card
    for stage in (clean, filter, dedup, decontaminate):
        if stage is not None and not stage.enabled:
            stages[stage.name] = {"enabled": False, "settings": stage.describe()}
    for stage in (clean, filter, dedup):
        if stage is not None and stage.enabled:
            fp = stage.fingerprint(fp)
            chain.append((stage.name, stage, fp))
    fp = fingerprint(fp, "split", split.version, split.describe())  # always adds the split column
    chain.append(("split", split, fp))
    if dec is not None:
        fp = dec.fingerprint(fp, [b.identity for b in bench])
        chain.append(("decontaminate", dec, fp))
    plan = fingerprint(
        fp,
        segment.describe() if segment else None,
        _describe_factory(tokenizer),
        tokenizer_train_docs,
        write.describe(),
    )
    output_dir = output_dir or str(work_dir / "datasets" / plan)
    existing = None if force else load_card(output_dir, storage_options)
    if existing and existing.get("plan_fingerprint") == plan:
        return {**existing, "path": output_dir, "up_to_date": True}

    declared = {s.label: s.split for s in specs if s.split}  # sources with their own split
    runner = Runner(work_dir, num_proc, batch_size, progress)
    with runner.session():
        data: Path | None = None
        for stage_name, stage, stage_fp in chain:
            stats = runner.cached_stats(stage_name, stage_fp)
            if stats is None:
                with runner.stage(stage_name, stage_fp) as (tmp, stats):
                    if stage_name == "structure":
                        stats.update(stage.run(runner, resolved, tmp, cache_dir))
                    else:
                        table = read_table(data)
                        stats["in_bytes"] = _text_bytes(table, kind)
                        extra = {"decontaminate": (bench, cache_dir), "split": (declared,)}.get(
                            stage_name, ()
                        )
                        stats.update(stage.run(runner, table, tmp, kind, *extra))
                        del table
                runner.note(
                    f"{stage_name}: {stats['in']:,} → {stats['out']:,} ({stats['seconds']:.1f}s)"
                )
            else:
                runner.note(f"{stage_name}: cached ({stats['out']:,} records)")
            enabled = getattr(stage, "enabled", True)  # a disabled split still labels (train)
            stages[stage_name] = {"enabled": enabled, "settings": stage.describe(), **stats}
            data = runner.stage_dir(stage_name, stage_fp) / "data.arrow"
        records = read_table(data)
        tok, seg_dir, t_tok = None, None, 0.0
        if segment is not None:
            t0 = time.perf_counter()
            tok = tokenizer(
                texts=_train_texts(records, kind, tokenizer_train_docs),
                fingerprint=fingerprint(fp, tokenizer_train_docs),
                cache_dir=cache_dir,
            )
            t_tok = time.perf_counter() - t0
            if t_tok > 1:  # a cache hit loads in milliseconds: this was a training
                runner.note(f"tokenizer: trained in {t_tok:.1f}s (cached for next time)")
            from fmlab.data.tokenizer import tokenizer_fingerprint

            seg_fp = segment.fingerprint(fp, tokenizer_fingerprint(tok))
            seg_dir = runner.stage_dir("segment", seg_fp)
            stats = runner.cached_stats("segment", seg_fp)
            if stats is None:
                with runner.stage("segment", seg_fp) as (tmp, stats):
                    stats["in_bytes"] = _text_bytes(records, kind)
                    stats.update(segment.run(runner, records, tmp, kind, tok))
                    tok.save_pretrained(str(tmp / "tokenizer"))
        else:
            seg_fp = fingerprint(fp, "records")
            seg_dir = runner.stage_dir("records", seg_fp)
            stats = runner.cached_stats("records", seg_fp)
            if stats is None:
                with runner.stage("records", seg_fp) as (tmp, stats):
                    stats.update(_split_records(runner, records, tmp, kind))
        stages["segment"] = {
            "enabled": segment is not None,
            "settings": segment.describe() if segment else {},
            **stats,
        }
        if t_tok:
            stages["segment"]["tokenizer_seconds"] = round(t_tok, 3)

        t0 = time.perf_counter()
        tmp = staging_dir(output_dir, work_dir)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            rows = write.assemble({s: seg_dir / f"{s}.arrow" for s in SPLITS}, tmp)
            if (seg_dir / "tokenizer").is_dir():
                shutil.copytree(seg_dir / "tokenizer", tmp / "tokenizer")
            lengths = dict(np.load(seg_dir / "lengths.npz"))
            hist = plot_lengths(lengths, tmp) if write.params["plots"] else {}
            card = _card(
                name or Path(output_dir.rstrip("/")).name,
                kind,
                segment,
                stages,
                rows,
                records,
                stats,
                tok,
                hist,
                plan,
                seg_fp,
                specs,
            )
            card["stages"]["write"] = {
                "enabled": True,
                "settings": write.describe(),
                "seconds": round(time.perf_counter() - t0, 3),
            }
            write_json(tmp / "card.json", card)
            atomic_write_text(tmp / "card.md", card_markdown(card))
            publish(tmp, output_dir, storage_options)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return {**card, "path": output_dir, "up_to_date": False}


def _card(name, kind, segment, stages, rows, records, seg_stats, tok, hist, plan, fp, specs):
    summary = _summaries(records, seg_stats)
    splits = {}
    for s in SPLITS:
        info = dict(seg_stats.get("splits", {}).get(s, {}))
        info.setdefault("documents", 0)
        info["rows"] = rows.get(s, 0)
        splits[s] = info
    for name_, st in stages.items():
        if st.get("seconds"):
            st["docs_per_s"] = round(st.get("in", 0) / st["seconds"], 1)
            nbytes = st.get("bytes") if name_ == "structure" else st.get("in_bytes")
            if nbytes:
                st["mb_per_s"] = round(nbytes / 1e6 / st["seconds"], 2)
    all_stages = {
        n: stages.get(n, {"enabled": False})
        for n in ("structure", "clean", "filter", "dedup", "split", "decontaminate", "segment")
    }
    card = {
        "name": name,
        "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "kind": kind,
        "segment": {
            "mode": segment.mode if segment else "records",
            **(segment.describe() if segment else {}),
        },
        "fingerprint": fp,
        "plan_fingerprint": plan,
        "pipeline_version": PIPELINE_VERSION,
        "splits": splits,
        "stages": all_stages,
        "sources": stages["structure"]["sources"],
        # which splits came from which source: declared (split: ...) or hash-split (null)
        "split_sources": _by_source(records, specs),
        "duplicates": stages.get("dedup", {}).get("clusters"),
        **summary,
        "histograms": hist,
        "settings": {
            "sources": [s.model_dump(exclude_defaults=True) for s in specs],
            **{n: st.get("settings", {}) for n, st in all_stages.items()},
        },
    }
    if tok is not None:
        card["tokenizer"] = {
            "name": getattr(tok, "name_or_path", "") or "bpe (trained here)",
            "vocab_size": len(tok),
            "eos_token": tok.eos_token,
        }
    if "labels" in seg_stats:
        card["labels"] = seg_stats["labels"]
    return card
