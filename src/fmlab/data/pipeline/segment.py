"""Segment stage: tokenize every split and cut it into training rows.

- :class:`Pack` (pre-training): documents + EOS packed into blocks of ``block_size``; optionally
  ``seq_ids``/``position_ids`` per block (no attention across documents, where the model takes a
  4-D mask or position ids) and sliding-window chunks with overlap for validation/test.
- :class:`SFT`: prompt/response → :func:`fmlab.data.sft.encode_sft` (template or chat template,
  labels -100 on the prompt); rows whose response is truncated away are dropped and counted;
  optionally packed with :func:`fmlab.data.sft.pack_sft` (masks stay right across examples).
- :class:`Classify`: input text → ids (EOS appended, truncated to ``max_length``) + label.

Tokenization runs in worker processes; packing streams in this process, one block at a time.
"""

from __future__ import annotations

import functools
from collections import Counter, defaultdict
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pyarrow as pa
from pydantic import Field

from fmlab.data.packing import BlockPacker, chunk_document, token_dtype
from fmlab.data.pipeline.engine import ArrowSink, Runner, Stage
from fmlab.data.pipeline.records import content_of
from fmlab.data.splits import SPLITS

__all__ = ["SFT", "Classify", "Pack", "encode_texts"]

PosInt = Annotated[int, Field(gt=0)]


