import json

import pytest

from fmlab.data.embedded import embedded_corpus_path, iter_embedded


@pytest.mark.parametrize("name", ["english", "code"])
def test_embedded_corpus_is_deterministic_and_cached(name, cache_dir):
    path = embedded_corpus_path(name, cache_dir)
    mtime = path.stat().st_mtime_ns
    assert embedded_corpus_path(name, cache_dir) == path
    assert path.stat().st_mtime_ns == mtime  # second call reads the cache
    records = [json.loads(line) for line in path.open()]
    assert len(records) > 1000
    assert all(r["text"].strip() and r["id"] and r["source"] for r in records)
    assert len({r["id"] for r in records}) == len(records)
    # rebuilding from scratch gives the same documents in the same order
    first = [r["text"] for r in records[:50]]
    assert [r["text"] for _, r in zip(range(50), iter_embedded(name))] == first


def test_embedded_domains_differ():
    english = next(iter_embedded("english"))["text"]
    code = [r["text"] for _, r in zip(range(200), iter_embedded("code"))]
    assert sum(t.count("def ") for t in code) > 50
    assert english.count(" the ") > 0


def test_unknown_embedded_corpus(cache_dir):
    with pytest.raises(ValueError, match="unknown embedded corpus 'klingon'"):
        embedded_corpus_path("klingon", cache_dir)
