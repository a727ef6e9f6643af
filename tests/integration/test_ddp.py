"""A real 2-process DDP run on CPU (gloo), launched by scripts/torchrun.sh: all ranks share one run
directory, the losses equal a single process over the same global batches, the export loads, and
a run resumed mid-way (launched by Lightning this time) continues exactly."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from tests.integration._scaling import (
    ROOT,
    ROWS,
    STEPS,
    TOKENS,
    csv_losses,
    global_losses,
    overrides,
    rank_losses,
    run,
    single_process_reference,
    train_process,
)

pytestmark = pytest.mark.slow


def _torchrun(jsonl: Path, log_dir: Path) -> Path:
    """scripts/torchrun.sh on one machine, 2 CPU processes, without a given run directory."""
    env = {"NPROC": "2", "TRAINER": "ddp", "PYTHON": sys.executable, "FMLAB_LOG_DIR": str(log_dir)}
    run(["bash", str(ROOT / "scripts" / "torchrun.sh"), *overrides(jsonl)], env)
    runs = sorted((log_dir / "train" / "runs").iterdir())
    assert len(runs) == 1, runs  # both ranks resolved the same run directory
    return runs[0]


def test_ddp_torchrun_matches_one_process_and_resumes_exactly(
    jsonl_corpus, tmp_path, tmp_path_factory
):
    run_dir = _torchrun(jsonl_corpus, tmp_path / "logs")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["global_step"] == STEPS
    assert summary["tokens_seen"] == STEPS * 2 * ROWS * TOKENS  # both ranks' rows count
    # rank 1 wrote into the same directory as rank 0
    assert (run_dir / "losses_rank0.json").is_file() and (run_dir / "losses_rank1.json").is_file()
    assert Path(summary["paths"]["export_dir"], "model.safetensors").is_file()

    # 2 ranks x 8 rows = 1 process x 16 rows: the same rows each step, and DDP averages the
    # gradients, so the loss over the global batch is the single process's loss at every step
    reference = single_process_reference(tmp_path_factory, jsonl_corpus)
    single = csv_losses(reference)
    distributed = global_losses(run_dir)
    assert sorted(distributed) == sorted(single) == list(range(STEPS))
    for step, loss in single.items():
        assert distributed[step] == pytest.approx(loss, rel=1e-5, abs=1e-5), step
    # the ranks saw different rows (sharded, not duplicated)
    r0, r1 = rank_losses(run_dir)
    assert all(r0[s] != r1[s] for s in r0)
    # validation is token-weighted and synchronised: the same number as one process
    ref_summary = json.loads((reference / "summary.json").read_text())
    assert summary["val/loss"] == pytest.approx(ref_summary["val/loss"], rel=1e-4)

    # Resume from the step-4 checkpoint with Lightning's own launcher (trainer=ddp_cpu): the
    # steps after it are bitwise the ones of the uninterrupted run.
    resumed = train_process(
        jsonl_corpus,
        tmp_path / "resumed",
        "trainer=ddp_cpu",
        f"ckpt_path={run_dir / 'checkpoints' / 'step4.ckpt'}",
    )
    assert resumed["global_step"] == STEPS
    assert (tmp_path / "resumed" / "train_ddp_process_1.log").exists()  # rank 1 ran there
    after = rank_losses(tmp_path / "resumed")
    assert sorted(after[0]) == [4, 5, 6, 7]
    for rank in (0, 1):
        assert after[rank] == {s: rank_losses(run_dir)[rank][s] for s in after[rank]}
    assert resumed["val/loss"] == pytest.approx(summary["val/loss"], abs=1e-6)
