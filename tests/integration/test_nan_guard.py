"""NaN/Inf loss or gradients, injected for real: caught at the step they happen, by policy."""

from __future__ import annotations

import csv

import pytest
import torch
from tests.conftest import run_train, synthetic_overrides

from fmlab.reliability import NonFiniteError, inspect_checkpoint

pytestmark = pytest.mark.slow


def _overrides(jsonl, *extra: str) -> list[str]:
    return [
        *synthetic_overrides(jsonl),
        "callbacks.checkpoint_last.every_n_train_steps=5",
        "export.hf=false",
        "+callbacks.poison._target_=tests.helpers.PoisonAt",
        *extra,
    ]


def _finite(ckpt: str) -> bool:
    state = torch.load(ckpt, weights_only=True, map_location="cpu")["state_dict"]
    return all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())


def test_stop_policy_stops_at_the_bad_step_and_keeps_the_good_checkpoint(small_jsonl, tmp_path):
    with pytest.raises(NonFiniteError) as err:
        run_train(tmp_path, *_overrides(small_jsonl, "+callbacks.poison.labels_at=[7]"))
    msg = str(err.value)
    assert msg.startswith("step 7 (epoch 0): train/loss is nan")
    assert "no target tokens" in msg and "No update was applied" in msg
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert str(last) in msg
    assert inspect_checkpoint(last).global_step == 5 and _finite(str(last))


def test_skip_policy_drops_bad_updates_up_to_max_skips(small_jsonl, tmp_path):
    summary = run_train(
        tmp_path / "ok",
        *_overrides(
            small_jsonl,
            "callbacks.nan_guard.policy=skip",
            "callbacks.nan_guard.max_skips=2",
            "+callbacks.poison.labels_at=[4]",
            "+callbacks.poison.grads_at=[9]",  # finite loss, an infinite gradient
        ),
    )
    assert summary["global_step"] == 20
    assert torch.isfinite(torch.tensor(summary["val/loss"]))
    assert _finite(summary["paths"]["last_ckpt"])
    with open(summary["paths"]["metrics_csv"]) as fh:
        skipped = [
            float(r["train/skipped_steps"])
            for r in csv.DictReader(fh)
            if r.get("train/skipped_steps")
        ]
    assert sorted(set(skipped)) == [1.0, 2.0]  # the running count of dropped updates

    with pytest.raises(NonFiniteError, match="2 bad steps exceed max_skips=1"):
        run_train(
            tmp_path / "too_many",
            *_overrides(
                small_jsonl,
                "callbacks.nan_guard.policy=skip",
                "callbacks.nan_guard.max_skips=1",
                "+callbacks.poison.labels_at=[3,6]",
            ),
        )
