"""Clean stage: Unicode normalization, control characters, markup, PII, whitespace, boilerplate.

Rules run in that order on every text field of a record (``text``, or ``prompt`` and
``response``) and each counts the documents it changed. Whitespace cleaning keeps line structure
and indentation (code stays code): it unifies line ends and exotic spaces, strips trailing spaces
and collapses runs of blank lines. Boilerplate lines are lines (of at least
``boilerplate_min_chars``) that occur in at least ``boilerplate_min_docs`` different documents;
finding them takes one extra pass over the corpus.
"""

from __future__ import annotations

import functools
import html
import ipaddress
import re
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field
from xxhash import xxh3_64_intdigest

from fmlab.data.pipeline.engine import ArrowSink, Runner, Stage, read_table
from fmlab.data.pipeline.records import content_fields

__all__ = ["Clean", "redact_pii"]

_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u200e\u200f\u2060\ufeff]")
_SPACES = re.compile("[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_CONTROL_BYTES = bytes(i for i in range(32) if i not in (9, 10, 13)) + b"\x7f"
_BLANK_RUNS = re.compile(r"\n{3,}")
# Digit runs long enough to be an IPv4 address or a phone number. Python's regex engine scans a
# pattern that starts with a character class fast, one with a lookbehind slowly: this cheap
# pattern decides whether the precise ones must run at all.
_NUMBERISH = re.compile(r"[+(\d][\d ().-]{5,24}\d")
_BLOCK_TAGS = "p|div|br|hr|li|ul|ol|tr|table|h[1-6]|section|article|header|footer|blockquote|pre"
_INLINE_TAGS = (
    "html|head|body|span|a|img|td|th|thead|tbody|b|i|u|em|strong|code|meta|link|title|nav|"
    "form|input|button|label|select|option|iframe|sup|sub|small|font|center|main|aside|figure"
)
_HTML_DROP = re.compile(r"<(script|style|noscript)\b[^>]*>.*?</\1\s*>", re.I | re.S)
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.S)
_HTML_BLOCK = re.compile(rf"</?(?:{_BLOCK_TAGS})\b[^<>]*>", re.I)
_HTML_INLINE = re.compile(rf"</?(?:{_INLINE_TAGS})\b[^<>]*>", re.I)
_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
)
_IPV4 = re.compile(
    r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
    r"(?!\.?\d)"
)
_IPV6 = re.compile(r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:])")
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,5}){1,4}(?![\w-])"
)
PII_KINDS = ("email", "ip", "phone")


def _ipv6(match: re.Match) -> bool:
    text = match.group(0)
    if sum(1 for g in text.split(":") if g) < 2:  # '::1', 'a[::2]' are not worth redacting
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _phone(match: re.Match) -> bool:
    text = match.group(0)
    digits = sum(c.isdigit() for c in text)
    return 9 <= digits <= 15 and (text.startswith(("+", "(")) or any(c in text for c in " .-"))


def redact_pii(text: str, kinds: tuple[str, ...], counts: Counter) -> str:
    """Replace e-mail addresses, IP addresses and phone numbers by ``<EMAIL>``, ``<IP>``,
    ``<PHONE>``; add the number of replacements per kind to ``counts``."""

    def sub(pattern: re.Pattern, token: str, kind: str, text: str, check=None) -> str:
        def repl(m: re.Match) -> str:
            if check is not None and not check(m):
                return m.group(0)
            counts[f"pii_{kind}"] += 1
            return token

        return pattern.sub(repl, text)

    if "email" in kinds and "@" in text:
        text = sub(_EMAIL, "<EMAIL>", "email", text)
    numbers = any(d in text for d in "0123456789") and _NUMBERISH.search(text) is not None
    if "ip" in kinds:
        if numbers:
            text = sub(_IPV4, "<IP>", "ip", text)
        if "::" in text or text.count(":") >= 7:
            text = sub(_IPV6, "<IP>", "ip", text, _ipv6)
    if "phone" in kinds and numbers:
        text = sub(_PHONE, "<PHONE>", "phone", text, _phone)
    return text


