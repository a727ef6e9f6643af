"""Deduplicate stage: exact (normalized-text hash) and near duplicates (MinHash LSH, datasketch).

The first occurrence of a document is kept; later exact copies and near-duplicates (estimated
Jaccard similarity of word 5-gram shingles at or above ``threshold``) are removed. Workers compute
the MinHash signatures; this process decides document by document, in corpus order, as the
signatures arrive (so "first" is well defined, and the serial index work overlaps with the
workers): an exact-hash lookup, then a query of the ``datasketch.MinHashLSH`` index. Candidates
are verified against the threshold with the MinHash estimate (LSH alone lets some lower pairs
through). Signatures live in a memory-mapped file; the LSH index and the exact-hash table are in
memory (tens of bytes per document per band). Duplicate clusters go to the data card.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pyarrow as pa
from datasketch import LeanMinHash, MinHash, MinHashLSH
from pydantic import Field

from fmlab.data.pipeline.engine import ArrowSink, Runner, Stage
from fmlab.data.pipeline.hashing import doc_hash, ngram_hashes, normalized_words, word_hashes
from fmlab.data.pipeline.records import content_of

__all__ = ["Dedup"]

_SCHEME = "affine32"
_TEMPLATES: dict[tuple[int, int], MinHash] = {}


def _identity(value: int) -> int:
    # shingles arrive already hashed (32-bit), so datasketch's hash function is the identity
    return value


def _template(num_perm: int, seed: int) -> MinHash:
    key = (num_perm, seed)
    if key not in _TEMPLATES:  # permutations are drawn once per process
        _TEMPLATES[key] = MinHash(num_perm=num_perm, seed=seed, hashfunc=_identity, scheme=_SCHEME)
    return _TEMPLATES[key]


def _signatures(
    batch: pa.RecordBatch, kind: str, ngram: int, num_perm: int, seed: int, near: bool
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Exact hashes ``(B,)``, MinHash signatures ``(B, num_perm)`` and shingle counts ``(B,)``."""
    texts = content_of(batch.to_pydict(), kind)
    exact = np.empty(len(texts), dtype=np.uint64)
    sigs = np.empty((len(texts), num_perm), dtype=np.uint32) if near else None
    sizes = np.zeros(len(texts), dtype=np.int64)
    template = _template(num_perm, seed) if near else None
    for i, text in enumerate(texts):
        words = normalized_words(text)
        exact[i] = doc_hash(words)
        if near:
            shingles = ngram_hashes(word_hashes(words), ngram, short=True) >> np.uint64(32)
            sizes[i] = len(shingles)
            m = template.copy()
            m.update_batch(shingles.tolist())
            sigs[i] = m.hashvalues
    return exact, sigs, sizes


