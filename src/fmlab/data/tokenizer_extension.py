"""Domain tokens added to a base model's tokenizer (``extend_tokenizer``, with ``init_from``).

Tokens come from a list (``tokens``) and/or are mined from the domain's training texts
(``mine``): the words the base tokenizer splits into the most pieces, weighted by how often
they occur (score = count x (pieces − 1), the tokens one occurrence saves). They are added as
Hugging Face *added tokens* matched in the raw text (``normalized=False``), so a mined word keeps
the space in front of it (`` lambda``): inside running text it becomes one token, and decoding
gives back exactly the text it replaced. An added token matches wherever its string occurs
(`` lambda`` also inside `` lambdas``: `` lambda`` + ``s``).

The model side (new embedding and LM-head rows) is :func:`fmlab.models.embeddings.grow_embeddings`.
"""

from __future__ import annotations

import copy
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from itertools import islice
from pathlib import Path

from tokenizers import AddedToken
from transformers import PreTrainedTokenizerBase

from fmlab.data.tokenizer import tokenizer_fingerprint

__all__ = ["add_tokens", "added_tokens", "extension_factory", "mine_tokens"]

log = logging.getLogger(__name__)

# A word with the space before it, if any: how it occurs inside running text.
_WORD = re.compile(r" ?[^\W\d]\w*")
_MAX_CANDIDATES = 50_000  # most frequent distinct words whose pieces are counted
_ROUNDTRIP_DOCS = 200  # training texts checked to decode unchanged after the extension


def mine_tokens(
    texts: Iterable[str],
    tokenizer: PreTrainedTokenizerBase,
    *,
    n: int,
    min_pieces: int = 3,
    min_count: int = 5,
) -> list[str]:
    """The ``n`` words of ``texts`` that an extension saves the most tokens on.

    Args:
        texts: Training documents of the domain.
        tokenizer: The base tokenizer.
        n: How many words to return (fewer if fewer qualify).
        min_pieces: Only words the base tokenizer splits into at least this many tokens.
        min_count: Only words that occur at least this often.

    Returns:
        Words with their leading space where they had one, best first (ties: alphabetical).
    """
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(_WORD.findall(text))
    candidates = [(w, c) for w, c in counts.most_common(_MAX_CANDIDATES) if c >= min_count]
    if not candidates or n <= 0:
        return []
    pieces = tokenizer([w for w, _ in candidates], add_special_tokens=False)["input_ids"]
    scored = [
        (c * (len(p) - 1), w) for (w, c), p in zip(candidates, pieces) if len(p) >= min_pieces
    ]
    scored.sort(key=lambda s: (-s[0], s[1]))
    return [w for _, w in scored[:n]]


def add_tokens(base: PreTrainedTokenizerBase, tokens: Sequence[str]) -> PreTrainedTokenizerBase:
    """A copy of ``base`` with ``tokens`` appended (ids ``len(base)`` on, in order).

    Strings that already are a single token of ``base`` are skipped.

    Raises:
        ValueError: On an empty token, or one that does not encode to itself as a single token
            (naming ``extend_tokenizer.tokens``).
    """
    if bad := [t for t in tokens if not t]:
        raise ValueError(f"extend_tokenizer.tokens: empty token(s) {bad}")
    vocab = base.get_vocab()
    new = [
        t
        for t in dict.fromkeys(tokens)
        if t not in vocab and len(base(t, add_special_tokens=False)["input_ids"]) != 1
    ]
    tok = copy.deepcopy(base)
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in new])
    for t in new:
        ids = tok(t, add_special_tokens=False)["input_ids"]
        if len(ids) != 1 or tok.decode(ids) != t:
            raise ValueError(
                f"extend_tokenizer.tokens: {t!r} does not encode to one token that decodes to "
                f"itself with this tokenizer (got {tok.convert_ids_to_tokens(ids)})"
            )
    return tok


def _check_roundtrip(
    base: PreTrainedTokenizerBase, tok: PreTrainedTokenizerBase, texts: Iterable[str]
) -> None:
    for text in texts:
        before = base.decode(base(text, add_special_tokens=False)["input_ids"])
        after = tok.decode(tok(text, add_special_tokens=False)["input_ids"])
        if before != after:
            at = next(i for i, (a, b) in enumerate(zip(before, after)) if a != b)
            raise ValueError(
                "extend_tokenizer: the added tokens change how text decodes with this tokenizer "
                f"(near {before[max(0, at - 20) : at + 20]!r}); give tokens that occur as-is "
                "in the text, e.g. with their leading space"
            )


def _extend(
    texts: Callable[[], Iterator[str]] | None = None,
    fingerprint: str | None = None,
    cache_dir: str | Path | None = None,
    *,
    base: PreTrainedTokenizerBase,
    tokens: Sequence[str],
    mine: int,
    min_pieces: int,
    min_count: int,
    max_docs: int | None,
    content: str,
) -> PreTrainedTokenizerBase:
    mined: list[str] = []
    if mine:
        if texts is None:
            raise ValueError("extend_tokenizer.mine: this data gives no training texts to mine")
        mined = mine_tokens(
            islice(texts(), max_docs),
            base,
            n=mine,
            min_pieces=min_pieces,
            min_count=min_count,
        )
        log.info("extend_tokenizer: mined %d token(s): %s", len(mined), mined)
    tok = add_tokens(base, [*tokens, *mined])
    if texts is not None:
        _check_roundtrip(base, tok, islice(texts(), _ROUNDTRIP_DOCS))
    log.info("extend_tokenizer: %d -> %d tokens", len(base), len(tok))
    return tok


def extension_factory(
    base: PreTrainedTokenizerBase,
    *,
    tokens: Sequence[str] = (),
    mine: int = 0,
    min_pieces: int = 3,
    min_count: int = 5,
    max_docs: int | None = 20_000,
) -> Callable[..., PreTrainedTokenizerBase]:
    """A tokenizer factory (``factory(texts=, fingerprint=, cache_dir=)``) that returns ``base``
    plus ``tokens`` plus ``mine`` tokens mined from the first ``max_docs`` training texts.

    Prepared data is cached by a description of the factory: it holds the base tokenizer's
    content hash and these settings, so a different extension never reuses cached blocks.
    """
    return partial(
        _extend,
        base=base,
        tokens=list(tokens),
        mine=mine,
        min_pieces=min_pieces,
        min_count=min_count,
        max_docs=max_docs,
        content=tokenizer_fingerprint(base),
    )


def added_tokens(tokenizer: PreTrainedTokenizerBase, n_base: int) -> list[str]:
    """The tokens of ``tokenizer`` with ids from ``n_base`` on (what an extension added)."""
    return tokenizer.convert_ids_to_tokens(list(range(n_base, len(tokenizer))))