def encode_texts(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens (the fast backend directly when there is
    one: the ``__call__`` wrapper also builds masks nobody uses here)."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if tokenizer.is_fast else None
    if backend is None:
        return tokenizer(texts, add_special_tokens=False)["input_ids"]
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    return [e.ids for e in encode(texts, add_special_tokens=False)]


def _domain(value: str | None) -> str:
    return value or "unspecified"


def _per_split(cols: dict[str, list]) -> dict[str, list[int]]:
    rows: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(cols["split"]):
        rows[s].append(i)
    return rows


def _fixed(matrix: np.ndarray, arrow_type: pa.DataType) -> pa.Array:
    values = pa.array(matrix.reshape(-1), type=arrow_type)
    return pa.FixedSizeListArray.from_arrays(values, matrix.shape[1])


class _Stats:
    """Documents, tokens and lengths per split and per domain (for the card and histograms)."""

    def __init__(self) -> None:
        self.splits: dict[str, Counter] = {s: Counter() for s in SPLITS}
        self.domains: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
        self.lengths: dict[str, dict[str, list[np.ndarray]]] = defaultdict(
            lambda: defaultdict(list)
        )

    def add(self, part: dict[str, Any]) -> None:
        for split, c in part["splits"].items():
            self.splits[split].update(c)
        for split, per in part["domains"].items():
            for dom, c in per.items():
                self.domains[split][dom].update(c)
        for split, per in part["lengths"].items():
            for key, arr in per.items():
                self.lengths[split][key].append(arr)

    def save(self, out: Path) -> dict[str, Any]:
        arrays = {
            f"{split}/{key}": np.concatenate(parts).astype(np.int64)
            for split, per in self.lengths.items()
            for key, parts in per.items()
        }
        np.savez_compressed(out / "lengths.npz", **arrays)
        return {
            "splits": {s: dict(c) for s, c in self.splits.items()},
            "domains": {s: {d: dict(c) for d, c in per.items()} for s, per in self.domains.items()},
        }


def _doc_stats(cols: dict, rows: dict[str, list[int]], texts: list[str], ntok: list[int]):
    part: dict[str, Any] = {"splits": {}, "domains": {}, "lengths": {}}
    for split, idx in rows.items():
        part["splits"][split] = Counter(documents=len(idx), tokens=sum(ntok[i] for i in idx))
        doms: dict[str, Counter] = defaultdict(Counter)
        for i in idx:
            doms[_domain(cols["domain"][i])].update(documents=1, tokens=ntok[i])
        part["domains"][split] = doms
        part["lengths"][split] = {
            "chars": np.array([len(texts[i]) for i in idx], dtype=np.int64),
            "tokens": np.array([ntok[i] for i in idx], dtype=np.int64),
        }
    return part


# ---------------------------------------------------------------------------- pre-training
def _pack_task(batch: pa.RecordBatch, tok: Any, kind: str, dtype: str, chunk: dict | None):
    cols = batch.to_pydict()
    texts = content_of(cols, kind)
    ids = encode_texts(tok, texts)
    eos = tok.eos_token_id
    rows = _per_split(cols)
    ntok = [len(x) + 1 for x in ids]
    part = _doc_stats(cols, rows, texts, ntok)
    part["streams"], part["chunks"] = {}, {}
    for split, idx in rows.items():
        if chunk is not None and split != "train":
            windows = [
                chunk_document(
                    np.array([*ids[i], eos]), chunk["block"], chunk["stride"], chunk["pad"]
                )
                for i in idx
            ]
            part["chunks"][split] = {k: np.concatenate([w[k] for w in windows]) for k in windows[0]}
            continue
        lens = np.array([ntok[i] for i in idx], dtype=np.int64)
        stream = np.empty(int(lens.sum()), dtype=dtype)
        ends = np.cumsum(lens)
        for i, end in zip(idx, ends):
            stream[end - ntok[i] : end - 1] = ids[i]
        stream[ends - 1] = eos  # every document ends with EOS
        part["streams"][split] = (stream, lens)
    return part


class Pack(Stage):
    """Pre-training rows: tokenize, append EOS, pack into fixed-length blocks.

    Args:
        block_size: Tokens per block (the training sequence length).
        document_mask: Store ``seq_ids``/``position_ids`` per block so documents need not attend
            to each other (the DataModule then builds a block-diagonal causal mask).
        eval_stride: If set, validation/test documents are not packed but cut into windows of
            ``block_size`` starting every ``eval_stride`` tokens (overlap = context), padded.
    """

    name = "segment"
    version = 1
    mode = "pack"

    def __init__(
        self,
        block_size: PosInt = 2048,
        document_mask: bool = False,
        eval_stride: PosInt | None = None,
    ) -> None:
        if eval_stride is not None and eval_stride > block_size:
            raise ValueError(f"segment.eval_stride={eval_stride} must be <= block_size")
        super().__init__(
            mode="pack", block_size=block_size, document_mask=document_mask, eval_stride=eval_stride
        )

    def run(self, runner: Runner, table: pa.Table, out: Path, kind: str, tok: Any) -> dict:
        p, vocab = self.params, len(tok)
        dtype = token_dtype(vocab)
        id_type = pa.from_numpy_dtype(dtype)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        chunk = None
        if p["eval_stride"]:
            chunk = {"block": p["block_size"], "stride": p["eval_stride"], "pad": pad}
        block_fields = [pa.field("input_ids", pa.list_(id_type, p["block_size"]))]
        if p["document_mask"]:
            for name in ("seq_ids", "position_ids"):
                block_fields.append(pa.field(name, pa.list_(pa.int32(), p["block_size"])))
        chunk_fields = [
            pa.field(k, pa.list_(pa.int32(), p["block_size"]))
            for k in ("input_ids", "labels", "attention_mask")
        ]
        schemas = {
            s: pa.schema(chunk_fields if chunk and s != "train" else block_fields) for s in SPLITS
        }
        sinks = {s: ArrowSink(out / f"{s}.arrow", schemas[s]) for s in SPLITS}
        packers = {s: BlockPacker(p["block_size"], dtype, p["document_mask"]) for s in SPLITS}
        stats = _Stats()
        task = functools.partial(_pack_task, tok=tok, kind=kind, dtype=dtype.str, chunk=chunk)
        try:
            for part in runner.map(
                runner.batches(table), task, description="tokenize + pack", total=table.num_rows
            ):
                stats.add(part)
                for split, (stream, lens) in part["streams"].items():
                    blocks = packers[split].add(stream, lens)
                    if blocks is not None:
                        arrays = [_fixed(blocks["input_ids"], id_type)]
                        arrays += [_fixed(blocks[k], pa.int32()) for k in schemas[split].names[1:]]
                        sinks[split].write(
                            pa.RecordBatch.from_arrays(arrays, schema=schemas[split])
                        )
                for split, windows in part["chunks"].items():
                    arrays = [_fixed(windows[k], pa.int32()) for k in schemas[split].names]
                    sinks[split].write(pa.RecordBatch.from_arrays(arrays, schema=schemas[split]))
        finally:
            for sink in sinks.values():
                sink.close()
        result = stats.save(out)
        for s in SPLITS:
            result["splits"][s].update(rows=sinks[s].rows, dropped_tail_tokens=packers[s].tail)
        return {"in": table.num_rows, "out": table.num_rows, "removed": {}, **result}


# ---------------------------------------------------------------------------- SFT
def _sft_task(batch: pa.RecordBatch, tok: Any, fmt: dict[str, Any], max_length: int):
    from fmlab.data.sft import encode_sft

    cols = batch.to_pydict()
    rows = _per_split(cols)
    enc = [
        encode_sft(pr, rs, tok, max_length=max_length, **fmt)
        for pr, rs in zip(cols["prompt"], cols["response"])
    ]
    ntok = [len(e["input_ids"]) if e else 0 for e in enc]
    texts = content_of(cols, "sft")
    kept = {s: [i for i in idx if enc[i] is not None] for s, idx in rows.items()}
    part = _doc_stats(cols, {s: k for s, k in kept.items() if k}, texts, ntok)
    part["dropped"] = {s: len(idx) - len(kept[s]) for s, idx in rows.items()}
    part["examples"] = {s: [enc[i] for i in k] for s, k in kept.items()}
    part["dropped_ids"] = [cols["id"][i] for i, e in enumerate(enc) if e is None][:5]
    return part


class SFT(Stage):
    """SFT rows: prompt-masked labels, truncation, optional packing.

    Args:
        max_length: Longest example (and packed row) in tokens.
        template: Python format string with ``{prompt}`` (ignored with ``chat_template``).
        chat_template: Use the tokenizer's chat template.
        system: System message for the chat template.
        pack: Pack several examples per row (``position_ids`` and ``seq_ids`` keep them apart).
    """

    name = "segment"
    version = 1
    mode = "sft"

    def __init__(
        self,
        max_length: Annotated[int, Field(gt=1)] = 512,
        template: str = "{prompt}",
        chat_template: bool = False,
        system: str | None = None,
        pack: bool = False,
    ) -> None:
        if "{prompt}" not in template:
            raise ValueError(f"segment.template must contain '{{prompt}}', got {template!r}")
        super().__init__(
            mode="sft",
            max_length=max_length,
            template=template,
            chat_template=chat_template,
            system=system,
            pack=pack,
        )

    def run(self, runner: Runner, table: pa.Table, out: Path, kind: str, tok: Any) -> dict:
        from fmlab.data.sft import pack_sft

        p = self.params
        fmt = {k: p[k] for k in ("template", "chat_template", "system")}
        names = ["input_ids", "labels", *(["position_ids", "seq_ids"] if p["pack"] else [])]
        width = p["max_length"] if p["pack"] else -1
        schema = pa.schema([pa.field(k, pa.list_(pa.int32(), width)) for k in names])
        sinks = {s: ArrowSink(out / f"{s}.arrow", schema) for s in SPLITS}
        pending: dict[str, list[dict]] = {s: [] for s in SPLITS}
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        stats, dropped, dropped_ids = _Stats(), Counter(), []

        def flush(split: str) -> None:
            examples, pending[split] = pending[split], []
            if not examples:
                return
            if p["pack"]:
                rows = pack_sft(examples, p["max_length"], pad)
                arrays = [_fixed(rows[k].astype(np.int32), pa.int32()) for k in names]
            else:
                arrays = [
                    pa.array([e[k] for e in examples], type=schema.field(k).type) for k in names
                ]
            sinks[split].write(pa.RecordBatch.from_arrays(arrays, schema=schema))

        task = functools.partial(_sft_task, tok=tok, fmt=fmt, max_length=p["max_length"])
        try:
            for part in runner.map(
                runner.batches(table), task, description="tokenize (sft)", total=table.num_rows
            ):
                stats.add(part)
                dropped.update(part["dropped"])
                dropped_ids.extend(part["dropped_ids"][: 5 - len(dropped_ids)])
                for split, examples in part["examples"].items():
                    pending[split].extend(examples)
                    if len(pending[split]) >= 4096:  # packing is greedy within a chunk
                        flush(split)
            for split in SPLITS:
                flush(split)
        finally:
            for sink in sinks.values():
                sink.close()
        result = stats.save(out)
        for s in SPLITS:
            result["splits"][s].update(rows=sinks[s].rows, truncated_away=dropped[s])
        removed = {"truncated_away": sum(dropped.values())}
        kept = table.num_rows - removed["truncated_away"]
        return {
            "in": table.num_rows,
            "out": kept,
            "removed": removed,
            **result,
            "examples": dropped_ids,
        }


# ---------------------------------------------------------------------------- classification
def _classify_task(batch: pa.RecordBatch, tok: Any, max_length: int):
    cols = batch.to_pydict()
    ids = encode_texts(tok, cols["text"])
    ids = [[*x[: max_length - 1], tok.eos_token_id] for x in ids]
    rows = _per_split(cols)
    part = _doc_stats(cols, rows, cols["text"], [len(x) for x in ids])
    part["rows"] = {
        s: {
            "input_ids": [ids[i] for i in idx],
            "label": [cols["label"][i] for i in idx],
            "text": [cols["text"][i] for i in idx],
        }
        for s, idx in rows.items()
    }
    part["labels"] = {s: Counter(cols["label"][i] for i in idx) for s, idx in rows.items()}
    return part


class Classify(Stage):
    """Classification rows: input ids (EOS appended, truncated to ``max_length``) and label.

    Args:
        max_length: Longest input in tokens.
    """

    name = "segment"
    version = 1
    mode = "classify"

    def __init__(self, max_length: Annotated[int, Field(gt=1)] = 512) -> None:
        super().__init__(mode="classify", max_length=max_length)

    def run(self, runner: Runner, table: pa.Table, out: Path, kind: str, tok: Any) -> dict:
        schema = pa.schema(
            [("input_ids", pa.list_(pa.int32())), ("label", pa.string()), ("text", pa.string())]
        )
        sinks = {s: ArrowSink(out / f"{s}.arrow", schema) for s in SPLITS}
        stats, labels = _Stats(), {s: Counter() for s in SPLITS}
        task = functools.partial(_classify_task, tok=tok, max_length=self.params["max_length"])
        try:
            for part in runner.map(
                runner.batches(table), task, description="tokenize", total=table.num_rows
            ):
                stats.add(part)
                for split, cols in part["rows"].items():
                    sinks[split].write(cols)
                    labels[split].update(part["labels"][split])
        finally:
            for sink in sinks.values():
                sink.close()
        result = stats.save(out)
        for s in SPLITS:
            result["splits"][s].update(rows=sinks[s].rows)
        result["labels"] = {s: dict(sorted(c.items())) for s, c in labels.items()}
        return {"in": table.num_rows, "out": table.num_rows, "removed": {}, **result}