def _has_control(text: str) -> bool:
    if text.isascii():  # bytes.translate is a C loop; the regex costs ~10x more per character
        raw = text.encode("ascii")
        return len(raw.translate(None, _CONTROL_BYTES)) != len(raw)
    return _CONTROL.search(text) is not None


def _strip_html(text: str) -> str:
    text = _HTML_DROP.sub("", text)
    text = _HTML_COMMENT.sub("", text)
    text = _HTML_BLOCK.sub("\n", text)
    return html.unescape(_HTML_INLINE.sub("", text))


def clean_text(text: str, opts: dict[str, Any], changed: Counter) -> str:
    """Apply the enabled rules to one string, counting each rule that changed it."""
    if (
        opts["unicode"]
        and not text.isascii()
        and not unicodedata.is_normalized(opts["unicode"], text)
    ):
        text = unicodedata.normalize(opts["unicode"], text)
        changed["unicode"] += 1
    if opts["control_chars"] and _has_control(text):
        text = _CONTROL.sub("", text)
        changed["control_chars"] += 1
    if opts["html"] and "<" in text and (_HTML_BLOCK.search(text) or _HTML_INLINE.search(text)):
        text = _strip_html(text)
        changed["html"] += 1
    if opts["pii"]:
        pii: Counter = Counter()
        text = redact_pii(text, opts["pii"], pii)
        if pii:
            changed["pii"] += 1
            changed.update(pii)
    if opts["whitespace"]:
        new = text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text
        if not new.isascii():
            new = _SPACES.sub(" ", new)
        if " \n" in new or "\t\n" in new:  # trailing spaces (str ops beat a regex here)
            new = "\n".join(line.rstrip(" \t") for line in new.split("\n"))
        if "\n\n\n" in new:
            new = _BLANK_RUNS.sub("\n\n", new)
        new = new.strip()
        if new != text:
            changed["whitespace"] += 1
            text = new
    return text


def _line_key(line: str) -> int:
    return xxh3_64_intdigest(line.strip().encode("utf-8", "surrogatepass"))


def _clean_batch(
    batch: pa.RecordBatch, opts: dict[str, Any], fields: tuple[str, ...]
) -> tuple[pa.RecordBatch, Counter, np.ndarray | None]:
    cols = batch.to_pydict()
    changed: Counter = Counter()
    keep = []
    line_keys: list[int] = []
    min_chars = opts["boilerplate_min_chars"]
    for i in range(batch.num_rows):
        empty = False
        doc_lines: set[int] = set()
        for f in fields:
            cols[f][i] = text = clean_text(cols[f][i], opts, changed)
            empty |= not text.strip()
            if opts["boilerplate"]:
                doc_lines.update(_line_key(x) for x in text.split("\n") if len(x) >= min_chars)
        keep.append(not empty)
        line_keys.extend(doc_lines)  # once per document: counts are document frequencies
    changed["empty_after_clean"] = keep.count(False)
    out = pa.RecordBatch.from_pydict(cols, schema=batch.schema).filter(pa.array(keep))
    keys = np.asarray(line_keys, dtype=np.uint64) if opts["boilerplate"] else None
    return out, changed, keys


def _drop_lines(
    batch: pa.RecordBatch, boiler: frozenset[int], fields: tuple[str, ...], min_chars: int
) -> tuple[pa.RecordBatch, Counter, list[str]]:
    cols = batch.to_pydict()
    counts: Counter = Counter()
    keep, examples = [], []
    for i in range(batch.num_rows):
        empty = False
        for f in fields:
            lines = cols[f][i].split("\n")
            kept, dropped = [], []
            for x in lines:
                (dropped if len(x) >= min_chars and _line_key(x) in boiler else kept).append(x)
            if dropped:
                counts["boilerplate_lines"] += len(dropped)
                counts["boilerplate_docs"] += 1
                examples.extend(x.strip() for x in dropped[: 3 - len(examples)])
                cols[f][i] = _BLANK_RUNS.sub("\n\n", "\n".join(kept)).strip()
            empty |= not cols[f][i].strip()
        keep.append(not empty)
    counts["empty_after_boilerplate"] = keep.count(False)
    out = pa.RecordBatch.from_pydict(cols, schema=batch.schema).filter(pa.array(keep))
    return out, counts, examples


