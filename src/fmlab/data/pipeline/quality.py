"""Filter stage: Gopher-style quality rules (Rae et al. 2021, "Scaling Language Models", App. A).

A document is dropped by the first rule it fails; each rule is a setting (null switches it off)
and has its own removal reason in the data card. Defaults are Gopher's thresholds.

Repetition is measured as in Gopher: the share of lines/paragraphs that are duplicates (and of
their characters), the share of word characters taken by the most frequent 2/3/4-gram, and the
share of word characters covered by repeated occurrences of 5..10-grams.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections import Counter
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any

import numpy as np
import pyarrow as pa
from pydantic import Field

from fmlab.data.pipeline.dates import Undated, iso, undated_error, window_batch
from fmlab.data.pipeline.engine import ArrowSink, Runner, Stage
from fmlab.data.pipeline.hashing import ngram_hashes
from fmlab.data.pipeline.records import content_of

__all__ = ["Filter", "quality_reason"]

Ratio = Annotated[float, Field(ge=0.0, le=1.0)]
PosInt = Annotated[int, Field(ge=1)]
_DIGITS = b"0123456789"
# ASCII letters, digits, whitespace and every non-ASCII byte: what is left are ASCII symbols
_NOT_SYMBOL = bytes(i for i in range(256) if i >= 128 or chr(i).isalnum() or chr(i).isspace())
# Bytes that count as letters when looking for words without any: ASCII letters, and every byte
# of a multi-byte UTF-8 character (non-ASCII letters; non-ASCII punctuation is rare enough).
_LETTER_BYTE = np.zeros(256, dtype=bool)
_LETTER_BYTE[[*range(65, 91), *range(97, 123), *range(128, 256)]] = True


def _words_without_letters(raw: bytes) -> int:
    """Whitespace-separated words of ``raw`` (UTF-8) with no letter, counted with numpy."""
    b = np.frombuffer(raw, dtype=np.uint8)
    word = b > 32
    edges = np.diff(np.concatenate(([0], word.view(np.int8), [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    letters = np.concatenate(([0], np.cumsum(_LETTER_BYTE[b])))
    return int(np.count_nonzero(letters[ends] == letters[starts]))


_GOPHER_TOP = MappingProxyType({2: 0.2, 3: 0.18, 4: 0.16})
_GOPHER_DUP = MappingProxyType({5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10})
_BULLETS = ("•", "-", "*", "·", "‣", "–", "●", "▪")


def _dup_share(parts: list[str]) -> tuple[float, float]:
    """Share of items that repeat an earlier one, and the share of their characters."""
    seen: set[str] = set()
    dup = dup_chars = total_chars = 0
    for p in parts:
        total_chars += len(p)
        if p in seen:
            dup += 1
            dup_chars += len(p)
        else:
            seen.add(p)
    return dup / max(len(parts), 1), dup_chars / max(total_chars, 1)


def _dup_ngram_share(hashes: np.ndarray, lens: np.ndarray, n: int, total: int) -> float:
    grams = ngram_hashes(hashes, n)
    if len(grams) < 2:
        return 0.0
    ordered = np.sort(grams)
    if (ordered[1:] != ordered[:-1]).all():  # the common case: no n-gram repeats
        return 0.0
    order = np.argsort(grams, kind="stable")  # equal values keep document order
    ordered = grams[order]
    repeat = np.zeros(len(grams) + n - 1, dtype=np.int64)
    repeat[order[1:][ordered[1:] == ordered[:-1]]] = 1  # later occurrences, not the first
    covered = np.convolve(repeat, np.ones(n, dtype=np.int64))[: len(lens)] > 0
    return float(lens[covered].sum()) / total


def _top_ngram_share(hashes: np.ndarray, lens: np.ndarray, n: int, total: int) -> tuple[float, int]:
    """Share of word characters in the most frequent n-gram, and how often it occurs."""
    grams = ngram_hashes(hashes, n)
    if len(grams) < 2:
        return 0.0, len(grams)
    ordered = np.sort(grams)
    bounds = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1], [True])))
    runs = np.diff(bounds)  # occurrences of each distinct n-gram
    top = int(runs.max())
    if top < 2:
        return 0.0, top
    # ties: the n-gram that occurs first (as Counter.most_common), not an order of hash values
    tied = ordered[bounds[:-1][runs == top]]
    if len(tied) > 1:
        start = int(np.flatnonzero(np.isin(grams, tied))[0])
    else:
        start = int(np.argmax(grams == tied[0]))
    return float(top * lens[start : start + n].sum()) / total, top


def _over(value: float, limit: float | None) -> bool:
    return limit is not None and value > limit


def quality_reason(text: str, o: dict[str, Any]) -> str | None:
    """The first rule ``text`` fails (its removal reason), or None if it passes all."""
    n_chars = len(text)
    if o["min_chars"] is not None and n_chars < o["min_chars"]:
        return "too_short"
    if o["max_chars"] is not None and n_chars > o["max_chars"]:
        return "too_long"
    words = text.lower().split()
    n = len(words)
    if o["min_words"] is not None and n < o["min_words"]:
        return "too_few_words"
    if o["max_words"] is not None and n > o["max_words"]:
        return "too_many_words"
    if n == 0:
        return "no_words"
    lens = np.fromiter(map(len, words), dtype=np.int64, count=n)
    total = int(lens.sum())
    mean = total / n
    if (o["min_mean_word_length"] is not None and mean < o["min_mean_word_length"]) or (
        o["max_mean_word_length"] is not None and mean > o["max_mean_word_length"]
    ):
        return "mean_word_length"
    if o["max_hash_ellipsis_ratio"] is not None:
        marks = text.count("#") + text.count("...") + text.count("…")
        if marks / n > o["max_hash_ellipsis_ratio"]:
            return "hash_ellipsis_ratio"
    if o["max_symbol_ratio"] is not None or o["max_digit_ratio"] is not None:
        raw = text.encode("utf-8", "surrogatepass")
        if (
            o["max_symbol_ratio"] is not None
            and len(raw.translate(None, _NOT_SYMBOL)) / n_chars > o["max_symbol_ratio"]
        ):
            return "symbol_ratio"
        digits = len(raw) - len(raw.translate(None, _DIGITS))
        if o["max_digit_ratio"] is not None and digits / n_chars > o["max_digit_ratio"]:
            return "digit_ratio"
    alpha = o["min_alpha_words"]
    if alpha is not None:
        raw = text.encode("utf-8", "surrogatepass")
        if 1 - _words_without_letters(raw) / n < alpha:
            return "alpha_words"
    lines = [x.strip() for x in text.split("\n")]
    lines = [x for x in lines if x]
    n_lines = max(len(lines), 1)
    if _over(sum(x.startswith(_BULLETS) for x in lines) / n_lines, o["max_bullet_lines"]):
        return "bullet_lines"
    if _over(sum(x.endswith(("...", "…")) for x in lines) / n_lines, o["max_ellipsis_lines"]):
        return "ellipsis_lines"
    if o["max_dup_lines"] is not None or o["max_dup_line_chars"] is not None:
        share, chars = _dup_share(lines)
        if o["max_dup_lines"] is not None and share > o["max_dup_lines"]:
            return "dup_lines"
        if o["max_dup_line_chars"] is not None and chars > o["max_dup_line_chars"]:
            return "dup_line_chars"
    if o["max_dup_paragraphs"] is not None or o["max_dup_paragraph_chars"] is not None:
        paras = [p.strip() for p in text.split("\n\n") if p.strip()]
        share, chars = _dup_share(paras)
        if o["max_dup_paragraphs"] is not None and share > o["max_dup_paragraphs"]:
            return "dup_paragraphs"
        if o["max_dup_paragraph_chars"] is not None and chars > o["max_dup_paragraph_chars"]:
            return "dup_paragraph_chars"
    top, dup = o["top_ngram_max_share"], o["dup_ngram_max_share"]
    if not top and not dup:
        return None
    # Python's str hash is enough within one document (it only has to be consistent here)
    hashes = np.fromiter(map(hash, words), dtype=np.int64, count=n).view(np.uint64)
    count, longest = None, None
    for k, limit in sorted(top.items()):
        if count is not None:
            # The most frequent k-gram occurs at most as often as the most frequent shorter
            # n-gram (each occurrence contains one), and spans at most the k longest words: when
            # that bound is under the limit the rule cannot fail (saves sorting, usually).
            if longest is None:
                longest = np.cumsum(np.sort(lens)[::-1])
            if count * longest[min(k, n) - 1] / total <= limit:
                continue
        share, found = _top_ngram_share(hashes, lens, k, total)
        if share > limit:
            return f"top_{k}gram"
        count = found if count is None else min(count, found)
    if dup:
        # A repeated (k+1)-gram contains repeated k-grams, so coverage shrinks as k grows: when
        # the smallest k is under every limit, no larger k can fail (saves the common case).
        items = sorted(dup.items())
        first = _dup_ngram_share(hashes, lens, items[0][0], total)
        if first > items[0][1]:
            return f"dup_{items[0][0]}gram"
        if first > min(dup.values()):
            for k, limit in items[1:]:
                if _dup_ngram_share(hashes, lens, k, total) > limit:
                    return f"dup_{k}gram"
    return None


def _filter_batch(
    batch: pa.RecordBatch, opts: dict[str, Any], kind: str
) -> tuple[pa.RecordBatch, Counter]:
    counts: Counter = Counter()
    if "undated" in opts:  # a date window or an undated policy (fmlab.data.pipeline.dates)
        batch, counts = window_batch(
            batch, opts["date_after"], opts["date_before"], opts["undated"]
        )
    if not opts.get("rules", True):
        return batch, counts
    reasons = [quality_reason(t, opts) for t in content_of(batch.to_pydict(), kind)]
    counts.update(r for r in reasons if r)
    return batch.filter(pa.array([r is None for r in reasons], type=pa.bool_())), counts


class Filter(Stage):
    """Drop low-quality documents by length, character-class and repetition rules, and keep a
    date window.

    Args:
        enabled: Apply the quality rules below (a date window set here applies either way).
        min_chars: Fewest characters.
        max_chars: Most characters.
        min_words: Fewest words (Gopher: 50).
        max_words: Most words (Gopher: 100,000).
        min_mean_word_length: Smallest mean word length (Gopher: 3).
        max_mean_word_length: Largest mean word length (Gopher: 10).
        max_hash_ellipsis_ratio: Most ``#`` and ellipses per word (Gopher: 0.1).
        max_symbol_ratio: Largest share of characters that are ASCII symbols/punctuation.
        max_digit_ratio: Largest share of characters that are digits.
        min_alpha_words: Smallest share of words with a letter (Gopher: 0.8).
        max_bullet_lines: Largest share of lines starting with a bullet (Gopher: 0.9).
        max_ellipsis_lines: Largest share of lines ending with an ellipsis (Gopher: 0.3).
        max_dup_lines: Largest share of duplicate lines (Gopher: 0.3).
        max_dup_line_chars: Largest share of characters in duplicate lines (Gopher: 0.2).
        max_dup_paragraphs: Largest share of duplicate paragraphs (Gopher: 0.3).
        max_dup_paragraph_chars: Largest share of characters in duplicate paragraphs (0.2).
        top_ngram_max_share: ``{n: share}``: largest share of word characters in the most
            frequent n-gram (Gopher: 2: 0.2, 3: 0.18, 4: 0.16).
        dup_ngram_max_share: ``{n: share}``: largest share of word characters covered by
            repeated n-grams (Gopher: 5: 0.15 ... 10: 0.10).
        date_after: Keep records dated strictly after this day (exclusive; a release's data
            cutoff: its next window starts the day after).
        date_before: Keep records dated on or before this day (inclusive).
        undated: Records without a date: ``keep`` (they pass any window), ``drop`` or
            ``error`` (refuse the data, naming them). Counted in the card either way.
    """

    name = "filter"
    version = 1

    def __init__(
        self,
        enabled: bool = True,
        min_chars: PosInt | None = None,
        max_chars: PosInt | None = None,
        min_words: PosInt | None = 50,
        max_words: PosInt | None = 100_000,
        min_mean_word_length: Annotated[float, Field(ge=0)] | None = 3.0,
        max_mean_word_length: Annotated[float, Field(gt=0)] | None = 10.0,
        max_hash_ellipsis_ratio: Annotated[float, Field(ge=0)] | None = 0.1,
        max_symbol_ratio: Ratio | None = 0.25,
        max_digit_ratio: Ratio | None = 0.25,
        min_alpha_words: Ratio | None = 0.8,
        max_bullet_lines: Ratio | None = 0.9,
        max_ellipsis_lines: Ratio | None = 0.3,
        max_dup_lines: Ratio | None = 0.3,
        max_dup_line_chars: Ratio | None = 0.2,
        max_dup_paragraphs: Ratio | None = 0.3,
        max_dup_paragraph_chars: Ratio | None = 0.2,
        top_ngram_max_share: dict[Annotated[int, Field(ge=2)], Ratio] | None = _GOPHER_TOP,
        dup_ngram_max_share: dict[Annotated[int, Field(ge=2)], Ratio] | None = _GOPHER_DUP,
        date_after: dt.date | None = None,
        date_before: dt.date | None = None,
        undated: Undated = "keep",
    ) -> None:
        settings = {
            k: v
            for k, v in locals().items()
            if k not in {"self", "enabled", "__class__", "date_after", "date_before", "undated"}
        }
        for key in ("top_ngram_max_share", "dup_ngram_max_share"):
            settings[key] = {int(k): float(v) for k, v in (settings[key] or {}).items()}
        after, before = iso(date_after), iso(date_before)
        if after and before and after >= before:
            raise ValueError(
                f"filter.date_after={after} must be before filter.date_before={before} "
                "(the window is after < date <= before)"
            )
        # date settings join the fingerprint only when used: other datasets keep their caches
        window = after is not None or before is not None or undated != "keep"
        if window:
            settings.update(date_after=after, date_before=before, undated=undated)
            if not enabled:
                settings["rules"] = False
        super().__init__(enabled or window, **settings)

    def run(self, runner: Runner, table: pa.Table, out: Path, kind: str) -> dict[str, Any]:
        undated = table.column("date").null_count
        if undated and self.params.get("undated") == "error":  # before any work, all counted
            missing = table.filter(table.column("date").is_null()).column("id")
            raise undated_error(undated, missing.slice(0, 3).to_pylist(), "filter")
        task = functools.partial(_filter_batch, opts=self.params, kind=kind)
        removed: Counter = Counter()
        with ArrowSink(out / "data.arrow", table.schema) as sink:
            for batch, counts in runner.map(
                runner.batches(table), task, description="filter", total=table.num_rows
            ):
                sink.write(batch)
                removed.update(counts)
        stats = {"in": table.num_rows, "out": sink.rows, "removed": dict(removed)}
        if "undated" in self.params:  # what the date window did, for the card
            p = self.params
            stats["dates"] = {"after": p["date_after"], "before": p["date_before"]}
            stats["dates"].update(undated=undated, undated_policy=p["undated"])
        return stats
