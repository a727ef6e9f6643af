"""How a model is adapted: ``full`` (pre-training / full fine-tuning) so far."""

from fmlab.methods.full import full

__all__ = ["full"]
