"""Data preparation: raw sources → clean, deduplicated, split, tokenized datasets + a data card.

Stages (each a class whose constructor is its config schema): :class:`Structure` (read +
validate), :class:`Clean`, :class:`Filter`, :class:`Dedup`, :class:`Split`,
:class:`Decontaminate`, a segment stage (:class:`Pack`, :class:`SFT`, :class:`Classify`,
:class:`Preference`) and :class:`Write`. :func:`prepare_dataset` runs them with per-stage caching;
``fmlab-prepare`` is its command line.
"""

from fmlab.data.pipeline.clean import Clean
from fmlab.data.pipeline.dedup import Dedup
from fmlab.data.pipeline.preference import Preference
from fmlab.data.pipeline.quality import Filter
from fmlab.data.pipeline.records import PrepareError, SourceSpec
from fmlab.data.pipeline.run import prepare_dataset
from fmlab.data.pipeline.segment import SFT, Classify, Pack
from fmlab.data.pipeline.split import Decontaminate, Split
from fmlab.data.pipeline.structure import Structure
from fmlab.data.pipeline.write import Write, load_card

__all__ = [
    "SFT",
    "Classify",
    "Clean",
    "Decontaminate",
    "Dedup",
    "Filter",
    "Pack",
    "Preference",
    "PrepareError",
    "SourceSpec",
    "Split",
    "Structure",
    "Write",
    "load_card",
    "prepare_dataset",
]
