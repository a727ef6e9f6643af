"""Named Llama-architecture sizes for training from scratch.

Add a preset by adding an entry here (and, optionally, a ``conf/model/<name>.yaml`` that selects
it). Values are ``transformers.LlamaConfig`` fields; vocabulary and context length come from the
tokenizer and the data at build time.
"""

from __future__ import annotations

__all__ = ["PRESETS"]

PRESETS: dict[str, dict[str, int]] = {
    # ~0.9M non-embedding parameters: CPU smoke tests and the default run (seconds per 100 steps).
    "tiny": dict(
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=384,
    ),
    # ~5M non-embedding: CPU experiments that should learn something in minutes.
    "small": dict(
        hidden_size=256,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=4,
        intermediate_size=688,
    ),
    # GPT-2-small scale (~124M with a 32k vocabulary), Llama shape.
    "124m": dict(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=12,
        intermediate_size=2048,
    ),
    # TinyLlama-1.1B shape.
    "1b": dict(
        hidden_size=2048,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        intermediate_size=5632,
    ),
}
