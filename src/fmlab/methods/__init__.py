"""How a model is adapted: full training, the LoRA family (PEFT) and ReFT interventions.

Every method is a factory ``method(model, **options) -> model`` used as a ``_partial_`` config.
"""

from fmlab.methods.full import full
from fmlab.methods.lora import dora, lora, qlora
from fmlab.methods.reft import direft, loreft

__all__ = ["direft", "dora", "full", "lora", "loreft", "qlora"]
