"""Evaluation helpers: baselines and reports."""

from fmlab.evaluation.baselines import unigram_perplexity

__all__ = ["unigram_perplexity"]
