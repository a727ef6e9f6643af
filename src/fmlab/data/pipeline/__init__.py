"""Data preparation: raw sources → clean, deduplicated, split, tokenized datasets + a data card.

Stages (each a class whose constructor is its config schema): :class:`Structure` (read +
validate), :class:`Clean`, :class:`Filter`, :class:`Dedup`, :class:`Split`,
:class:`Decontaminate`, a segment stage (:class:`Pack`, :class:`SFT`, :class:`Classify`,
:class:`Preference`) and :class:`Write`. :func:`prepare_dataset` runs them with per-stage caching;
``fmlab-prepare`` is its command line.
"""

from fmlab.utils.lazy import lazy_exports

# loaded on first use (fmlab.utils.lazy): the schema of fmlab-prepare needs SourceSpec only
_EXPORTS = {
    "SFT": "fmlab.data.pipeline.segment",
    "Classify": "fmlab.data.pipeline.segment",
    "Clean": "fmlab.data.pipeline.clean",
    "Decontaminate": "fmlab.data.pipeline.split",
    "Dedup": "fmlab.data.pipeline.dedup",
    "Filter": "fmlab.data.pipeline.quality",
    "Pack": "fmlab.data.pipeline.segment",
    "Preference": "fmlab.data.pipeline.preference",
    "PrepareError": "fmlab.data.pipeline.records",
    "SourceSpec": "fmlab.data.pipeline.records",
    "Split": "fmlab.data.pipeline.split",
    "Structure": "fmlab.data.pipeline.structure",
    "Write": "fmlab.data.pipeline.write",
    "load_card": "fmlab.data.pipeline.write",
    "prepare_dataset": "fmlab.data.pipeline.run",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
