"""``fmlab-prepare engine=spark output_format=streaming``: tokenize and pack on the executors.

The Spark job of :mod:`fmlab.data.spark` leaves the records per split as Parquet parts in corpus
order (``part-00000-*``, ``part-00001-*``, ...). Here every part is one task, so no part passes
through the driver:

1. each task tokenizes its part with the single-machine code (``_pack_task``) and reports its
   token count and its last ``block_size - 1`` tokens (kept, with the tokens, on the executors);
2. the driver places the parts on the split's token stream (offsets) and gives each part the
   tokens of the block it starts in that lie in earlier parts (at most ``block_size - 1``);
3. each task packs that carry plus its own tokens into the blocks that *end* in its part,
   writes them as litdata chunks ``chunk-<part>-<n>.bin`` (straight to the output, or to local
   disk and then uploaded) and returns its index; the driver concatenates the indexes in part
   order into the split's ``index.json``.

Every block of the single-machine stream ends in exactly one part, so the rows and their order
are those of ``fmlab-prepare output_format=streaming`` on one machine. Sliding-window
validation/test rows (``segment.eval_stride``) never cross documents: each part writes its own.
The tokenizer is trained on the driver from the training records (at most
``tokenizer_train_docs`` of them), or loaded (``tokenizer=pretrained``: nothing is read there).
A local ``output_dir`` must be on a filesystem the executors share (in local mode: this machine);
an ``s3://`` one is written by the executors through fsspec.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fmlab.data.pipeline.card import card_markdown, plot_lengths
from fmlab.data.pipeline.engine import fingerprint
from fmlab.data.pipeline.records import PrepareError, content_of
from fmlab.data.pipeline.segment import Pack, _pack_task, _Stats
from fmlab.data.pipeline.write import Write, _refuse_foreign, _size, load_card, staging_dir
from fmlab.data.splits import SPLITS
from fmlab.data.streaming.chunks import merge_indexes, write_chunks
from fmlab.data.streaming.storage import INDEX
from fmlab.utils.remote import is_remote, open_fs

__all__ = ["carries", "pack_on_spark", "pack_part"]

_LENGTHS_PER_PART = 10_000  # documents per part whose lengths go into the card's histograms


def _parts(fs: Any, root: str, split: str) -> list[str]:
    """The Parquet parts of a split of the records, in corpus order."""
    return sorted(fs.glob(f"{root}/{split}/*.parquet"))


def _read_part(path: str, options: dict[str, Any] | None) -> pa.Table:
    fs, root = open_fs(path, options)
    with fs.open(root, "rb") as fh:
        return pq.read_table(fh)


def _train_texts(paths: list[str], options: dict | None, kind: str, limit: int | None):
    def texts() -> Iterator[str]:
        n = 0
        for path in paths:
            for batch in _read_part(path, options).to_batches(max_chunksize=1000):
                for text in content_of(batch.to_pydict(), kind):
                    if limit is not None and n >= limit:
                        return
                    n += 1
                    yield text

    return texts


def _suffix(tokens: np.ndarray, lens: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The last ``n`` tokens of a stream and the lengths of the document pieces they form."""
    if n == 0:
        return tokens[:0], lens[:0]
    ends = np.cumsum(lens)
    first = int(np.searchsorted(ends, len(tokens) - n, side="right"))
    pieces = lens[first:].copy()
    pieces[0] = ends[first] - (len(tokens) - n)
    return tokens[len(tokens) - n :], pieces


