"""Clean stage rules, PII redaction and boilerplate removal; filter (Gopher) rules."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
from tests.unit.data.prep_helpers import random_doc, run_stage

from fmlab.data.pipeline import Clean, Filter
from fmlab.data.pipeline.clean import clean_text, redact_pii
from fmlab.data.pipeline.quality import _dup_ngram_share, _top_ngram_share, quality_reason
from fmlab.data.pipeline.records import record_schema


def _opts(**kw):
    opts = dict(Clean(**kw).params)
    opts["pii"] = tuple(opts["pii"])
    return opts


def test_clean_rules_and_counts():
    changed = Counter()
    text = (
        "Cafe\u0301\x00 <p>Hello <b>world</b></p><script>var x;</script>  \r\n\n\n\nEnd\u00a0here\t"
    )
    assert clean_text(text, _opts(), changed) == "Café\nHello world\n\nEnd here"
    assert changed == {"unicode": 1, "control_chars": 1, "html": 1, "whitespace": 1}
    # not markup: a repr like <class 'int'> and comparisons survive; indentation survives
    code = "x = <class 'int'> if a < b and c > d\n    return x"
    assert clean_text(code, _opts(), Counter()) == code
    assert clean_text(text, _opts(unicode=None, html=False, whitespace=False), Counter()) == (
        "Cafe\u0301 <p>Hello <b>world</b></p><script>var x;</script>  \r\n\n\n\nEnd\u00a0here\t"
    )


def test_pii_redaction_exact():
    counts = Counter()
    text = (
        "Mail jane.doe@example.co.uk or call +1 (415) 555-0123; server 192.168.0.12, "
        "v6 2001:db8::8a2e:370:7334. Not PII: version 3.11.2, 2024-01-15, x[::2], 10.5 kg."
    )
    out = redact_pii(text, ("email", "ip", "phone"), counts)
    assert out == (
        "Mail <EMAIL> or call <PHONE>; server <IP>, v6 <IP>. Not PII: version 3.11.2, "
        "2024-01-15, x[::2], 10.5 kg."
    )
    assert counts == {"pii_email": 1, "pii_phone": 1, "pii_ip": 2}
    assert redact_pii(text, ("email",), Counter()).count("<") == 1  # only the chosen kinds


def _table(texts):
    rows = {
        "id": [str(i) for i in range(len(texts))],
        "source": ["s"] * len(texts),
        "text": texts,
        "domain": [None] * len(texts),
        "date": [None] * len(texts),
    }
    return pa.Table.from_pydict(rows, schema=record_schema("text"))


def test_boilerplate_lines_repeated_across_documents_are_removed(tmp_path):
    banner = "Subscribe to our newsletter for weekly updates!"
    rare = "This line appears in a handful of documents only."
    texts = [
        random_doc(i, 40) + (f"\n{banner}" if i < 25 else "") + (f"\n{rare}" if i < 5 else "")
        for i in range(40)
    ]
    texts.append(banner)  # nothing left after removal: dropped and counted
    stats, out = run_stage(Clean(boilerplate_min_docs=20), _table(texts), tmp_path)
    assert stats["boilerplate_patterns"] == 1
    assert stats["changed"]["boilerplate_lines"] == 26
    assert stats["removed"] == {"empty_after_clean": 0, "empty_after_boilerplate": 1}
    assert stats["boilerplate_examples"] == [banner]
    result = out.column("text").to_pylist()
    assert len(result) == 40 and not any(banner in t for t in result)
    assert sum(rare in t for t in result) == 5  # under boilerplate_min_docs: kept


def test_gopher_rules_name_the_failing_rule():
    good = random_doc(1, 200)
    o = Filter().params
    assert quality_reason(good, o) is None
    cases = {
        "too_few_words": "just a few words here",
        "mean_word_length": " ".join(["a", "an", "to", "of"] * 30),
        "hash_ellipsis_ratio": good.replace(".", " #tag ..."),
        "symbol_ratio": good + " " + " ".join(["{}[]"] * 300),
        "digit_ratio": good + " " + " ".join(str(10**9 + i) for i in range(150)),
        "alpha_words": good + " " + " ".join(["(1)"] * 80),  # words without a letter
        "bullet_lines": "\n".join(f"- {random_doc(i, 12)}" for i in range(20)),
        "dup_lines": "\n".join([random_doc(1, 10)] * 10 + [random_doc(i, 10) for i in range(5)]),
        "top_2gram": " ".join(["lorem ipsum"] * 40 + random_doc(3, 60).split()),
        "dup_5gram": random_doc(4, 60) + " " + random_doc(4, 60),  # each n-gram twice
    }
    for reason, text in cases.items():
        assert quality_reason(text, o) == reason, reason
    off = {**o, "top_ngram_max_share": {}, "dup_ngram_max_share": {}}
    assert quality_reason(cases["top_2gram"], off) is None  # a rule set to {} / null is off


def test_repetition_shares_by_hand():
    words = ["a", "bb", "a", "bb", "ccc"]  # word chars: 1 + 2 + 1 + 2 + 3 = 9
    hashes = np.array([hash(w) for w in words], dtype=np.int64).view(np.uint64)
    lens = np.array([len(w) for w in words])
    # most frequent 2-gram "a bb" occurs twice with 3 characters: 2 * 3 / 9
    assert _top_ngram_share(hashes, lens, 2, 9) == (pytest.approx(6 / 9), 2)
    # the repeated occurrence of "a bb" covers words 2-3 (3 characters)
    assert _dup_ngram_share(hashes, lens, 2, 9) == pytest.approx(3 / 9)
    assert _dup_ngram_share(hashes, lens, 3, 9) == 0.0


def test_filter_stage_counts_reasons(tmp_path):
    texts = [random_doc(i, 80) for i in range(10)] + ["too short", "\n".join(["same line"] * 60)]
    stats, out = run_stage(Filter(), _table(texts), tmp_path)
    assert stats == {**stats, "in": 12, "out": 10}
    assert stats["removed"] == {"too_few_words": 1, "dup_lines": 1}
    lenient = Filter(min_words=None, max_dup_lines=None, max_dup_line_chars=None)
    stats, out = run_stage(lenient, _table(texts), tmp_path / "b")
    assert stats["removed"] == {"top_2gram": 1}  # with line rules off, the 2-gram rule fires
    assert "too short" in out.column("text").to_pylist()


def _reference_reason(text, top, dup):
    """Gopher's repetition rules by brute force (Counter over word tuples)."""
    words = text.lower().split()
    total = sum(map(len, words))
    for n, limit in sorted(top.items()):
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        if len(grams) < 2:
            continue
        gram, count = Counter(grams).most_common(1)[0]  # ties: first seen
        if count > 1 and count * sum(map(len, gram)) / total > limit:
            return f"top_{n}gram"
    for n, limit in sorted(dup.items()):
        seen, covered = set(), [False] * len(words)
        for i in range(len(words) - n + 1):
            gram = tuple(words[i : i + n])
            if gram in seen:
                covered[i : i + n] = [True] * n
            seen.add(gram)
        if sum(len(w) for w, c in zip(words, covered) if c) / total > limit:
            return f"dup_{n}gram"
    return None


def test_repetition_rules_match_a_brute_force_reference():
    rng = random.Random(0)
    gopher = Filter().params
    o = {k: (v if k.endswith("ngram_max_share") else None) for k, v in gopher.items()}
    seen = Counter()
    for i in range(300):
        words = random_doc(i, rng.randint(20, 150)).split()
        for _ in range(rng.randint(0, 6)):  # splice in repeats of random length
            a = rng.randrange(len(words))
            piece = words[a : a + rng.randint(1, 12)]
            at = rng.randrange(len(words) + 1)
            words[at:at] = piece * rng.randint(1, 4)
        text = " ".join(words)
        expected = _reference_reason(text, o["top_ngram_max_share"], o["dup_ngram_max_share"])
        assert quality_reason(text, o) == expected, text
        seen[expected] += 1
    assert seen[None] > 20 and len(seen) >= 5, seen  # passes and several different rules fire
