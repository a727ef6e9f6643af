"""One benchmark case, built once and shared by both training paths: config, data, model.

The fmlab side is composed from the real ``conf/`` tree (``train`` config + overrides) and every
object comes from the same builders ``fmlab-train`` uses; the raw loop takes the same model
weights, optimizer factory, schedule and dataset, so only the training loop differs.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig

from fmlab.bench.measure import StepClock, timed
from fmlab.config import build
from fmlab.config.compose import compose_config
from fmlab.data.datamodule import BlockDataset
from fmlab.data.loaders import train_loader

__all__ = ["METHODS", "BenchData", "Case", "compose_case", "make_dataset", "make_models"]

# benchmark method → (conf/method option, rank key); "full" is fine-tuning with masked prompts
METHODS: dict[str, tuple[str, str | None]] = {
    "pretrain": ("pretrain", None),
    "full": ("full", None),
    "lora": ("lora", "r"),
    "loreft": ("loreft", "rank"),
}


@dataclass
class Case:
    """What one benchmark row trains and how it is measured."""

    method: str = "pretrain"
    preset: str = "tiny"
    batch_size: int = 8
    seq_len: int = 128
    vocab_size: int = 4096
    rank: int = 8
    warmup: int = 3
    steps: int = 10
    device: str = "cpu"
    compile: bool = False
    fused: bool = False
    grad_clip: float = 1.0
    num_workers: int = 0
    seed: int = 0
    overrides: list[str] = field(default_factory=list)  # extra fmlab config overrides
    tag: str = ""  # names a variant made by overrides, e.g. "no-syncs"

    @property
    def precision(self) -> str:
        return "bf16-mixed" if self.device.startswith("cuda") else "32-true"

    @property
    def name(self) -> str:
        tags = [self.method, self.preset] + (["compile"] if self.compile else [])
        tags += (["fused"] if self.fused else []) + ([self.tag] if self.tag else [])
        return "/".join(tags)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "precision": self.precision, "name": self.name}


def compose_case(case: Case, output_dir: str | None = None) -> DictConfig:
    """The ``train`` config of this case: model, method, optimizer, trainer of ``fmlab-train``.

    Checkpoints and validation are off (not part of a training step); the progress bar, LR
    monitor, throughput, NaN guard and CSV logger stay as in a real run.
    """
    if case.method not in METHODS:
        raise ValueError(f"method {case.method!r}: expected one of {sorted(METHODS)}")
    option, rank_key = METHODS[case.method]
    gpu = case.device.startswith("cuda")
    overrides = [
        f"model={case.preset}",
        f"method={option}",
        f"trainer={'gpu' if gpu else 'cpu'}",
        f"trainer.max_steps={case.warmup + case.steps}",
        "+trainer.limit_val_batches=0",
        "trainer.val_check_interval=null",
        "callbacks.checkpoint_best=null",
        "callbacks.checkpoint_last=null",
        f"module.compile={str(case.compile).lower()}",
        f"module.grad_clip={case.grad_clip}",
        f"optim.fused={str(case.fused).lower()}",
        f"seed={case.seed}",
        "print_config=false",
    ]
    if rank_key:
        overrides.append(f"method.{rank_key}={case.rank}")
    out = output_dir or tempfile.mkdtemp(prefix="fmlab-bench-")
    return compose_config("train", overrides + list(case.overrides), output_dir=out)


def make_dataset(case: Case) -> BlockDataset:
    """Random-token rows, enough for one epoch of warm-up + measured steps.

    Pre-training rows are plain ids; fine-tuning rows mask the first quarter as the prompt
    (``labels`` -100, ``prompt_mask`` 1 — where ReFT intervenes).
    """
    rng = np.random.default_rng(case.seed)
    n = (case.warmup + case.steps) * case.batch_size
    ids = rng.integers(3, case.vocab_size, size=(n, case.seq_len), dtype=np.int64)  # (N, T)
    if case.method == "pretrain":
        return BlockDataset(ids)
    prompt = np.zeros_like(ids)
    prompt[:, : case.seq_len // 4] = 1
    labels = np.where(prompt == 1, -100, ids)
    return BlockDataset(ids, {"labels": labels, "prompt_mask": prompt})


_BASE: dict[tuple, torch.nn.Module] = {}  # the last base model: a suite reuses a 1B init


def make_models(case: Case, cfg: DictConfig) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Two copies of one initial model, each adapted by the configured method."""
    key = (case.preset, case.vocab_size, case.seq_len, case.seed, tuple(case.overrides))
    if key not in _BASE:
        _BASE.clear()
        L.seed_everything(case.seed, verbose=False)
        _BASE[key] = build(cfg.model, "model")(
            vocab_size=case.vocab_size,
            max_position_embeddings=case.seq_len,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )
    base = _BASE[key]
    method = build(cfg.method, "method")
    pair = []
    for _ in range(2):
        L.seed_everything(case.seed, verbose=False)  # equal adapter initialisation
        pair.append(method(copy.deepcopy(base).train()))
    return pair[0], pair[1]


class BenchData(L.LightningDataModule):
    """fmlab's training loader (stateful, self-sharded) over the case's rows, timed per batch."""

    def __init__(self, dataset: BlockDataset, case: Case, clock: StepClock | None = None) -> None:
        super().__init__()
        self.dataset, self.case, self.clock = dataset, case, clock

    def train_dataloader(self) -> Any:
        loader = train_loader(
            self.dataset,
            batch_size=self.case.batch_size,
            seed=self.case.seed,
            num_workers=self.case.num_workers,
            pin_memory=self.case.device.startswith("cuda"),
        )
        return loader if self.clock is None else _Timed(loader, self.clock)


class _Timed:
    """An iterable over ``loader`` that adds blocked time to a clock (see :func:`timed`)."""

    def __init__(self, loader: Any, clock: StepClock) -> None:
        self.loader, self.clock = loader, clock

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Any:
        return timed(self.loader, self.clock)