def carries(tails: list[dict[str, Any]], block: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each part, the tokens (and piece lengths) of earlier parts in its first block."""
    out, offset = [], 0
    for f, tail in enumerate(tails):
        need, toks, lens = offset % block, [], []
        g = f - 1
        while need > 0:
            t, piece = _suffix(
                tails[g]["tokens"], tails[g]["lens"], min(need, len(tails[g]["tokens"]))
            )
            toks.insert(0, t)
            lens.insert(0, piece)
            need -= len(t)
            g -= 1
        dtype = tail["tokens"].dtype
        out.append(
            (
                np.concatenate(toks) if toks else np.zeros(0, dtype),
                np.concatenate(lens) if lens else np.zeros(0, np.int64),
            )
        )
        offset += tail["n"]
    return out


def _tokenize(item: tuple[int, str], *, split, kind, tok, dtype, chunk, options) -> tuple:
    """One part tokenized, batch by batch, by the single-machine task (``_pack_task``)."""
    index, path = item
    parts = []
    for batch in _read_part(path, options).to_batches(max_chunksize=1000):
        labels = pa.array([split] * batch.num_rows, pa.string())
        batch = pa.RecordBatch.from_arrays([*batch.columns, labels], [*batch.schema.names, "split"])
        parts.append(_pack_task(batch, tok, kind, dtype, chunk))
    return index, parts


def _summary(item: tuple, split: str, block: int) -> dict[str, Any]:
    """What the driver needs of a tokenized part: its size, tail and statistics."""
    index, parts = item
    stats = _Stats()
    for part in parts:
        stats.add({k: part[k] for k in ("splits", "domains", "lengths")})
    streams = [p["streams"][split] for p in parts if split in p["streams"]]
    tokens = np.concatenate([s for s, _ in streams]) if streams else np.zeros(0, np.uint32)
    lens = np.concatenate([n for _, n in streams]) if streams else np.zeros(0, np.int64)
    tail_tokens, tail_lens = _suffix(tokens, lens, min(len(tokens), block - 1))
    lengths = {k: np.concatenate(v) for k, v in stats.lengths[split].items()}
    step = max(1, len(lengths.get("tokens", [])) // _LENGTHS_PER_PART)
    return {
        "index": index,
        "n": len(tokens),
        "tokens": tail_tokens,
        "lens": tail_lens,
        "splits": dict(stats.splits[split]),
        "domains": {d: dict(c) for d, c in stats.domains[split].items()},
        "lengths": {k: v[::step] for k, v in lengths.items()},
    }


def pack_part(
    carry: tuple[np.ndarray, np.ndarray],
    streams: list[tuple[np.ndarray, np.ndarray]],
    block: int,
    dtype: Any,
    document_mask: bool,
) -> list[dict[str, np.ndarray]]:
    """The rows of the blocks that end in one part: ``carry`` (earlier parts' tokens of its
    first block, with their piece lengths) then the part's own streams (tokens, lengths)."""
    from fmlab.data.packing import BlockPacker

    packer = BlockPacker(block, dtype, document_mask)
    rows: list[dict[str, np.ndarray]] = []
    for stream, lens in [carry, *streams]:
        if not len(stream):
            continue
        blocks = packer.add(np.asarray(stream, dtype), np.asarray(lens))
        if blocks is not None:
            rows += [{k: v[i] for k, v in blocks.items()} for i in range(len(blocks["input_ids"]))]
    return rows


def _write_part(item: tuple, carries, *, split, segment, dtype, out, chunk_bytes, options) -> dict:
    """Pack (carry + this part) into blocks, write them as chunks; returns the part's index."""
    index, parts = item
    p = segment.params
    if p["eval_stride"] and split != "train":  # windows never cross documents
        rows = [
            {k: v[i] for k, v in windows.items()}
            for part in parts
            if (windows := part["chunks"].get(split))
            for i in range(len(windows["input_ids"]))
        ]
    else:
        streams = [part["streams"][split] for part in parts if split in part["streams"]]
        rows = pack_part(carries[index], streams, p["block_size"], dtype, p["document_mask"])
    local = Path(tempfile.mkdtemp(prefix=f"fmlab-chunks-{index}-")) if is_remote(out) else None
    target = local or Path(out) / split
    try:
        part_index = write_chunks(rows, target, chunk_bytes, part=index)
        if local is not None and part_index:
            fs, root = open_fs(f"{out.rstrip('/')}/{split}", options)
            files = sorted(local.glob("chunk-*.bin"))
            fs.put([str(f) for f in files], [f"{root}/{f.name}" for f in files])
    finally:
        if local is not None:
            shutil.rmtree(local, ignore_errors=True)
    return {"index": index, "rows": len(rows), "part": part_index}


def _plan(records: dict[str, Any], segment: Pack, write: Write, factory: Any, limit: Any) -> str:
    from fmlab.data.pipeline.run import _describe_factory

    describe = _describe_factory(factory)
    return fingerprint(
        records["plan_fingerprint"], segment.describe(), describe, limit, write.describe()
    )


def pack_on_spark(
    spark: Any,
    records: dict[str, Any],
    records_dir: str,
    output_dir: str,
    *,
    kind: str,
    segment: Pack,
    write: Write,
    tokenizer: Callable[..., Any],
    work_dir: str,
    cache_dir: str,
    storage_options: dict[str, Any] | None,
    tokenizer_train_docs: int | None,
    name: str | None,
    force: bool,
) -> dict[str, Any]:
    """Tokenize, pack and write ``records_dir`` (a Spark records dataset whose card is
    ``records``) as a streaming dataset at ``output_dir``; returns its card."""
    from fmlab.data.packing import token_dtype

    if kind != "text" or not isinstance(segment, Pack):
        raise PrepareError(
            "output_format=streaming holds token blocks: use prepare/recipe=pretrain"
        )
    plan = _plan(records, segment, write, tokenizer, tokenizer_train_docs)
    existing = None if force else load_card(output_dir, storage_options)
    if existing and existing.get("plan_fingerprint") == plan:
        return {**existing, "path": output_dir, "up_to_date": True}
    t0 = time.perf_counter()
    fs, root = open_fs(records_dir, storage_options, "spark.records_dir")
    protocol = "" if not is_remote(records_dir) else records_dir.split("://")[0] + "://"
    parts = {s: [f"{protocol}{p}" for p in _parts(fs, root, s)] for s in SPLITS}
    tok = tokenizer(
        texts=_train_texts(parts["train"], storage_options, kind, tokenizer_train_docs),
        fingerprint=fingerprint(records["plan_fingerprint"], tokenizer_train_docs),
        cache_dir=cache_dir,
    )
    t_tok = time.perf_counter() - t0
    dtype = token_dtype(len(tok))
    p = segment.params
    chunk = None
    if p["eval_stride"]:
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        chunk = {"block": p["block_size"], "stride": p["eval_stride"], "pad": pad}

    out_fs, out_root = open_fs(output_dir, storage_options, "output_dir")
    _refuse_foreign(out_fs, out_root, output_dir)
    remote = is_remote(output_dir)
    tmp = None if remote else staging_dir(output_dir, Path(work_dir).expanduser())
    target = output_dir if remote else str(tmp)
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    elif out_fs.exists(out_root):  # incomplete from here on; old chunks must not linger
        if out_fs.isfile(f"{out_root}/card.json"):
            out_fs.rm(f"{out_root}/card.json")
        out_fs.rm(out_root, recursive=True)
    session, created = spark.session()
    sc = session.sparkContext
    stats, rows, lengths = _Stats(), {}, {}
    try:
        for split in SPLITS:
            if not parts[split]:
                rows[split] = 0
                continue
            task = functools.partial(
                _tokenize, split=split, kind=kind, tok=tok, dtype=dtype.str, chunk=chunk,
                options=storage_options,
            )  # fmt: skip
            tokenized = sc.parallelize(list(enumerate(parts[split])), len(parts[split])).map(task)
            tokenized = tokenized.persist()  # pass 2 packs what pass 1 tokenized
            tails = sorted(
                tokenized.map(
                    functools.partial(_summary, split=split, block=p["block_size"])
                ).collect(),
                key=lambda t: t["index"],
            )
            for t in tails:
                stats.splits[split].update(t["splits"])
                for dom, c in t["domains"].items():
                    stats.domains[split][dom].update(c)
                for k, v in t["lengths"].items():
                    stats.lengths[split][k].append(v)
            carries_ = carries(tails, p["block_size"])
            write_task = functools.partial(
                _write_part, carries=carries_, split=split, segment=segment, dtype=dtype,
                out=target, chunk_bytes=_size(write.params["chunk_bytes"]),
                options=storage_options,
            )  # fmt: skip
            written = sorted(tokenized.map(write_task).collect(), key=lambda w: w["index"])
            tokenized.unpersist()
            rows[split] = sum(w["rows"] for w in written)
            index = merge_indexes([w["part"] for w in written]) if rows[split] else None
            if index is not None:
                split_fs, split_root = open_fs(f"{target.rstrip('/')}/{split}", storage_options)
                split_fs.pipe_file(
                    f"{split_root}/{INDEX}", json.dumps(index, sort_keys=True).encode()
                )
            total = sum(t["n"] for t in tails)
            dropped = 0 if chunk and split != "train" else total % p["block_size"]
            stats.splits[split].update(rows=rows[split], dropped_tail_tokens=dropped)
            lengths.update(
                {f"{split}/{k}": np.concatenate(v) for k, v in stats.lengths[split].items()}
            )
    finally:
        if created:
            session.stop()
    card = _card(records, records_dir, stats, tok, segment, write, plan, name or output_dir)
    card["stages"]["segment"]["tokenizer_seconds"] = round(t_tok, 3)
    card["stages"]["write"]["seconds"] = round(time.perf_counter() - t0, 3)
    _publish(card, tok, lengths, write, output_dir, tmp, storage_options)
    return {**card, "path": output_dir, "up_to_date": False}


def _card(records, records_dir, stats, tok, segment, write, plan, name) -> dict[str, Any]:
    splits = {s: {"documents": 0, **dict(stats.splits[s])} for s in SPLITS}
    docs = sum(v["documents"] for v in splits.values())
    card = {k: v for k, v in records.items() if k not in ("path", "up_to_date")}
    card["name"] = str(name).rstrip("/").split("/")[-1]
    card["created"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    card["segment"] = {"mode": segment.mode, **segment.describe()}
    card["plan_fingerprint"] = card["fingerprint"] = plan
    card["splits"] = splits
    for split, per in stats.domains.items():
        for dom, c in per.items():
            card["domains"].setdefault(dom, {}).setdefault(split, {}).update(c)
    card["stages"] = {
        **records["stages"],
        "segment": {"enabled": True, "settings": segment.describe(), "in": docs, "out": docs,
                    "removed": {}},
        "write": {"enabled": True, "settings": write.describe()},
    }  # fmt: skip
    card["settings"] = {
        **records["settings"],
        "segment": segment.describe(),
        "write": write.describe(),
    }
    card["engine"] = {**records.get("engine", {}), "records": records_dir}
    card["tokenizer"] = {
        "name": getattr(tok, "name_or_path", "") or "bpe (trained here)",
        "vocab_size": len(tok),
        "eos_token": tok.eos_token,
    }
    return card


def _publish(card, tok, lengths, write, output_dir, tmp, options) -> None:
    """Tokenizer, plots, card.md and (last) card.json; a local output is swapped in by rename."""
    from fmlab.data.pipeline.write import publish

    local = Path(tmp) if tmp is not None else Path(tempfile.mkdtemp(prefix="fmlab-card-"))
    try:
        tok.save_pretrained(str(local / "tokenizer"))
        card["histograms"] = plot_lengths(lengths, local) if write.params["plots"] else {}
        (local / "card.md").write_text(card_markdown(card))
        (local / "card.json").write_text(json.dumps(card, indent=1, default=str))
        if tmp is not None:
            publish(local, output_dir, options)
            return
        fs, root = open_fs(output_dir, options, "output_dir")
        files = sorted(p for p in local.rglob("*") if p.is_file() and p.name != "card.json")
        fs.put(
            [str(p) for p in files], [f"{root}/{p.relative_to(local).as_posix()}" for p in files]
        )
        fs.put_file(str(local / "card.json"), f"{root}/card.json")
    finally:
        shutil.rmtree(local, ignore_errors=True)