class Dedup(Stage):
    """Remove exact and near-duplicate documents, keeping the first occurrence.

    Args:
        enabled: Run this stage.
        exact: Remove documents whose normalized text (lowercase, no punctuation, single
            spaces) equals an earlier one's.
        near: Remove near-duplicates by MinHash LSH.
        threshold: Jaccard similarity (of word n-gram sets) at which two documents are
            near-duplicates.
        num_perm: MinHash permutations (more: more precise estimates, slower).
        ngram: Words per shingle.
        seed: Seed of the MinHash permutations.
        clusters: Largest duplicate clusters listed in the data card.
    """

    name = "dedup"
    version = 1

    def __init__(
        self,
        enabled: bool = True,
        exact: bool = True,
        near: bool = True,
        threshold: Annotated[float, Field(gt=0.0, le=1.0)] = 0.8,
        num_perm: Annotated[int, Field(ge=16, le=1024)] = 128,
        ngram: Annotated[int, Field(ge=1)] = 5,
        seed: int = 1,
        clusters: Annotated[int, Field(ge=0)] = 10,
    ) -> None:
        super().__init__(
            enabled,
            exact=exact,
            near=near,
            threshold=threshold,
            num_perm=num_perm,
            ngram=ngram,
            seed=seed,
        )
        self.clusters = clusters

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "clusters": self.clusters}

    def run(self, runner: Runner, table: pa.Table, out: Path, kind: str) -> dict[str, Any]:
        p = self.params
        n = table.num_rows
        task = functools.partial(
            _signatures,
            kind=kind,
            ngram=p["ngram"],
            num_perm=p["num_perm"],
            seed=p["seed"],
            near=p["near"],
        )
        sigs = (
            np.lib.format.open_memmap(
                out / "signatures.npy", mode="w+", dtype=np.uint32, shape=(n, p["num_perm"])
            )
            if p["near"]
            else None
        )
        rep = np.arange(n)  # representative (the kept document) of each document
        first: dict[int, int] = {}  # normalized-text hash -> first document with it
        similarity: dict[int, float] = {}
        lsh = MinHashLSH(threshold=p["threshold"], num_perm=p["num_perm"]) if p["near"] else None
        n_exact, row = 0, 0
        # Documents are decided in order as their signatures arrive, so this (serial) index work
        # overlaps with the workers computing the next signatures.
        for ex, sg, sz in runner.map(runner.batches(table), task, description="dedup", total=n):
            if sigs is not None:
                sigs[row : row + len(ex)] = sg
            for k, h in enumerate(ex.tolist()):
                i = row + k
                if p["exact"]:
                    j = first.setdefault(h, i)
                    if j != i:  # j came earlier and is decided: share its representative
                        rep[i] = rep[j]
                        n_exact += 1
                        continue
                if lsh is not None and sz[k] > 0:  # an empty shingle set would match all
                    self._near(lsh, sigs, i, rep, similarity)
            row += len(ex)
        del sigs
        (out / "signatures.npy").unlink(missing_ok=True)
        keep = rep == np.arange(n)
        n_near = int(n - keep.sum()) - n_exact

        with ArrowSink(out / "data.arrow", table.schema) as sink:
            start = 0
            for batch in runner.batches(table):
                sink.write(batch.filter(pa.array(keep[start : start + batch.num_rows])))
                start += batch.num_rows
        return {
            "in": n,
            "out": sink.rows,
            "removed": {"exact": n_exact, "near": n_near},
            "clusters": self._clusters(table, rep, similarity, kind),
        }

    def _near(
        self,
        lsh: MinHashLSH,
        sigs: np.ndarray,
        i: int,
        rep: np.ndarray,
        similarity: dict[int, float],
    ) -> None:
        """Point document ``i`` at the most similar earlier kept document, or index it."""
        p = self.params
        mh = LeanMinHash(seed=p["seed"], hashvalues=sigs[i], scheme=_SCHEME)
        best, best_j = -1, -1.0
        for c in lsh.query(mh):
            # the MinHash Jaccard estimate (as MinHash.jaccard), on the stored signatures
            j = float(np.count_nonzero(sigs[c] == sigs[i])) / p["num_perm"]
            if j >= p["threshold"] and (j > best_j or (j == best_j and c < best)):
                best, best_j = c, j
        if best >= 0:
            rep[i] = best
            similarity[i] = best_j
        else:
            lsh.insert(i, mh, check_duplication=False)

    def _clusters(
        self,
        table: pa.Table,
        rep: np.ndarray,
        similarity: dict[int, float],
        kind: str,
    ) -> dict[str, Any]:
        members: dict[int, list[int]] = defaultdict(list)
        for i in np.flatnonzero(rep != np.arange(len(rep))):
            members[int(rep[i])].append(int(i))
        sizes = np.array([len(m) + 1 for m in members.values()], dtype=np.int64)
        hist = {
            "2": int((sizes == 2).sum()),
            "3-5": int(((sizes >= 3) & (sizes <= 5)).sum()),
            "6-10": int(((sizes >= 6) & (sizes <= 10)).sum()),
            ">10": int((sizes > 10).sum()),
        }
        largest = sorted(members.items(), key=lambda kv: (-len(kv[1]), kv[0]))[: self.clusters]
        ids = table.column("id")
        text_col = table.column("prompt" if kind in ("sft", "preference") else "text")
        listed = []
        for keep, dups in largest:
            near = [d for d in dups if d in similarity]
            listed.append(
                {
                    "kept": ids[keep].as_py(),
                    "size": len(dups) + 1,
                    "removed": [ids[d].as_py() for d in dups[:10]],
                    "exact": len(dups) - len(near),
                    "near": len(near),
                    "min_jaccard": round(min((similarity[d] for d in near), default=1.0), 3),
                    "snippet": " ".join(text_col[keep].as_py().split())[:160],
                }
            )
        return {"count": len(members), "size_histogram": hist, "largest": listed}
