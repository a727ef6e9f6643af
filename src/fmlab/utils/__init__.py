"""Small shared helpers (printing, files)."""

from fmlab.utils.io import atomic_write_text, write_json
from fmlab.utils.printing import print_config, print_table

__all__ = ["atomic_write_text", "print_config", "print_table", "write_json"]
