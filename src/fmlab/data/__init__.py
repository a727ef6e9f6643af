"""Data: sources, embedded corpora, splits, tokenizers, packing and DataModules."""

from fmlab.data.datamodule import BlockDataset, PretrainDataModule, SourceSpec
from fmlab.data.multitask import MultiTaskDataModule
from fmlab.data.packing import pack_documents
from fmlab.data.preference import PreferenceDataModule
from fmlab.data.sft_module import SFTDataModule
from fmlab.data.sources import DataSourceError, load_text_source
from fmlab.data.splits import split_of

__all__ = [
    "BlockDataset",
    "DataSourceError",
    "MultiTaskDataModule",
    "PreferenceDataModule",
    "PretrainDataModule",
    "SFTDataModule",
    "SourceSpec",
    "load_text_source",
    "pack_documents",
    "split_of",
]
