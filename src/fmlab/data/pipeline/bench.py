"""A synthetic raw corpus with planted problems, and the preparation benchmark on it.

The corpus imitates web text: documents of sentences drawn from the word frequencies of the
embedded English corpus, in several domains with dates, plus planted exact duplicates,
near-duplicates (a few words changed), junk (repeated lines), boilerplate lines, HTML markup,
personal data and very short documents, so every stage has real work. ``scripts/bench_prepare.py``
is the command line.
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from fmlab.data.pipeline.engine import Runner, cpu_seconds, read_table
from fmlab.data.pipeline.records import content_of

__all__ = ["generate_corpus", "time_tokenization"]

_BOILER = [
    "Subscribe to our newsletter to get the latest stories delivered to your inbox.",
    "Copyright 2024 Example Media Group. All rights reserved. Terms of use apply.",
    "Click here to share this article with your friends on social media today.",
]
_DOMAINS = ["news", "wiki", "forum", "blog"]


def _vocabulary(cache_dir: str) -> tuple[np.ndarray, np.ndarray]:
    from fmlab.data.embedded import iter_embedded

    counts: Counter = Counter()
    for rec in iter_embedded("english"):
        counts.update(re.findall(r"[A-Za-z]+", rec["text"]))
    words, freq = zip(*counts.most_common(20000))
    cdf = np.cumsum(np.asarray(freq, dtype=np.float64))
    return np.asarray(words, dtype=object), np.minimum(cdf / cdf[-1], 1.0)


def _document(rng: np.random.Generator, words: np.ndarray, cdf: np.ndarray) -> str:
    paragraphs = []
    for _ in range(rng.integers(2, 7)):
        lens = rng.integers(8, 26, size=rng.integers(3, 8))
        idx = np.searchsorted(cdf, rng.random(int(lens.sum())))  # sampling by frequency
        sentences, start = [], 0
        for n in lens:
            s = " ".join(words[idx[start : start + n]])
            sentences.append(s[0].upper() + s[1:] + ".")
            start += n
        paragraphs.append(" ".join(sentences))
    return "\n\n".join(paragraphs)


def _mutate(rng: np.random.Generator, text: str, words: np.ndarray, share: float) -> str:
    tokens = text.split(" ")
    for i in rng.choice(len(tokens), size=max(1, int(share * len(tokens))), replace=False):
        tokens[i] = str(words[rng.integers(len(words))])
    return " ".join(tokens)


def generate_corpus(
    out_dir: str | Path, megabytes: float = 300.0, files: int = 8, seed: int = 0
) -> dict[str, Any]:
    """Write about ``megabytes`` of JSONL (``text``, ``domain``, ``date``) into ``out_dir``.

    Returns:
        Counts of each planted kind of document and the bytes written.
    """
    rng = np.random.default_rng(seed)
    words, cdf = _vocabulary(str(out_dir))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    handles = [(out / f"part-{i:03d}.jsonl").open("w", encoding="utf-8") for i in range(files)]
    planted: Counter = Counter()
    recent: list[str] = []
    written, i, target = 0, 0, int(megabytes * 1e6)
    try:
        while written < target:
            roll = rng.random()
            if roll < 0.04 and recent:
                text, kind = recent[rng.integers(len(recent))], "exact_duplicate"
            elif roll < 0.08 and recent:
                base = recent[rng.integers(len(recent))]
                text, kind = _mutate(rng, base, words, 0.01), "near_duplicate"
            elif roll < 0.10:
                line = _document(rng, words, cdf).split(". ")[0] + "."
                text, kind = "\n".join([line] * int(rng.integers(10, 30))), "junk_repetition"
            elif roll < 0.12:
                text, kind = " ".join(words[rng.integers(len(words), size=12)]), "too_short"
            else:
                text, kind = _document(rng, words, cdf), "clean"
                if rng.random() < 0.06:
                    text += "\n\n" + _BOILER[rng.integers(len(_BOILER))]
                    planted["with_boilerplate"] += 1
                if rng.random() < 0.03:
                    text = f"<div><p>{text}</p><script>var x = 1;</script></div>"
                    planted["with_html"] += 1
                if rng.random() < 0.02:
                    text += f"\n\nContact jane.doe{i}@example.com or +1 415 555 {i % 10000:04d}."
                    planted["with_pii"] += 1
                recent.append(text)
                if len(recent) > 2000:
                    recent.pop(int(rng.integers(len(recent))))
            planted[kind] += 1
            date = f"{rng.integers(2015, 2025)}-{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d}"
            row = {"text": text, "domain": _DOMAINS[i % len(_DOMAINS)], "date": date}
            line = json.dumps(row, ensure_ascii=False) + "\n"
            handles[i % files].write(line)
            written += len(line.encode("utf-8"))
            i += 1
    finally:
        for h in handles:
            h.close()
    return {"documents": i, "bytes": written, "planted": dict(planted)}


def _tokenize_only(batch: Any, tok: Any, kind: str) -> int:
    from fmlab.data.pipeline.segment import encode_texts

    return sum(len(x) for x in encode_texts(tok, content_of(batch.to_pydict(), kind)))


def time_tokenization(
    records: str | Path, tokenizer: Any, num_proc: int, batch_size: int = 1000, kind: str = "text"
) -> dict[str, float]:
    """Tokenization alone (same tokenizer, processes and batches as the segment stage) over the
    records of an Arrow file: seconds, tokens, documents/s and MB/s."""
    table = read_table(records)
    mb = sum(len(t.encode("utf-8")) for t in table.column("text").to_pylist()) / 1e6
    runner = Runner(Path(records).parent, num_proc, batch_size, progress=False)
    task = functools.partial(_tokenize_only, tok=tokenizer, kind=kind)
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    tokens = sum(runner.map(runner.batches(table), task, description="tokenize", total=None))
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds() - cpu0,
        "tokens": tokens,
        "documents": table.num_rows,
        "docs_per_s": table.num_rows / seconds,
        "mb_per_s": mb / seconds,
        "megabytes": mb,
    }
