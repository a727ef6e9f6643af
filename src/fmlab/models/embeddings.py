"""New vocabulary rows for an extended tokenizer: resize the input embeddings and the LM head
and initialise the rows of the added tokens.

For each added token ``t`` with pieces ``p_1..p_k`` under the old tokenizer, and ``E`` the old
rows ``0..n_old-1`` of a matrix (input embeddings; the LM head too when it is not tied):

- ``mean``:      E_new[t] = mean_i E[i]            (over the whole old vocabulary)
- ``subtokens``: E_new[t] = (1/k) sum_j E[p_j]     (the token starts out as its pieces' average)

An LM-head bias gets the same treatment. With tied embeddings the head *is* the input matrix:
one set of rows. Old rows are never changed.
"""

from __future__ import annotations

from typing import Literal

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["NewRows", "grow_embeddings", "subtoken_ids"]

NewRows = Literal["mean", "subtokens"]


def subtoken_ids(
    old: PreTrainedTokenizerBase, new: PreTrainedTokenizerBase
) -> dict[str, list[int]]:
    """Added token (ids ``len(old)`` on in ``new``) → its token ids under ``old``.

    Raises:
        ValueError: When ``new`` is not ``old`` plus tokens at the end (the first ``len(old)``
            ids must mean the same).
    """
    n_old = len(old)
    old_vocab, new_vocab = old.get_vocab(), new.get_vocab()
    if len(new) < n_old or any(new_vocab.get(t) != i for t, i in old_vocab.items()):
        raise ValueError(
            "extend_tokenizer: the tokenizer is not the base tokenizer with tokens appended"
        )
    added = new.convert_ids_to_tokens(list(range(n_old, len(new))))
    pieces = {t: old(t, add_special_tokens=False)["input_ids"] for t in added}
    if empty := [t for t, p in pieces.items() if not p]:
        raise ValueError(f"extend_tokenizer: {empty} encode to nothing with the base tokenizer")
    return pieces


def _fill(weight: torch.Tensor, n_old: int, pieces: list[list[int]], init: NewRows) -> None:
    old = weight[:n_old].float()  # (V_old, C) or (V_old,) for a bias
    mean = old.mean(0)
    for k, ids in enumerate(pieces):
        row = old[ids].mean(0) if init == "subtokens" else mean
        weight[n_old + k] = row.to(weight.dtype)


@torch.no_grad()
def grow_embeddings(
    model: PreTrainedModel,
    old: PreTrainedTokenizerBase,
    new: PreTrainedTokenizerBase,
    init: NewRows = "subtokens",
) -> list[str]:
    """Resize ``model`` to ``new``'s vocabulary and initialise the added tokens' rows.

    A model with more rows than ``len(new)`` (a padded vocabulary) keeps its size; the rows of
    the added ids are still set.

    Args:
        model: A Hugging Face causal LM sized for ``old``.
        old: The tokenizer the model was trained with.
        new: ``old`` with tokens appended (see :mod:`fmlab.data.tokenizer_extension`).
        init: ``mean`` or ``subtokens`` (see the module docstring).

    Returns:
        The added tokens, in id order.
    """
    if init not in ("mean", "subtokens"):
        raise ValueError(f"extend_tokenizer.init={init!r}: expected mean or subtokens")
    pieces = subtoken_ids(old, new)
    if not pieces:
        return []
    n_old = len(old)
    if model.get_input_embeddings().weight.shape[0] < len(new):
        model.resize_token_embeddings(len(new), mean_resizing=False)
    emb = model.get_input_embeddings()
    head = model.get_output_embeddings()
    tensors = [emb.weight]
    if head is not None and head.weight.data_ptr() != emb.weight.data_ptr():  # untied
        tensors.append(head.weight)
    if head is not None and getattr(head, "bias", None) is not None:
        tensors.append(head.bias)
    for weight in tensors:
        _fill(weight, n_old, list(pieces.values()), init)
    return list(pieces)
