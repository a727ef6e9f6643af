"""Test-only callbacks, referenced from configs as ``tests.helpers.<Name>``."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch


class GradNormRecorder(L.Callback):
    """Writes the global gradient norm seen right before each optimizer step returns."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.norms: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        grads = [p.grad.detach().flatten() for p in pl_module.parameters() if p.grad is not None]
        self.norms.append(float(torch.cat(grads).norm()))
        self.path.write_text(json.dumps(self.norms))
