"""Pre-training end to end through the real entry points, on tiny models."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tests.conftest import FAST, run_train, synthetic_overrides
from transformers import AutoModelForCausalLM, AutoTokenizer

from fmlab.config import compose_config
from fmlab.eval import evaluate

SUMMARY_KEYS = {
    "val/loss",
    "val/ppl",
    "test/loss",
    "test/ppl",
    "test/unigram_ppl",
    "tokens_seen",
    "tokens_per_s",
    "params_total",
    "params_trainable",
    "wall_s",
    "paths",
}


@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> dict:
    """The default config (embedded English corpus, tiny Llama), shortened by debug=fast."""
    return run_train(tmp_path_factory.mktemp("default_run"))


def test_default_run_writes_every_artifact(default_run):
    s = default_run
    assert set(s) >= SUMMARY_KEYS
    out = Path(s["paths"]["output_dir"])
    for rel in (
        "config.yaml",
        "summary.json",
        "checkpoints/last.ckpt",
        "csv/metrics.csv",
        "export/config.json",
        "export/model.safetensors",
        "export/tokenizer.json",
    ):
        assert (out / rel).is_file(), rel
    assert Path(s["paths"]["best_ckpt"]).name.startswith("best-step")
    assert json.loads((out / "summary.json").read_text())["test/loss"] == pytest.approx(
        s["test/loss"]
    )
    assert s["val/ppl"] == pytest.approx(math.exp(s["val/loss"]), rel=1e-5)
    assert s["tokens_seen"] == 20 * 16 * 128  # steps x batch x block
    assert s["params_trainable"] == s["params_total"] > 1_000_000
    assert s["tokens_per_s"] > 0
    # 20 steps already beat a uniform guess over the 4096-token vocabulary
    assert s["val/loss"] < math.log(4096)
    header = (out / "csv/metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss", "val/loss", "val/ppl", "perf/tokens_per_s"} <= set(header)


def test_export_loads_with_auto_classes_and_matches_checkpoint(default_run):
    export = default_run["paths"]["export_dir"]
    model = AutoModelForCausalLM.from_pretrained(export).eval()
    tok = AutoTokenizer.from_pretrained(export)
    assert type(model).__name__ == "LlamaForCausalLM"
    ids = tok("The import statement finds a module.", return_tensors="pt")["input_ids"]
    ckpt = torch.load(default_run["evaluated_checkpoint"], weights_only=True, map_location="cpu")
    state = {
        k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")
    }
    reference = AutoModelForCausalLM.from_pretrained(export).eval()
    reference.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)


def test_eval_recomputes_the_same_numbers(default_run, tmp_path):
    s = default_run
    limits = ["+trainer.limit_val_batches=4", "+trainer.limit_test_batches=4"]  # as debug=fast
    from_ckpt = evaluate(
        compose_config(
            "eval", [f"ckpt_path={s['evaluated_checkpoint']}", *limits], output_dir=tmp_path / "a"
        )
    )
    assert from_ckpt["test/loss"] == pytest.approx(s["test/loss"], rel=1e-5)
    assert from_ckpt["val/loss"] == pytest.approx(s["val/loss"], rel=1e-5)
    from_export = evaluate(
        compose_config(
            "eval", [f"model_path={s['paths']['export_dir']}", *limits], output_dir=tmp_path / "b"
        )
    )
    assert from_export["test/loss"] == pytest.approx(s["test/loss"], rel=1e-5)
    assert (tmp_path / "b" / "summary.json").is_file()


def test_learns_far_below_unigram_on_a_user_corpus(jsonl_corpus, tmp_path):
    s = run_train(
        tmp_path,
        *synthetic_overrides(jsonl_corpus),
        "trainer.max_steps=150",
        "trainer.val_check_interval=50",
        "trainer.limit_val_batches=null",
        "trainer.limit_test_batches=null",
    )
    assert s["data"]["sources"] == [str(jsonl_corpus)]
    assert s["test/ppl"] < 0.25 * s["test/unigram_ppl"], (s["test/ppl"], s["test/unigram_ppl"])


def test_continue_from_a_pretrained_directory(default_run, tmp_path):
    """model=pretrained takes any local HF directory (here an fmlab export) and its tokenizer."""
    export = default_run["paths"]["export_dir"]
    s = run_train(
        tmp_path,
        "model=pretrained",
        f"model.name_or_path={export}",
        "trainer.max_steps=10",
        "optim.lr=1e-3",
    )
    assert s["params_total"] == default_run["params_total"]
    # starts from trained weights: already at the parent's level, not at a random init
    assert s["val/loss"] < default_run["val/loss"] + 0.1


def test_tensorboard_and_wandb_offline_stay_in_the_run_dir(tmp_path, jsonl_corpus):
    s = run_train(
        tmp_path / "wb",
        *synthetic_overrides(jsonl_corpus),
        "logger=wandb",
        "trainer.max_steps=4",
        "export.hf=false",
    )
    run = Path(s["paths"]["output_dir"])
    assert list((run / "wandb").glob("offline-run-*")), list(run.rglob("*"))[:20]
    assert os.environ["WANDB_CACHE_DIR"].startswith(str(run))
    s = run_train(
        tmp_path / "tb",
        *synthetic_overrides(jsonl_corpus),
        "logger=tensorboard",
        "trainer.max_steps=4",
        "export.hf=false",
    )
    assert list((Path(s["paths"]["output_dir"]) / "tensorboard").glob("events.out.tfevents.*"))


def _cli(args: list[str], env_extra: dict | None = None, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=600, **kw)


def test_console_script_runs_and_writes_into_the_hydra_run_dir(tmp_path, jsonl_corpus):
    exe = Path(sys.executable).with_name("fmlab-train")
    overrides = [
        *FAST,
        *synthetic_overrides(jsonl_corpus),
        "trainer.max_steps=6",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    proc = _cli([str(exe), *overrides])
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    assert (run / ".hydra" / "config.yaml").is_file()
    assert json.loads((run / "summary.json").read_text())["global_step"] == 6


def test_bad_config_fails_before_reading_any_data(tmp_path):
    cache = tmp_path / "fresh_cache"
    proc = _cli(
        [
            sys.executable,
            "-m",
            "fmlab.train",
            "+optim.lrr=1",
            "data.block_size=0",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        {"FMLAB_CACHE_DIR": str(cache)},
    )
    assert proc.returncode != 0
    assert "optim.lrr: unknown key" in proc.stderr and "did you mean 'lr'" in proc.stderr
    assert "data.block_size: Input should be greater than 0" in proc.stderr
    assert not cache.exists()  # nothing was read, tokenized or cached


def test_gradient_clipping_works_with_fused_adamw(jsonl_corpus, tmp_path):
    """Lightning's own clipping raises with fused AdamW; fmlab clips in the module instead."""
    record = tmp_path / "norms.json"
    s = run_train(
        tmp_path / "run",
        *synthetic_overrides(jsonl_corpus),
        "optim.fused=true",
        "module.grad_clip=0.05",
        "trainer.max_steps=6",
        "export.hf=false",
        "+callbacks.grad_norms._target_=tests.helpers.GradNormRecorder",
        f"+callbacks.grad_norms.path={record}",
    )
    norms = json.loads(record.read_text())
    assert len(norms) == 6
    assert max(norms) <= 0.05 * (1 + 1e-4)  # clipped before the fused step
    logged = [float(v) for v in _column(s, "train/grad_norm")]
    assert min(logged) > 0.05  # the pre-clip norm was larger: clipping really happened


def _column(summary: dict, name: str) -> list[str]:
    import csv

    with open(summary["paths"]["metrics_csv"]) as fh:
        return [r[name] for r in csv.DictReader(fh) if r[name]]


def test_torch_compile_option_trains(jsonl_corpus, tmp_path):
    s = run_train(
        tmp_path,
        *synthetic_overrides(jsonl_corpus),
        "module.compile=true",
        "trainer.max_steps=3",
        "run_test=false",
        "export.hf=false",
    )
    assert s["global_step"] == 3 and math.isfinite(s["val/loss"])
