"""Preference fine-tuning end to end: SFT → DPO through fmlab-train with LoRA and LoReFT, exports
reloaded by fmlab-eval/fmlab-generate, the forgetting monitor, precomputed vs live references,
and bitwise-exact resume after kill -9."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tests.conftest import FAST, LOGIC, run_train

from fmlab.config import compose_config

pytestmark = pytest.mark.slow

# Short runs on the session's SFT base; validation only at the end, on 100 held-out pairs.
STEPS = {"lora": 30, "loreft": 30}


def _dpo(base: dict, out: Path, method: str, *extra: str) -> dict:
    return run_train(
        out,
        "experiment=dpo_logic",
        f"model.name_or_path={base['paths']['export_dir']}",
        f"method={method}",
        *LOGIC,
        f"trainer.max_steps={STEPS[method]}",
        "trainer.val_check_interval=1000",  # validation and test once, after fit
        f"callbacks.checkpoint_last.every_n_train_steps={STEPS[method]}",
        "export.which=last",
        "scheduler.warmup_steps=3",
        *extra,
    )


@pytest.mark.parametrize("method", ["lora", "loreft"])
def test_dpo_after_sft_raises_reward_accuracy_and_keeps_exact_match(
    sft_logic_base, tmp_path, method
):
    extra = []
    if method == "lora":  # the forgetting monitor, with the SFT data as the retention set
        sft_set = "{_target_: fmlab.data.SFTDataModule, task: logic, n_train: 1000, n_val: 100}"
        extra = ["callbacks=continual", f"+callbacks.forgetting.sets.logic_sft={sft_set}"]
        extra.append("trainer.val_check_interval=30")  # the monitor measures during fit
    s = _dpo(sft_logic_base, tmp_path / "run", method, *extra)
    before = sft_logic_base["test/exact_match"]
    print(method, "SFT test/exact_match", before, {k: v for k, v in s.items() if "/" in k})
    # before training the policy is the reference: every reward is 0 and the accuracy 0
    assert s["val/rewards/accuracy"] > 0.5 and s["test/rewards/accuracy"] > 0.5
    assert s["val/rewards/margin"] > 0 and s["val/kl"] > 0
    assert s["test/exact_match"] >= before  # same 100 test prompts as the SFT run
    if method == "loreft":
        assert Path(s["paths"]["export_reft"], "interventions.safetensors").is_file()
        return
    assert Path(s["paths"]["export_merged"], "model.safetensors").is_file()
    report = (Path(s["paths"]["output_dir"]) / "forgetting" / "report.json").read_text()
    assert "forget/logic_sft/ppl_ratio" in report and "forget/domain/gain" in report
    # the export reloads (adapter on the SFT base) and gives the run's numbers
    from fmlab.eval import evaluate

    cfg = compose_config(
        "eval",
        [
            f"model_path={s['paths']['output_dir']}",
            "data=preference",
            *LOGIC,
            "data.exact_match_examples=0",  # no generation: the numbers above suffice
        ],
        output_dir=tmp_path / "eval",
    )
    again = evaluate(cfg)
    assert again["test/rewards/accuracy"] == pytest.approx(s["test/rewards/accuracy"])
    assert again["test/loss"] == pytest.approx(s["test/loss"], rel=1e-4)


def _step_losses(run_dir: Path) -> dict[int, str]:
    """train/loss per step, as the exact strings Lightning wrote."""
    with (run_dir / "csv" / "metrics.csv").open() as fh:
        return {int(r["step"]): r["train/loss"] for r in csv.DictReader(fh) if r["train/loss"]}


def test_precomputed_reference_gives_the_live_losses_without_a_copy(sft_logic_base, tmp_path):
    """Full fine-tuning: reference=precomputed (no frozen copy) trains exactly like live."""
    common = [
        "experiment=dpo_logic",
        f"model.name_or_path={sft_logic_base['paths']['export_dir']}",
        "method=full",
        "module.loss=ipo",
        *LOGIC,
        "data.n_train=64",
        "data.exact_match_examples=8",
        "trainer.max_steps=3",
        "trainer.val_check_interval=3",
        "run_test=false",
        "export.hf=false",
    ]
    live = run_train(tmp_path / "live", *common)
    pre = run_train(tmp_path / "pre", *common, "module.reference=precomputed")
    losses = {run: _step_losses(tmp_path / run) for run in ("live", "pre")}
    assert sorted(losses["pre"]) == [0, 1, 2]
    for step, loss in losses["live"].items():  # equal up to float summation order
        assert float(losses["pre"][step]) == pytest.approx(float(loss), rel=1e-5)
    assert pre["val/rewards/accuracy"] == pytest.approx(live["val/rewards/accuracy"])
    ckpt = torch.load(pre["evaluated_checkpoint"], weights_only=True, map_location="cpu")
    stored = ckpt["fmlab"]["reference_logps"]
    assert stored["train"].shape == (64, 2) and stored["validation"].shape == (100, 2)


# ------------------------------------------------------------------------ kill -9 and resume
MAX_STEPS = 10


def _cmd(base: dict, run_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "fmlab.train",
        *FAST,
        "experiment=dpo_logic",
        f"model.name_or_path={base['paths']['export_dir']}",
        "method=lora",  # LoRA dropout is on: the resumed run must restore the RNG too
        *LOGIC,
        "data.n_train=96",  # 6 steps per epoch: the resumed run crosses an epoch boundary
        "data.n_val=16",
        "data.exact_match_examples=8",
        f"trainer.max_steps={MAX_STEPS}",
        "trainer.val_check_interval=5",
        "callbacks.checkpoint_last.every_n_train_steps=5",
        "export.hf=false",
        "run_test=false",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


def _ckpt_step(path: Path) -> int | None:
    try:
        return int(torch.load(path, weights_only=True, map_location="cpu")["global_step"])
    except Exception:  # not written yet
        return None


def test_sigkill_then_resume_gives_bitwise_equal_losses(sft_logic_base, tmp_path):
    env = {**os.environ}
    full = tmp_path / "full"
    proc = subprocess.run(_cmd(sft_logic_base, full), env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference = _step_losses(full)
    assert sorted(reference) == list(range(MAX_STEPS))

    killed = tmp_path / "killed"
    victim = subprocess.Popen(
        _cmd(sft_logic_base, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.time() + 600
    while time.time() < deadline and (_ckpt_step(last) or 0) < 5:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    step = _ckpt_step(last)
    assert step is not None and 5 <= step < MAX_STEPS, step

    resumed = tmp_path / "resumed"
    proc = subprocess.run(
        _cmd(sft_logic_base, resumed, f"ckpt_path={killed}"),
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = _step_losses(resumed)
    assert sorted(after) == list(range(step, MAX_STEPS))
    assert {s: reference[s] for s in after} == after  # bitwise: identical float strings
