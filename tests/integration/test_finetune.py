"""Fine-tuning methods end to end: full, LoRA, DoRA, LoReFT, DiReFT on a built-in task."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from itertools import islice
from pathlib import Path

import lightning as L
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from fmlab.config import compose_config
from fmlab.data import SFTDataModule
from fmlab.eval import evaluate
from fmlab.generate import generate
from fmlab.methods.lora import DEFAULT_TARGETS
from fmlab.tasks import generate_task

# the module trains the default 600-step base once (about 2.5 min on 2 idle cores)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


QUIET = ["print_config=false", "callbacks.progress_bar=null"]


def _run(out: Path, *overrides: str) -> dict:
    from fmlab.train import train

    return train(compose_config("train", [*QUIET, *overrides], output_dir=out))


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> str:
    """The default pre-trained model: ``fmlab-train`` with no arguments (its export dir)."""
    return _run(tmp_path_factory.mktemp("base"), "run_test=false")["paths"]["export_dir"]


def _sft(base: str, out: Path, method: str, *extra: str) -> dict:
    """The shipped ``sft_logic`` experiment (2,000 training examples) on ``base``; validation
    every 200 steps on 100 examples (the test budget), test on 100."""
    return _run(
        out,
        "experiment=sft_logic",
        f"method={method}",
        f"model.name_or_path={base}",
        "trainer.val_check_interval=200",
        "data.n_val=100",
        "data.n_test=100",
        *extra,
    )


_TRAINED: dict[str, dict] = {}


@pytest.fixture(scope="module")
def trained(base, tmp_path_factory):
    """``trained(method)``: the method's run on the logic task, trained once per module."""

    def get(method: str) -> dict:
        if method not in _TRAINED:
            steps = BUDGET[method][0]
            out = tmp_path_factory.mktemp(method)
            _TRAINED[method] = _sft(base, out, method, f"trainer.max_steps={steps}")
        return _TRAINED[method]

    yield get
    _TRAINED.clear()


# Exact-match floor per method on the logic task (true/false answers: chance is 50%). ReFT only
# edits prompt positions of a frozen 4-layer model: it learns, but slower, and DiReFT (no
# orthogonality) slowest; the README's table has the measured numbers.
# The floors sit about 3 standard errors below the measured value, because the runs move: with
# 100 test examples one exact-match number has a binomial standard error of ~0.03 at 0.9, and the
# result changes with torch's thread count (a 2-core machine with default threads gave LoRA 0.84
# where the README measured 0.90). Measured spread of LoRA (this recipe, 400 steps), over the
# seeds 1234/1/2/3 (which also draw the task's examples) on a base trained with 1 thread: test
# 0.88/0.92/0.86/0.89, validation 0.88/0.95/0.84/0.90 (mean 0.89, sd 0.035).
BUDGET = {
    "full": (400, 0.85),  # README 0.975
    "lora": (400, 0.8),  # README 0.90; measured 0.84-0.95 (above)
    "dora": (400, 0.75),  # README 0.855
    "loreft": (800, 0.8),  # README 0.89
    "direft": (800, 0.58),  # README 0.71
}


@pytest.mark.parametrize("method", list(BUDGET))
def test_each_method_learns_the_logic_task(trained, tmp_path, method):
    floor = BUDGET[method][1]
    s = trained(method)
    print(method, {k: s[k] for k in ("val/exact_match", "test/exact_match", "val/loss")})
    assert s["method"] == method
    assert s["test/exact_match"] >= floor, s
    assert s["val/exact_match"] >= floor
    if method in ("loreft", "direft"):
        d, r, layers = 128, 8, 4
        assert s["params_trainable"] == layers * (2 * d * r + r)
        assert Path(s["paths"]["export_reft"], "interventions.safetensors").is_file()
    elif method in ("lora", "dora"):
        assert 0 < s["params_trainable_pct"] < 10
        assert Path(s["paths"]["export_adapter"], "adapter_model.safetensors").is_file()
        assert Path(s["paths"]["export_merged"], "model.safetensors").is_file()
    else:
        assert s["params_trainable"] == s["params_total"]
    if method in ("dora", "direft"):
        return  # same export/reload code paths as lora/loreft, checked below for those
    # the export reloads (adapters/interventions active) and gives the same numbers
    cfg = compose_config(
        "eval",
        [
            f"model_path={s['paths']['output_dir']}",
            "data=sft",
            "data.task=logic",
            "data.n_val=100",
            "data.n_test=100",
        ],
        output_dir=tmp_path / "eval",
    )
    again = evaluate(cfg)
    assert again["test/exact_match"] == pytest.approx(s["test/exact_match"])
    assert again["test/loss"] == pytest.approx(s["test/loss"], rel=1e-4)


