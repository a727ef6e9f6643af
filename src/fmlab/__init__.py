"""fmlab: a Lightning + Hydra research framework for foundation-model training."""

__version__ = "0.1.0"
__all__ = ["__version__"]
