"""LightningModules (objectives) and their optimisation pieces."""

from fmlab.modules.causal_lm import CausalLMModule
from fmlab.modules.multitask import MultiTaskModule
from fmlab.modules.optim import adamw, param_groups
from fmlab.modules.preference import PreferenceModule
from fmlab.modules.schedules import constant, cosine, wsd
from fmlab.modules.sft import SFTModule

__all__ = [
    "CausalLMModule",
    "MultiTaskModule",
    "PreferenceModule",
    "SFTModule",
    "adamw",
    "constant",
    "cosine",
    "param_groups",
    "wsd",
]