def test_generate_cli_and_python_api(trained, tmp_path):
    s = trained("lora")
    held_out = generate_task("logic", n_train=2000, n_val=100, n_test=100, seed=1234)["test"][:20]
    prompts = "[" + ",".join(f"'{r['prompt']}'" for r in held_out) + "]"
    cfg = compose_config(
        "generate",
        [f"model_path={s['paths']['export_adapter']}", f"prompts={prompts}", "max_new_tokens=4"],
        output_dir=tmp_path / "gen",
    )
    rows = generate(cfg)
    hits = [r["completion"].strip() == h["response"].strip() for r, h in zip(rows, held_out)]
    # LoRA scores 0.84-0.95 (BUDGET): 20 prompts at 0.86 give 17 +- 1.6 hits; chance is 10
    assert sum(hits) >= 13, rows
    sampled = compose_config(
        "generate",
        [
            f"model_path={s['paths']['export_merged']}",
            f"prompts={prompts}",
            "do_sample=true",
            "temperature=0.7",
            "max_new_tokens=4",
        ],
        output_dir=tmp_path / "gen2",
    )
    assert len(generate(sampled)) == 20
    exe = Path(sys.executable).with_name("fmlab-generate")
    proc = subprocess.run(
        [
            str(exe),
            f"model_path={s['paths']['output_dir']}",
            f"prompts={prompts}",
            "max_new_tokens=4",
            f"hydra.run.dir={tmp_path / 'cli'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = (tmp_path / "cli" / "generations.jsonl").read_text().splitlines()
    assert [json.loads(x)["completion"] for x in lines] == [r["completion"] for r in rows]


def _csv_losses(path: str) -> list[float]:
    with open(path) as fh:
        return [float(r["train/loss"]) for r in csv.DictReader(fh) if r["train/loss"]]


def test_lora_losses_match_a_plain_pytorch_peft_loop(base, tmp_path):
    steps = 6
    s = _sft(
        base,
        tmp_path,
        "lora",
        f"trainer.max_steps={steps}",
        "method.dropout=0.0",
        "scheduler=constant",
        "scheduler.warmup_steps=0",
        "export.hf=false",
        "run_test=false",
        "data.n_train=200",
        "trainer.log_every_n_steps=1",
    )
    fmlab_losses = _csv_losses(s["paths"]["metrics_csv"])
    assert len(fmlab_losses) == steps

    # The same thing written by hand: PEFT + torch AdamW + clipping, same data order and seed.
    L.seed_everything(1234)
    tok = AutoTokenizer.from_pretrained(base)
    dm = SFTDataModule(
        task="logic", n_train=200, n_val=100, n_test=100, max_length=64, batch_size=16, seed=1234
    )
    dm.prepare(lambda **_: tok)
    L.seed_everything(1234)
    model = AutoModelForCausalLM.from_pretrained(base).train()
    model = get_peft_model(
        model,
        LoraConfig(
            r=8,
            lora_alpha=16,
            lora_dropout=0.0,
            target_modules=DEFAULT_TARGETS["llama"],
            task_type="CAUSAL_LM",
        ),
    )
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    plain = []
    for batch in islice(dm.train_dataloader(), steps):
        loss = model(
            **{k: batch[k] for k in ("input_ids", "attention_mask", "labels", "position_ids")}
        ).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
        plain.append(loss.item())
    assert fmlab_losses == pytest.approx(plain, rel=1e-5, abs=1e-6)
    assert plain[-1] < plain[0]


def test_qlora_refuses_to_start_without_gpu_before_reading_data(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    cache = tmp_path / "cache"
    proc = subprocess.run(
        [sys.executable, "-m", "fmlab.train", "method=qlora", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True,
        text=True,
        env={**os.environ, "FMLAB_CACHE_DIR": str(cache)},
        timeout=300,
    )
    assert proc.returncode != 0
    assert "method=qlora needs a CUDA GPU" in proc.stderr
    assert not cache.exists()
