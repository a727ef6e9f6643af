"""The LoRA family through PEFT: LoRA, DoRA and QLoRA, with strict loading and checked merges.

fmlab adds what PEFT leaves to the user: range checks on values PEFT accepts silently (``r=-4``),
per-architecture target modules, loading that fails when adapter keys do not match the model (PEFT
only warns and runs the base model), and merge-and-export with a logits check.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from pydantic import Field
from safetensors.torch import load_file
from torch import nn

__all__ = [
    "DEFAULT_TARGETS",
    "dora",
    "load_lora",
    "lora",
    "merge_lora",
    "qlora",
    "qlora_backend_error",
]

_ATTN_MLP = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Linear layers of attention and MLP, by ``config.model_type``. Others use PEFT's "all-linear".
DEFAULT_TARGETS: dict[str, list[str]] = {
    "llama": _ATTN_MLP,
    "mistral": _ATTN_MLP,
    "mixtral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": _ATTN_MLP,
    "qwen3": _ATTN_MLP,
    "gemma": _ATTN_MLP,
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
}

Rank = Annotated[int, Field(gt=0)]
Alpha = Annotated[float, Field(gt=0)]
Dropout = Annotated[float, Field(ge=0, lt=1)]
Targets = Literal["auto", "all-linear"] | list[str]


def _targets(model: nn.Module, target_modules: Targets) -> list[str] | str:
    if target_modules == "auto":
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        return DEFAULT_TARGETS.get(model_type, "all-linear")
    if target_modules == "all-linear":
        return "all-linear"
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    if missing := [t for t in target_modules if t not in names]:
        raise ValueError(f"method.target_modules: {missing} match no module of the model")
    return list(target_modules)


def lora(
    model: nn.Module,
    *,
    r: Rank = 8,
    alpha: Alpha = 16.0,
    dropout: Dropout = 0.05,
    target_modules: Targets = "auto",
    use_dora: bool = False,
    use_rslora: bool = False,
    bias: Literal["none", "all", "lora_only"] = "none",
    modules_to_save: list[str] | None = None,
) -> PeftModel:
    """Wrap ``model`` with LoRA adapters (PEFT); only adapters (and ``modules_to_save``) train.

    Args:
        model: A HF causal LM.
        r: Adapter rank.
        alpha: Scaling numerator (update scaled by ``alpha / r``, or ``alpha / sqrt(r)`` with
            rsLoRA).
        dropout: Dropout on the adapter input.
        target_modules: ``auto`` (per-architecture attention + MLP projections), ``all-linear``,
            or module names.
        use_dora: Weight-decomposed LoRA (DoRA).
        use_rslora: Rank-stabilised scaling.
        bias: Which biases train.
        modules_to_save: Extra modules trained in full and saved with the adapter.
    """
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=_targets(model, target_modules),
        use_dora=use_dora,
        use_rslora=use_rslora,
        bias=bias,
        modules_to_save=modules_to_save,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def dora(
    model: nn.Module,
    *,
    r: Rank = 8,
    alpha: Alpha = 16.0,
    dropout: Dropout = 0.05,
    target_modules: Targets = "auto",
) -> PeftModel:
    """DoRA: LoRA with the update split into magnitude and direction (PEFT ``use_dora``)."""
    return lora(
        model, r=r, alpha=alpha, dropout=dropout, target_modules=target_modules, use_dora=True
    )


def qlora_backend_error() -> str | None:
    """Why QLoRA cannot run here (no CUDA, no bitsandbytes), or None when it can."""
    if not torch.cuda.is_available():
        return "method=qlora needs a CUDA GPU (bitsandbytes 4-bit kernels); none is available"
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return "method=qlora needs bitsandbytes, which is not installed: pip install 'fmlab[qlora]'"
    return None


def qlora(
    model: nn.Module,
    *,
    r: Rank = 16,
    alpha: Alpha = 32.0,
    dropout: Dropout = 0.05,
    target_modules: Targets = "auto",
) -> PeftModel:
    """LoRA on a 4-bit (NF4) quantized base: load it with ``model.quantization=nf4``."""
    if error := qlora_backend_error():
        raise RuntimeError(error)
    if not getattr(model, "is_loaded_in_4bit", False):
        raise ValueError(
            "method=qlora needs a 4-bit base model: use model=pretrained model.quantization=nf4"
        )
    from peft import prepare_model_for_kbit_training

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return lora(model, r=r, alpha=alpha, dropout=dropout, target_modules=target_modules)


qlora.preflight = qlora_backend_error  # type: ignore[attr-defined]  # checked before data is read


def load_lora(base: nn.Module, adapter_dir: str | Path, *, trainable: bool = False) -> PeftModel:
    """Load a PEFT LoRA adapter onto ``base``, failing if its keys do not match the model.

    PEFT's own loader only warns about unexpected keys and then runs the base model silently.

    Raises:
        ValueError: Naming the first unexpected or missing adapter keys.
    """
    adapter_dir = Path(adapter_dir)
    config = LoraConfig.from_pretrained(str(adapter_dir))
    config.inference_mode = not trainable
    # the base actually given (its location may differ from the recorded one: a moved export)
    config.base_model_name_or_path = getattr(getattr(base, "config", None), "_name_or_path", None)
    model = get_peft_model(base, config)
    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, weights)
    unexpected = list(result.unexpected_keys)
    expected = {k for k in model.state_dict() if "lora_" in k}
    missing = [k for k in result.missing_keys if k in expected]
    if unexpected or missing:
        raise ValueError(
            f"adapter {adapter_dir} does not match the model: "
            f"{len(unexpected)} unexpected key(s) {unexpected[:3]}, "
            f"{len(missing)} missing adapter key(s) {missing[:3]}"
        )
    return model


@torch.no_grad()
def merge_lora(
    model: PeftModel, input_ids: torch.Tensor, *, atol: float = 1e-3
) -> tuple[nn.Module, float]:
    """Merge adapters into a copy of the base weights and check the logits still agree.

    Args:
        model: The trained PEFT model (left untouched).
        input_ids: A sample batch ``(B, T)`` to compare logits on.
        atol: Largest allowed absolute logit difference between merged and unmerged models.

    Returns:
        The plain merged HF model and the measured max absolute logit difference.

    Raises:
        ValueError: When the difference exceeds ``atol``.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ids = input_ids.to(device)
    reference = model(input_ids=ids).logits.float()
    merged = copy.deepcopy(model).merge_and_unload().eval()
    diff = float((merged(input_ids=ids).logits.float() - reference).abs().max())
    model.train(was_training)
    if not diff <= atol:
        raise ValueError(f"merged LoRA logits differ from unmerged by {diff:.3g} > atol={atol}")
    return merged, diff


def adapter_base(adapter_dir: str | Path) -> str | None:
    """The base model an adapter was trained on, as recorded by PEFT."""
    data: dict[str, Any] = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    return data.get("base_model_name_or_path")
