"""Finding the decoder layers (and hidden size) of an HF causal LM, and validating indices."""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["find_decoder_layers", "hidden_size", "is_checkpointing", "resolve_layers"]

# Decoder-layer lists of common HF causal LMs, relative to the *ForCausalLM model: Llama, Qwen,
# Mistral, Gemma, Phi (model.layers); GPT-2, GPT-J, Bloom (transformer.h); OPT
# (model.decoder.layers); GPT-NeoX/Pythia; MPT; multimodal text towers; bare base models.
_LAYER_PATHS = (
    "model.layers",
    "transformer.h",
    "model.decoder.layers",
    "gpt_neox.layers",
    "transformer.blocks",
    "model.language_model.layers",
    "layers",
    "h",
)


def _text_config(model: nn.Module) -> Any:
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        return config.get_text_config()
    return config


def find_decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The list of decoder layers of an HF causal LM and its attribute path.

    Known paths first; otherwise the only ``nn.ModuleList`` whose length is the config's
    ``num_hidden_layers``.

    Raises:
        ValueError: When no (or more than one) candidate is found.
    """
    for path in _LAYER_PATHS:
        try:
            layers = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return path, layers
    n = getattr(_text_config(model), "num_hidden_layers", None)
    found = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.ModuleList) and n is not None and len(m) == n
    ]
    if len(found) == 1:
        return found[0]
    raise ValueError(
        f"cannot find the decoder layers of {type(model).__name__}: tried {list(_LAYER_PATHS)}"
        f" and ModuleLists of length num_hidden_layers={n} (found {[f[0] for f in found]})"
    )


def resolve_layers(layers: str | list[int], n_layers: int, key: str = "method.layers") -> list[int]:
    """``"all"``, a list of ints or ``"0,2,5"`` → sorted layer indices (negatives count back).

    Raises:
        ValueError: Naming ``key``, on out-of-range, repeated or non-integer entries.
    """
    if isinstance(layers, str):
        if layers.strip().lower() == "all":
            return list(range(n_layers))
        try:
            layers = [int(x) for x in layers.replace(";", ",").split(",") if x.strip()]
        except ValueError:
            raise ValueError(
                f"{key}={layers!r}: expected 'all' or a list of layer indices, e.g. [0, 2, 4]"
            ) from None
    if isinstance(layers, int) and not isinstance(layers, bool):
        layers = [layers]
    layers = list(layers)
    if not layers:
        raise ValueError(f"{key}: empty; give 'all' or at least one layer index")
    out = []
    for i in layers:
        if isinstance(i, bool) or not isinstance(i, int):
            raise ValueError(f"{key}={layers!r}: {i!r} is not an integer layer index")
        if not -n_layers <= i < n_layers:
            raise ValueError(
                f"{key}={layers!r}: layer {i} out of range for a model with {n_layers} layers "
                f"(valid: 0..{n_layers - 1}, or negative from the end)"
            )
        out.append(i % n_layers)
    if len(set(out)) != len(out):
        raise ValueError(f"{key}={layers!r}: repeated layer index")
    return sorted(out)


def hidden_size(model: nn.Module) -> int:
    d = getattr(_text_config(model), "hidden_size", None)
    if isinstance(d, int):
        return d
    return model.get_input_embeddings().embedding_dim


def is_checkpointing(model: nn.Module) -> bool:
    # transformers 5 renamed is_gradient_checkpointing (deprecated) to is_activation_checkpointing
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(model), name):
            return bool(getattr(model, name))
    return False
