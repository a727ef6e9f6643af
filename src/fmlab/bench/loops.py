"""The two training paths a benchmark compares, each run for warm-up + measured steps.

``raw``: a plain PyTorch loop (nanoGPT-style): next batch → forward → backward → clip → step.
``fmlab``: ``trainer.fit`` of the real LightningModule, Trainer, callbacks and logger.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from fmlab.bench.measure import PeakMemory, StepClock, timed
from fmlab.bench.setup import BenchData, Case
from fmlab.config import build
from fmlab.workflow import build_module, build_trainer

__all__ = ["RunResult", "run_fmlab", "run_raw"]


@dataclass
class RunResult:
    """One repetition of one path."""

    path: str
    tokens_per_s: float
    step_s: float
    data_wait_share: float
    peak_mem_mb: float
    peak_mem_kind: str
    cpu_step_s: float = 0.0  # main-thread CPU time per measured step
    faults_per_step: float = 0.0  # minor page faults per measured step

    @classmethod
    def from_clock(cls, path: str, case: Case, clock: StepClock, mem: PeakMemory) -> RunResult:
        if not clock.finished or clock.window_s <= 0:
            raise RuntimeError(
                f"{path}: ran {clock.done} steps, needed {clock.warmup}+{clock.steps}"
            )
        tokens = clock.steps * case.batch_size * case.seq_len
        return cls(
            path=path,
            tokens_per_s=tokens / clock.window_s,
            step_s=clock.window_s / clock.steps,
            data_wait_share=clock.wait / clock.window_s,
            peak_mem_mb=mem.peak_mb(),
            peak_mem_kind=mem.kind,
            cpu_step_s=clock.cpu_s / clock.steps,
            faults_per_step=clock.faults / clock.steps,
        )


class _RawState:
    """Optimizer, schedule and (compiled) forward of the raw loop, kept across repetitions."""

    def __init__(self, model: torch.nn.Module, cfg: DictConfig, case: Case) -> None:
        self.model = model
        self.forward = torch.compile(self.model) if case.compile else self.model
        self.cfg = cfg

    def optimizer(self, total_steps: int) -> tuple[torch.optim.Optimizer, Any]:
        opt = build(self.cfg.optim, "optim")(self.model)  # the factory fmlab uses
        return opt, build(self.cfg.scheduler, "scheduler")(opt, total_steps=total_steps)


def run_raw(
    state: _RawState | None,
    model: Any,
    cfg: DictConfig,
    case: Case,
    dataset: Any,
    clock: StepClock | None = None,
):
    """One repetition of the plain loop; returns (result, state to reuse next repetition)."""
    state = state or _RawState(model, cfg, case)
    device = torch.device(case.device)
    total = case.warmup + case.steps
    state.model.to(device).train()  # before the optimizer: its state lives with the weights
    opt, sched = state.optimizer(total)
    params = [p for p in state.model.parameters() if p.requires_grad]
    loader = DataLoader(
        dataset,
        batch_size=case.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=case.num_workers,
        pin_memory=device.type == "cuda",
    )
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if case.precision == "bf16-mixed"
        else contextlib.nullcontext()
    )
    clock, mem = clock or StepClock(case.warmup, case.steps, device), PeakMemory(device)
    mem.start()
    while not clock.finished:
        for batch in timed(loader, clock):
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            kwargs = {"labels": batch.get("labels", batch["input_ids"])}
            if "prompt_mask" in batch and getattr(state.model, "accepts_prompt_mask", False):
                kwargs["prompt_mask"] = batch["prompt_mask"]
            with autocast:
                loss = state.forward(input_ids=batch["input_ids"], **kwargs).loss
            loss.backward()
            if case.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, case.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            mem.sample()
            clock.step_end()
            if clock.finished:
                break
    result = RunResult.from_clock("raw", case, clock, mem)
    if device.type == "cuda":  # as Lightning's teardown does: the other path's peak is its own
        state.model.cpu()
    return result, state


class _ClockCallback(L.Callback):
    def __init__(self, clock: StepClock, mem: PeakMemory) -> None:
        self.clock, self.mem = clock, mem

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.mem.start()

    def on_train_batch_end(self, *args: Any) -> None:
        self.mem.sample()
        self.clock.step_end()


def run_fmlab(
    module: L.LightningModule | None,
    model: Any,
    cfg: DictConfig,
    case: Case,
    dataset: Any,
    clock: StepClock | None = None,
):
    """One repetition of ``trainer.fit``; returns (result, module to reuse next repetition)."""
    module = module or build_module(cfg, model)
    device = torch.device(case.device)
    clock, mem = clock or StepClock(case.warmup, case.steps, device), PeakMemory(device)
    trainer = build_trainer(cfg)
    trainer.callbacks.append(_ClockCallback(clock, mem))
    trainer.fit(module, datamodule=BenchData(dataset, case, clock))
    return RunResult.from_clock("fmlab", case, clock, mem), module
