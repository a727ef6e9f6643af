"""Model builders (no Lightning, no configs): presets and pretrained loading."""

from fmlab.models.build import count_parameters, llama, pretrained
from fmlab.models.export import export_hf
from fmlab.models.presets import PRESETS

__all__ = ["PRESETS", "count_parameters", "export_hf", "llama", "pretrained"]
