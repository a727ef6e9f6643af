"""The release study's bookkeeping with a stand-in for training: which runs start from what,
the retraining budget (the chain's tokens), cumulative compute, and the written results."""

from __future__ import annotations

import json
from pathlib import Path

from fmlab.evaluation.releases_study import ARMS, StudyPlan, run_study, write_study


def test_the_study_runs_every_arm_with_the_right_budget_and_parent(tmp_path):
    plan = StudyPlan(quarters=4, releases=3, docs_per_quarter=20, first_steps=8, update_steps=4)
    calls: list[dict] = []

    def fake_train(overrides: list[str], out: Path) -> dict:
        opts = dict(o.split("=", 1) for o in overrides if "=" in o)
        steps = int(opts["trainer.max_steps"])
        calls.append({"out": out.name, **opts})
        ppl = {f"val/period/{q}/ppl": 10.0 + len(calls) for q in ("2023Q1", "2023Q2", "2023Q3")}
        return {
            **ppl,
            "tokens_seen": steps * plan.batch_size * plan.block_size,
            "params_total": 1000,
            "fit_s": 1.0,
            "paths": {"export_dir": str(out / "export")},
        }

    results = run_study(plan, tmp_path, train_fn=fake_train)
    runs = {c["out"]: c for c in calls}
    assert list(runs) == [
        "release1", "no_replay2", "no_replay3", "replay2", "replay3", "retrain2", "retrain3"
    ]  # fmt: skip
    assert runs["replay3"]["init_from"] == str(tmp_path / "replay2" / "export")  # the chain
    assert runs["no_replay2"]["data.replay"] == "0.0" and runs["replay2"]["data.replay"] == "0.1"
    assert runs["retrain3"]["trainer.max_steps"] == str(8 + 2 * 4)  # the chain's steps up to 3
    assert runs["retrain3"]["tokenizer.name_or_path"] == str(tmp_path / "release1" / "export")
    assert runs["release1"]["data.until"] == "2023-03-31" and runs["retrain3"]["data.until"] == (
        "2023-09-30"
    )
    table = write_study(results, tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "continual-releases.json").read_text())
    rows = {(r["arm"], r["release"]): r for r in saved["rows"]}
    assert {a for a, _ in rows} == set(ARMS) and saved["table"] == table
    per_step = plan.batch_size * plan.block_size
    assert rows[("frozen", 3)]["cumulative_tokens"] == 8 * per_step  # release 1 only
    assert rows[("replay", 3)]["cumulative_tokens"] == (8 + 4 + 4) * per_step
    assert rows[("retrain", 3)]["tokens"] == rows[("replay", 3)]["cumulative_tokens"]
    assert rows[("retrain", 3)]["cumulative_tokens"] == (8 + 12 + 16) * per_step
    assert (tmp_path / "out" / "continual-releases.png").stat().st_size > 10_000
