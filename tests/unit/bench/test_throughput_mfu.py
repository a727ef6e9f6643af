"""The Throughput callback logs perf/tokens_per_s and perf/mfu during a real (tiny) fit."""

from __future__ import annotations

import csv
from typing import Any

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from fmlab.bench.flops import model_flops_per_token
from fmlab.callbacks import Throughput
from fmlab.data.datamodule import BlockDataset
from fmlab.models import llama
from fmlab.modules import CausalLMModule
from fmlab.modules.optim import adamw


def _fit(
    throughput: Throughput, steps: int = 6, logger: Any = False
) -> tuple[L.Trainer, CausalLMModule]:
    torch.manual_seed(0)
    model = llama(preset="tiny", vocab_size=256, max_position_embeddings=32)
    module = CausalLMModule(model, optimizer=adamw)
    ids = torch.randint(3, 256, (steps * 4, 32)).numpy()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        callbacks=[throughput],
        logger=logger,
        log_every_n_steps=2,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(BlockDataset(ids), batch_size=4))
    return trainer, module


def test_mfu_is_logged_and_consistent():
    cb = Throughput(window=3, peak_flops=1e11)
    trainer, module = _fit(cb)
    metrics = trainer.callback_metrics
    rate, mfu = float(metrics["perf/tokens_per_s"]), float(metrics["perf/mfu"])
    assert rate > 0
    assert mfu == pytest.approx(rate * model_flops_per_token(module.model, 32) / 1e11, rel=1e-4)


def test_logged_only_when_the_logger_writes(tmp_path):
    # no per-step log calls (each one a host→device copy on a GPU): steps 2, 4, 6 of 6
    logger = L.pytorch.loggers.CSVLogger(tmp_path, name="", version="")
    _fit(Throughput(window=3, peak_flops=1e11), logger=logger)
    rows = list(csv.DictReader((tmp_path / "metrics.csv").read_text().splitlines()))
    steps = [int(r["step"]) for r in rows if r.get("perf/mfu")]
    assert steps == [1, 3, 5]
    assert all(r["perf/tokens_per_s"] for r in rows if r.get("perf/mfu"))


def test_mfu_against_the_measured_cpu_peak_is_a_fraction():
    trainer, _ = _fit(Throughput(window=3))
    assert 0 < float(trainer.callback_metrics["perf/mfu"]) < 1
