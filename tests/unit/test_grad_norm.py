"""One gradient norm per step, shared by the NaN guard and the clip (real tiny fits)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from fmlab.data.datamodule import BlockDataset
from fmlab.models import llama
from fmlab.modules import CausalLMModule
from fmlab.modules.optim import adamw
from fmlab.reliability import NonFiniteError, NonFiniteGuard


class _InfGradAt(L.Callback):
    """Sets one gradient element to inf after backward at optimizer step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_after_backward(self, trainer, pl_module) -> None:
        if trainer.global_step == self.step:
            p = next(p for p in pl_module.parameters() if p.grad is not None)
            p.grad.view(-1)[0] = float("inf")


class _NoTargetsAt(L.Callback):
    """Masks every label of the batch at optimizer step ``step``: the loss is NaN (0/0)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            batch["labels"] = torch.full_like(batch["input_ids"], -100)


class _ExpectedClip(L.Callback):
    """Clips a copy of the gradients with ``clip_grad_norm_`` (after the guard, before the
    module clips) and compares with the gradients the optimizer stepped with."""

    def __init__(self, max_norm: float) -> None:
        self.max_norm, self.expected, self.checked = max_norm, None, 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        params = [p for p in pl_module.parameters() if p.grad is not None]
        copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
        for c, p in zip(copies, params, strict=True):
            c.grad = p.grad.clone()
        self.norm = torch.nn.utils.clip_grad_norm_(copies, self.max_norm)
        self.expected = [c.grad for c in copies]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        actual = [p.grad for p in pl_module.parameters() if p.grad is not None]
        assert len(actual) == len(self.expected)
        assert all(torch.equal(a, e) for a, e in zip(actual, self.expected, strict=True))
        self.checked += 1


class _NoSharedNorm(CausalLMModule):
    """A module without ``grad_norm`` (and without clipping): the guard computes its own."""

    grad_norm = None


def _fit(
    *callbacks: L.Callback, grad_clip: float = 1.0, steps: int = 3, cls: type = CausalLMModule
) -> CausalLMModule:
    torch.manual_seed(0)
    model = llama(preset="tiny", vocab_size=64, max_position_embeddings=16)
    module = cls(model, optimizer=adamw, grad_clip=grad_clip)
    ids = torch.randint(3, 64, (steps * 2, 16)).numpy()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        callbacks=list(callbacks),
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(BlockDataset(ids), batch_size=2))
    return module


def test_clip_with_the_shared_norm_is_clip_grad_norm_bit_for_bit(monkeypatch):
    computed = []
    total_norm = torch.nn.utils.get_total_norm

    def counting(*args, **kwargs):
        computed.append(1)
        return total_norm(*args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "get_total_norm", counting)
    check = _ExpectedClip(max_norm=0.05)  # small: every step is really scaled down
    _fit(NonFiniteGuard(), check, grad_clip=0.05)
    assert check.checked == 3
    assert len(computed) == 3  # once per step, for the guard and the clip together


@pytest.mark.parametrize(
    ("grad_clip", "cls"), [(1.0, CausalLMModule), (0.0, CausalLMModule), (0.0, _NoSharedNorm)]
)
def test_guard_catches_an_inf_gradient_with_or_without_the_shared_norm(grad_clip, cls):
    with pytest.raises(NonFiniteError, match=r"step 1 .*a gradient is NaN/Inf"):
        _fit(NonFiniteGuard(), _InfGradAt(step=1), grad_clip=grad_clip, cls=cls)


def test_guard_checks_the_loss_with_the_gradients_before_the_update():
    # the loss is read on the host together with the gradient norm, after backward
    with pytest.raises(NonFiniteError, match=r"step 2 .*train/loss is nan \(the batch has no"):
        _fit(NonFiniteGuard(), _NoTargetsAt(step=2), steps=4)
