"""Data: sources, embedded corpora, splits, tokenizers, packing and DataModules.

The names below load on first use (:mod:`fmlab.utils.lazy`): importing a light submodule such
as :mod:`fmlab.data.pipeline.records` does not import torch through this package.
"""

from fmlab.utils.lazy import lazy_exports

_EXPORTS = {
    "BlockDataset": "fmlab.data.datamodule",
    "DataSourceError": "fmlab.data.sources",
    "MultiTaskDataModule": "fmlab.data.multitask",
    "PreferenceDataModule": "fmlab.data.preference",
    "PretrainDataModule": "fmlab.data.datamodule",
    "SFTDataModule": "fmlab.data.sft_module",
    "SourceSpec": "fmlab.data.pipeline.records",
    "load_text_source": "fmlab.data.sources",
    "pack_documents": "fmlab.data.packing",
    "split_of": "fmlab.data.splits",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
