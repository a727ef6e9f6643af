"""Shared fixtures: an isolated fmlab cache/log dir per session, tiny corpora, composed configs."""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


# Set before any test module imports datasets/transformers/wandb: they read these at import.
_BASE = Path(tempfile.mkdtemp(prefix="fmlab-tests-"))
os.environ.update(
    {
        "FMLAB_CACHE_DIR": str(_BASE / "cache"),
        "FMLAB_LOG_DIR": str(_BASE / "logs"),
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        # test-only callbacks/plugins in tests/helpers.py (fmlab builds only allow-listed targets)
        "FMLAB_ALLOWED_TARGETS": "tests.helpers.",
    }
)
os.environ.pop("WANDB_API_KEY", None)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_BASE, ignore_errors=True)


# A verbose switch left by the developer's shell, or by an in-process call of another test file in
# the same worker, would turn every "no traceback" assertion of the command-line tests into noise.
_VERBOSE_ENV = ("FMLAB_VERBOSE", "HYDRA_FULL_ERROR")


@pytest.fixture(autouse=True)
def _no_verbose_switch():
    for key in _VERBOSE_ENV:
        os.environ.pop(key, None)
    yield
    for key in _VERBOSE_ENV:
        os.environ.pop(key, None)


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    return Path(os.environ["FMLAB_CACHE_DIR"])


def _sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    subjects = ["the model", "a researcher", "the optimizer", "our dataset", "the tokenizer"]
    verbs = ["reads", "writes", "trains", "checks", "packs", "splits", "counts"]
    objects = ["tokens", "blocks", "gradients", "documents", "checkpoints", "metrics"]
    return [
        " ".join(
            f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}."
            for _ in range(rng.randint(8, 30))
        )
        for _ in range(n)
    ]


@pytest.fixture(scope="session")
def corpus_docs() -> list[str]:
    """400 synthetic documents (a tiny, learnable language)."""
    return _sentences(400, seed=0)


@pytest.fixture(scope="session")
def jsonl_corpus(tmp_path_factory: pytest.TempPathFactory, corpus_docs: list[str]) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    path.write_text(
        "".join(json.dumps({"body": d, "id": i}) + "\n" for i, d in enumerate(corpus_docs))
    )
    return path


@pytest.fixture(scope="session")
def small_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 documents: about 10 training steps per epoch at batch 8 x 64 tokens."""
    path = tmp_path_factory.mktemp("small") / "small.jsonl"
    path.write_text("".join(json.dumps({"body": d}) + "\n" for d in _sentences(40, seed=1)))
    return path


def python_cmd(module: str) -> list[str]:
    return [sys.executable, "-m", module]


FAST = ["debug=fast", "print_config=false", "callbacks.progress_bar=null"]


def run_train(output_dir: Path, *overrides: str) -> dict:
    """Run ``fmlab.train.train`` in-process on a composed config (what a notebook does)."""
    from fmlab.config import compose_config
    from fmlab.train import train

    cfg = compose_config("train", [*FAST, *overrides], output_dir=output_dir)
    return train(cfg)


def synthetic_overrides(jsonl: Path) -> list[str]:
    """Train on the synthetic corpus (small vocabulary and blocks: fast and learnable)."""
    return [
        "data=files",
        f"data.sources=[{{path: '{jsonl}', text_field: body}}]",
        "data.block_size=64",
        "data.val_fraction=0.1",
        "data.test_fraction=0.1",
        "tokenizer.vocab_size=300",
    ]


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory, small_jsonl: Path) -> dict:
    """A tiny pre-trained model (10 steps, 64 positions) trained once per session: its summary.

    Its runs live under their own ``paths.log_dir`` (``<root>/logs``), so ``<root>/logs/train/
    latest`` points at it until a test trains another model there.
    """
    root = tmp_path_factory.mktemp("tiny_base")
    return run_train(
        root / "run",
        *synthetic_overrides(small_jsonl),
        "run_test=false",
        "trainer.max_steps=10",
        "trainer.val_check_interval=5",
        f"paths.log_dir={root / 'logs'}",
    )


# The built-in logic task as SFT and preference runs share it: same sizes and seed give the same
# prompts per split, so exact match before (SFT) and after (DPO) is measured on the same prompts.
LOGIC = [
    "data.task=logic",
    "data.n_train=1000",
    "data.n_val=100",
    "data.n_test=100",
    "data.exact_match_examples=100",
]


@pytest.fixture(scope="session")
def sft_logic_base(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny model fine-tuned (full SFT, from random init) on the logic task, trained once per
    session: the starting point of preference-training tests. Its summary; the model is at
    ``["paths"]["export_dir"]``."""
    return run_train(
        tmp_path_factory.mktemp("sft_logic_base"),
        "data=sft",
        *LOGIC,
        "tokenizer.vocab_size=300",
        "method=full",
        "optim.lr=3e-3",
        "scheduler.warmup_steps=10",
        "trainer.max_steps=100",
        "trainer.limit_val_batches=0",  # only its test exact match is needed
        "callbacks.checkpoint_best=null",
        "export.which=last",
        "callbacks.checkpoint_last.every_n_train_steps=100",
    )
