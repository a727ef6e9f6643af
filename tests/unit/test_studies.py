"""The seeded studies' aggregation: mean ± std over seeds, the spread rule, tables and plots."""

from __future__ import annotations

import json

import pytest

from fmlab.evaluation.seeds import aggregate, band, fmt, separated


def test_mean_std_and_the_spread_rule():
    stat = aggregate([{"a": 1.0}, {"a": 2.0}, {"a": 3.0}, {"b": 9.0}], ["a"])["a"]
    assert stat == pytest.approx((2.0, 1.0, 3))  # sample std; the run without "a" is left out
    assert fmt(stat) == "2.000 ± 1.000"
    assert fmt((31.25, 2.1, 3), 1, sign=True, suffix="%") == "+31.2% ± 2.1%"
    assert separated((1.0, 0.1, 3), (1.5, 0.2, 3))  # |0.5| > 0.3
    assert not separated((1.0, 0.3, 3), (1.5, 0.3, 3))  # intervals overlap
    steps, mean, std = band([([0, 10, 20], [1.0, 2.0, 3.0]), ([0, 10], [3.0, 4.0])])
    assert steps == [0, 10] and mean == [2.0, 3.0] and std == pytest.approx([1.4142136] * 2)


def _report(gain: float, loss: float) -> dict:
    hist = [
        {"step": 0, "forget/domain/ppl": 200.0, "forget/general/ppl": 100.0},
        {"step": 10, "forget/domain/gain": gain / 2, "forget/general/ppl_ratio": 1 + loss / 2},
        {"step": 20, "forget/domain/gain": gain, "forget/general/ppl_ratio": 1 + loss},
    ]
    final = {
        "forget/domain/gain": gain,
        "forget/domain/ppl": 200.0 * (1 - gain),
        "forget/general/ppl": 100.0 * (1 + loss),
        "forget/general/ppl_ratio": 1 + loss,
        "forget/general/kl_to_base": loss,
    }
    return {"base_ppl": {"domain": 200.0, "general": 100.0}, "history": hist, "final": final}


def test_continual_study_table_over_seeds(tmp_path):
    from fmlab.evaluation.continual_study import write_study

    reports = {
        "replay 0%": [_report(0.6, 0.3), _report(0.62, 0.34)],
        "replay 5%": [_report(0.6, 0.1), _report(0.6, 0.12)],
    }
    table = write_study(reports, tmp_path, {"seeds": [1, 2]})
    # mean of +30% and +34% English loss, sample std 2.83
    assert "| replay 0% | 2 | 200.0 → 78.0 ± 2.8 | 61.0% ± 1.4% |" in table
    assert "+32.0% ± 2.8%" in table
    diffs = json.loads((tmp_path / "results.json").read_text())["differences"]
    loss = next(d for d in diffs if d["metric"] == "retention_loss_pct")
    assert loss["separated"] and loss["diff"] == pytest.approx(21.0)
    gain = next(d for d in diffs if d["metric"] == "domain_gain_pct")
    assert not gain["separated"]  # 61 ± 1.4 vs 60 ± 0: within the spread
    assert (tmp_path / "forgetting.png").stat().st_size > 0


def test_method_study_chooses_on_validation_and_tests_only_the_choice(tmp_path):
    from fmlab.evaluation.method_study import evaluate_chosen, summarize, write_study

    csv = tmp_path / "metrics.csv"
    csv.write_text("step,train/loss,val/exact_match\n0,1.0,\n10,0.5,0.7\n")

    def run(em: float, ckpt: str) -> dict:
        return {
            "val/exact_match": em,
            "val/loss": 1 - em,
            "params_trainable": 10,
            "params_trainable_pct": 1.0,
            "global_step": 10,
            "evaluated_checkpoint": ckpt,
            "paths": {"metrics_csv": str(csv)},
        }

    results = {"full": [run(0.9, "f1"), run(0.8, "f2")], "lora": [run(0.6, "l1"), run(0.5, "l2")]}
    tested = []

    def fake_eval(ckpt, out):
        tested.append(ckpt)
        return {"test/exact_match": 0.85}

    test = evaluate_chosen(summarize(results), results, tmp_path, eval_fn=fake_eval)
    assert test["method"] == "full" and tested == ["f1", "f2"]
    table = write_study(results, test, tmp_path)
    assert "| lora | 10 | 1.00% | 10 | 0.550 ± 0.071 | 0.450 ± 0.071 | yes |" in table
    assert "0.850 ± 0.000 (n=2)" in table
    assert (tmp_path / "learning_curves.png").stat().st_size > 0