class Clean(Stage):
    """Normalize and clean text fields; drop records left empty.

    Args:
        enabled: Run this stage.
        unicode: Unicode normalization form, or null to keep text as is.
        control_chars: Remove control and zero-width characters (keeps tab and newline).
        html: Strip HTML tags (known tag names only, so ``<class 'int'>`` survives), scripts,
            styles and comments; unescape entities.
        whitespace: Unify line ends and spaces, strip trailing spaces, collapse blank-line runs.
        pii: Redact these kinds of personal data: ``email``, ``ip``, ``phone``.
        boilerplate: Remove lines repeated across many documents.
        boilerplate_min_docs: A line in at least this many documents is boilerplate.
        boilerplate_min_chars: Shorter lines are never boilerplate (``}``, ``Returns:``).
    """

    name = "clean"
    version = 1

    def __init__(
        self,
        enabled: bool = True,
        unicode: Literal["NFC", "NFKC", "NFD", "NFKD"] | None = "NFC",
        control_chars: bool = True,
        html: bool = True,
        whitespace: bool = True,
        pii: list[Literal["email", "ip", "phone"]] | None = None,
        boilerplate: bool = True,
        boilerplate_min_docs: Annotated[int, Field(ge=2)] = 20,
        boilerplate_min_chars: Annotated[int, Field(ge=1)] = 20,
    ) -> None:
        super().__init__(
            enabled,
            unicode=unicode,
            control_chars=control_chars,
            html=html,
            whitespace=whitespace,
            pii=sorted(pii or []),
            boilerplate=boilerplate,
            boilerplate_min_docs=boilerplate_min_docs,
            boilerplate_min_chars=boilerplate_min_chars,
        )

    def run(self, runner: Runner, table: pa.Table, out: Path, kind: str) -> dict[str, Any]:
        fields = content_fields(kind)
        opts = {**self.params, "pii": tuple(self.params["pii"])}
        task = functools.partial(_clean_batch, opts=opts, fields=fields)
        changed: Counter = Counter()
        keys: list[np.ndarray] = []
        first = out / ("pass1.arrow" if opts["boilerplate"] else "data.arrow")
        with ArrowSink(first, table.schema) as sink:
            for batch, counts, line_keys in runner.map(
                runner.batches(table), task, description="clean", total=table.num_rows
            ):
                sink.write(batch)
                changed.update(counts)
                if line_keys is not None:
                    keys.append(line_keys)
        stats: dict[str, Any] = {"in": table.num_rows}
        removed = {"empty_after_clean": changed.pop("empty_after_clean", 0)}
        if opts["boilerplate"]:
            all_keys = np.concatenate(keys) if keys else np.empty(0, np.uint64)
            uniq, df = np.unique(all_keys, return_counts=True)
            boiler = frozenset(uniq[df >= opts["boilerplate_min_docs"]].tolist())
            del all_keys, uniq, df, keys
            stats["boilerplate_patterns"] = len(boiler)
            examples: list[str] = []
            task2 = functools.partial(
                _drop_lines, boiler=boiler, fields=fields, min_chars=opts["boilerplate_min_chars"]
            )
            pass1 = read_table(first)
            with ArrowSink(out / "data.arrow", table.schema) as sink:
                for batch, counts, ex in runner.map(
                    runner.batches(pass1), task2, description="clean: boilerplate", total=len(pass1)
                ):
                    sink.write(batch)
                    removed["empty_after_boilerplate"] = removed.get(
                        "empty_after_boilerplate", 0
                    ) + counts.pop("empty_after_boilerplate", 0)
                    changed.update(counts)
                    examples.extend(e for e in ex if e not in examples and len(examples) < 10)
            del pass1
            first.unlink()
            stats["boilerplate_examples"] = [e[:120] for e in examples]
        stats.update(out=sink.rows, removed=removed, changed=dict(changed))
        return stats
