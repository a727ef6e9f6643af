"""Tokenizer factories: train a byte-level BPE on the corpus, or load a pretrained one.

Both are called by the data module as ``factory(texts=..., fingerprint=..., cache_dir=...)`` so a
config can swap them (``tokenizer=bpe`` / ``tokenizer=pretrained``) without other changes.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Annotated

from pydantic import Field
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

__all__ = ["EOS", "PAD", "bpe", "fixed_tokenizer", "pretrained", "tokenizer_fingerprint"]

EOS = "<|endoftext|>"
PAD = "<|pad|>"
_VERSION = 1


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """Content hash of a tokenizer (its full serialisation), for cache keys."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    blob = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()[:16]


def _given(
    texts: Callable[[], Iterator[str]] | None = None,
    fingerprint: str | None = None,
    cache_dir: str | Path | None = None,
    *,
    tokenizer: PreTrainedTokenizerBase,
    content: str,
) -> PreTrainedTokenizerBase:
    return tokenizer


def fixed_tokenizer(tokenizer: PreTrainedTokenizerBase) -> Callable[..., PreTrainedTokenizerBase]:
    """A tokenizer factory that returns ``tokenizer`` (e.g. a base model's, for its new data).

    Data preparation caches packed blocks by a description of the factory; this one is described
    by the tokenizer's content hash, so two different tokenizers never share cached blocks (a
    plain ``lambda`` would be described by its name only).
    """
    return partial(_given, tokenizer=tokenizer, content=tokenizer_fingerprint(tokenizer))


def bpe(
    texts: Callable[[], Iterator[str]],
    fingerprint: str,
    cache_dir: str | Path,
    *,
    vocab_size: Annotated[int, Field(ge=300, le=1_000_000)] = 4096,
    min_frequency: Annotated[int, Field(ge=1)] = 2,
) -> PreTrainedTokenizerFast:
    """Train (once; cached by corpus fingerprint and settings) a byte-level BPE tokenizer.

    Args:
        texts: Callable returning an iterator over the training documents.
        fingerprint: Identity of the training corpus (cache key).
        cache_dir: fmlab cache directory.
        vocab_size: Vocabulary size including the special tokens.
        min_frequency: Minimum pair frequency for a merge.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    key = hashlib.sha1(
        f"{_VERSION}|{fingerprint}|{vocab_size}|{min_frequency}".encode()
    ).hexdigest()
    out = Path(cache_dir) / "tokenizers" / f"bpe-{key[:16]}"
    if (out / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(str(out))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=None, pad_token=PAD
    )
    tmp = out.with_name(out.name + f".tmp{id(tok)}")
    fast.save_pretrained(str(tmp))
    if out.exists():  # another process won the race; keep its (identical) files
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.replace(out)
    return PreTrainedTokenizerFast.from_pretrained(str(out))


def pretrained(
    texts: Callable[[], Iterator[str]] | None = None,
    fingerprint: str | None = None,
    cache_dir: str | Path | None = None,
    *,
    name_or_path: str,
    trust_remote_code: bool = False,
) -> PreTrainedTokenizerBase:
    """Load the tokenizer of a pretrained model (Hub name or local directory).

    A missing pad token is set to EOS, so batches can be padded.
    """
    try:
        from fmlab.models.build import refuse_remote_code

        refuse_remote_code(name_or_path, trust_remote_code, "tokenizer")
        tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except Exception as err:
        from fmlab.config import ConfigError  # a user's path or name: no traceback

        raise ConfigError(f"tokenizer.name_or_path='{name_or_path}': cannot load: {err}") from err
    if tok.eos_token is None:
        raise ValueError(f"tokenizer '{name_or_path}' has no EOS token; fmlab packs with EOS")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
