"""Forgetting control: L2-SP and KL are zero at the start and pull gradients toward the start."""

from __future__ import annotations

import pytest
import torch

from fmlab.methods import full, lora, loreft
from fmlab.models import llama
from fmlab.modules.regularizers import (
    capture_reference,
    kl_to_reference,
    l2sp_penalty,
    reference_mode,
)


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return llama(
        preset="tiny",
        vocab_size=64,
        max_position_embeddings=16,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )


def _batch() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return {"input_ids": torch.randint(0, 64, (3, 12))}


class Owner(torch.nn.Module):
    """Stands in for the LightningModule that keeps the references."""


def _wrap(method: str) -> torch.nn.Module:
    model = _model()
    if method == "full":
        return full(model)
    if method == "lora":
        return lora(model, r=4, dropout=0.0)
    return loreft(model, rank=2, layers="all", positions="f3", init_identity=True)  # Φ = id


def _perturb(model: torch.nn.Module, scale: float = 0.5) -> None:
    torch.manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn_like(p))


def test_l2sp_is_zero_at_start_and_its_gradient_is_2lambda_delta():
    model, owner = full(_model()), Owner()
    capture_reference(owner, model, anchor=True, copy_full=False)
    assert float(l2sp_penalty(owner, model).detach()) == 0.0
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    _perturb(model, 0.01)
    lam = 0.3
    (lam * l2sp_penalty(owner, model)).backward()
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, 2 * lam * (p.detach() - start[name]), atol=1e-6), name


@pytest.mark.parametrize("method", ["full", "lora", "reft"])
def test_kl_is_zero_at_start_then_its_gradient_leads_back_to_the_start(method):
    model, owner, batch = _wrap(method), Owner(), _batch()
    if method == "reft":  # ReFT acts on prompt positions: mark the whole row as prompt
        batch["prompt_mask"] = torch.ones_like(batch["input_ids"], dtype=torch.bool)
    capture_reference(owner, model, copy_full=True)
    assert ("_reference" in owner.__dict__) == (method == "full")  # adapters need no copy

    def kl() -> torch.Tensor:
        kwargs = {"prompt_mask": batch["prompt_mask"]} if method == "reft" else {}
        logits = model(input_ids=batch["input_ids"], **kwargs).logits
        return kl_to_reference(owner, model, batch, logits)

    start = kl()
    assert float(start) == pytest.approx(0.0, abs=1e-6)
    start.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and max(float(g.abs().max()) for g in grads) < 1e-5  # a minimum: no pull
    model.zero_grad()
    _perturb(model)
    moved = kl()
    assert float(moved) > 1e-3
    moved.backward()
    with torch.no_grad():  # a small step against the KL gradient moves back toward the start
        for p in model.parameters():
            if p.requires_grad and p.grad is not None:
                p.sub_(0.05 * p.grad / max(float(p.grad.norm()), 1e-12))
    assert float(kl()) < float(moved)


def test_kl_on_replay_rows_only():
    model, owner, batch = _wrap("full"), Owner(), _batch()
    capture_reference(owner, model, copy_full=True)
    _perturb(model)
    logits = model(input_ids=batch["input_ids"]).logits
    none = torch.zeros(3, dtype=torch.bool)
    assert float(kl_to_reference(owner, model, batch, logits, none)) == 0.0
    row1 = torch.tensor([False, True, False])
    only = kl_to_reference(owner, model, batch, logits, row1)
    alone = kl_to_reference(owner, model, {"input_ids": batch["input_ids"][1:2]}, logits[1:2])
    assert float(only) == pytest.approx(float(alone), rel=1e-6) and float(only) > 0


def test_reference_mode_restores_adapters_and_training_mode():
    model, owner, batch = _wrap("lora"), Owner(), _batch()
    _perturb(model)
    model.train()
    with torch.no_grad():
        tuned = model(**batch).logits
        with reference_mode(owner, model) as ref:
            base = ref(**batch).logits
            assert not model.training
        again = model(**batch).logits
    assert model.training and torch.equal(tuned, again) and not torch.allclose(tuned, base)
