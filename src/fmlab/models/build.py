"""Building causal LMs: a Llama from a named preset, or any pretrained HF causal LM.

Builders take plain arguments (never configs). The data-dependent ones — vocabulary size, special
token ids, context length — are passed by the training entry point.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import Field
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from fmlab.models.presets import PRESETS

__all__ = ["count_parameters", "llama", "pretrained"]

Attn = Literal["eager", "sdpa", "flash_attention_2"]
DType = Literal["float32", "bfloat16", "float16", "auto"]


def llama(
    *,
    preset: str = "tiny",
    vocab_size: Annotated[int, Field(gt=0)],
    max_position_embeddings: Annotated[int, Field(gt=0)],
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    hidden_size: Annotated[int, Field(gt=0)] | None = None,
    num_hidden_layers: Annotated[int, Field(gt=0)] | None = None,
    num_attention_heads: Annotated[int, Field(gt=0)] | None = None,
    num_key_value_heads: Annotated[int, Field(gt=0)] | None = None,
    intermediate_size: Annotated[int, Field(gt=0)] | None = None,
    tie_word_embeddings: bool = True,
    rope_theta: Annotated[float, Field(gt=0)] = 10000.0,
    initializer_range: Annotated[float, Field(gt=0)] = 0.02,
    attention_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0,
    attn_implementation: Attn = "sdpa",
) -> LlamaForCausalLM:
    """A randomly initialised ``LlamaForCausalLM`` of a preset size, with optional overrides."""
    if preset not in PRESETS:
        raise ValueError(f"model.preset='{preset}': unknown; available: {sorted(PRESETS)}")
    shape = dict(PRESETS[preset])
    for key, value in dict(
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        intermediate_size=intermediate_size,
    ).items():
        if value is not None:
            shape[key] = value
    if num_attention_heads is not None and num_key_value_heads is None:
        shape["num_key_value_heads"] = num_attention_heads
    if shape["hidden_size"] % shape["num_attention_heads"]:
        raise ValueError(
            f"model: hidden_size={shape['hidden_size']} is not divisible by "
            f"num_attention_heads={shape['num_attention_heads']}"
        )
    if shape["num_attention_heads"] % shape["num_key_value_heads"]:
        raise ValueError("model: num_attention_heads must be a multiple of num_key_value_heads")
    config = LlamaConfig(
        vocab_size=vocab_size,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        tie_word_embeddings=tie_word_embeddings,
        rope_theta=rope_theta,
        initializer_range=initializer_range,
        attention_dropout=attention_dropout,
        **shape,
    )
    config._attn_implementation = attn_implementation
    return LlamaForCausalLM(config)


def refuse_remote_code(name_or_path: str, trust: bool, key: str) -> None:
    """Refuse a local model/tokenizer directory that ships Python code (``auto_map``).

    transformers would silently fall back to its built-in class, or run the code with
    ``trust_remote_code``; fmlab says which, and runs it only when asked.
    """
    for name in ("config.json", "tokenizer_config.json"):
        path = Path(name_or_path) / name
        if trust or not path.is_file():
            continue
        try:
            auto_map = json.loads(path.read_text()).get("auto_map")
        except (OSError, ValueError):
            continue
        if auto_map:
            raise ValueError(
                f"{key}.name_or_path='{name_or_path}': {name} names custom code {auto_map}; fmlab "
                f"does not run code shipped with a model unless {key}.trust_remote_code=true "
                "(read that code first)"
            )


def pretrained(
    *,
    name_or_path: str,
    dtype: DType = "float32",
    attn_implementation: Attn | None = None,
    revision: str | None = None,
    vocab_size: int | None = None,
    max_position_embeddings: int | None = None,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """Load a pretrained causal LM (Hub name or local HF directory, e.g. an fmlab export).

    The data-dependent arguments are accepted for a uniform call; the vocabulary must match the
    tokenizer (checked), the rest comes from the model's own config. A model that ships its own
    Python code (``auto_map``) is refused unless ``trust_remote_code`` is set explicitly.
    """
    refuse_remote_code(name_or_path, trust_remote_code, "model")
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path,
            dtype=torch_dtype,
            attn_implementation=attn_implementation,
            revision=revision,
            trust_remote_code=trust_remote_code,
        )
    except Exception as err:
        hint = (
            "; it ships its own code: read it, then set model.trust_remote_code=true"
            if "trust_remote_code" in str(err)
            else ""
        )
        raise ValueError(f"model.name_or_path='{name_or_path}': cannot load: {err}{hint}") from err
    n_emb = model.get_input_embeddings().weight.shape[0]
    if vocab_size is not None and vocab_size > n_emb:
        raise ValueError(
            f"model '{name_or_path}' has {n_emb} embeddings but the tokenizer has {vocab_size} "
            "tokens; use the model's own tokenizer (tokenizer=pretrained)"
        )
    if pad_token_id is not None and model.config.pad_token_id is None:
        model.config.pad_token_id = pad_token_id
    return model


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """Return ``(total, trainable)`` parameter counts (shared tensors counted once)."""
    seen: set[int] = set()
    total = trainable = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return total, trainable
