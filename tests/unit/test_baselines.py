import math

import numpy as np
import pytest

from fmlab.evaluation.baselines import unigram_perplexity


def test_unigram_ppl_hand_computed():
    train = np.array([[0, 0, 0, 1]])  # counts: 0->3, 1->1, 2->0
    test = np.array([[2, 0, 1]])  # scored positions: 0 and 1 (the first token has no context)
    # add-one: p(0)=4/7, p(1)=2/7
    expected = math.exp(-(math.log(4 / 7) + math.log(2 / 7)) / 2)
    assert unigram_perplexity(train, test, vocab_size=3) == pytest.approx(expected)


def test_unigram_ppl_uniform_is_vocab_size():
    train = np.arange(100).reshape(10, 10)
    test = np.arange(100).reshape(10, 10)
    assert unigram_perplexity(train, test, vocab_size=100) == pytest.approx(100)
