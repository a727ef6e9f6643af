"""Multi-task maths: exact task shares, the batch sampler (homogeneous, sharded, resumable),
pooling, head losses/metrics on known batches, per-task metric isolation, uncertainty weights."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

from fmlab.data.multitask import MultiTaskSampler
from fmlab.models import llama
from fmlab.models.heads import final_hidden, pool
from fmlab.modules.multitask import MultiTaskModule, higher_is_better
from fmlab.tasks.spec import TaskSpec, parse_tasks, task_shares

TOPIC = {"kind": "classification", "builtin": "classify", "labels": ["a", "b", "c"]}


# ------------------------------------------------------------------ shares
def test_task_shares_by_strategy():
    assert task_shares([100, 300], "proportional") == [Fraction(1, 4), Fraction(3, 4)]
    assert task_shares([100, 300, 50], "round_robin") == [Fraction(1, 3)] * 3
    assert task_shares([5, 5], "weights", weights=[0, 2]) == [0, 1]
    t = task_shares([100, 400], "temperature", temperature=2.0)  # sqrt: 10 : 20
    assert sum(t) == 1 and t == [Fraction(1, 3), Fraction(2, 3)]
    t5 = [float(s) for s in task_shares([10, 1000], "temperature", temperature=5.0)]
    expected = [10**0.2 / (10**0.2 + 1000**0.2), 1000**0.2 / (10**0.2 + 1000**0.2)]
    assert t5 == pytest.approx(expected, abs=1e-4)
    with pytest.raises(ValueError, match="sum to 0"):
        task_shares([5, 5], "weights", weights=[0, 0])
    with pytest.raises(ValueError, match="one weight per task"):
        task_shares([5, 5], "weights", weights=[1])


def _drain(sampler: MultiTaskSampler, batches: int) -> list[list[int]]:
    out, it = [], iter(sampler)
    for _ in range(batches):
        out.append([next(it) for _ in range(sampler.batch_size)])
    return out


def _task_of(sampler: MultiTaskSampler, index: int) -> int:
    return max(i for i, off in enumerate(sampler.offsets) if off <= index)


@pytest.mark.parametrize("shares", [[Fraction(1, 4), Fraction(3, 4)], [Fraction(1, 3)] * 3])
def test_sampler_ratios_are_exact_and_batches_homogeneous(shares):
    sizes = [40, 120, 64][: len(shares)]
    s = MultiTaskSampler(sizes, shares, batch_size=4, steps_per_epoch=1000, seed=3)
    counts = [0] * len(sizes)
    for n, batch in enumerate(_drain(s, 200), start=1):
        tasks = {_task_of(s, i) for i in batch}
        assert len(tasks) == 1  # one task per batch
        counts[tasks.pop()] += 1
        # after any n batches each task has round(share * n) of them, within one
        assert all(abs(c - float(sh) * n) < 1 for c, sh in zip(counts, shares))
    assert sum(counts) == 200
    assert s.counts == counts and s.step == 200


def test_round_robin_cycles_and_zero_weight_is_never_sampled():
    s = MultiTaskSampler([8, 8, 8], [Fraction(1, 3)] * 3, batch_size=2, steps_per_epoch=9)
    assert s.tasks_of(0, 9) == [0, 1, 2] * 3
    z = MultiTaskSampler([8, 8], [Fraction(0), Fraction(1)], batch_size=2, steps_per_epoch=8)
    assert set(z.tasks_of(0, 50)) == {1}


def test_each_task_is_a_fresh_permutation_per_pass():
    s = MultiTaskSampler([6, 6], [Fraction(1, 2)] * 2, batch_size=3, steps_per_epoch=8, seed=1)
    rows = {0: [], 1: []}
    for batch in _drain(s, 8):
        rows[_task_of(s, batch[0])] += batch
    for t, got in rows.items():  # 4 batches x 3 = 2 passes over 6 rows: each pass a permutation
        lo = s.offsets[t]
        assert sorted(got[:6]) == list(range(lo, lo + 6)) == sorted(got[6:])
        assert got[:6] != got[6:]  # reshuffled per pass


def test_ranks_train_the_same_task_on_disjoint_rows():
    shares = [Fraction(1, 4), Fraction(3, 4)]
    kw = dict(batch_size=4, steps_per_epoch=30, seed=5, world=2)
    r0 = _drain(MultiTaskSampler([40, 120], shares, rank=0, **kw), 30)
    r1 = _drain(MultiTaskSampler([40, 120], shares, rank=1, **kw), 30)
    single = MultiTaskSampler([40, 120], shares, batch_size=8, steps_per_epoch=30, seed=5)
    for a, b, both in zip(r0, r1, _drain(single, 30)):
        assert not set(a) & set(b)
        assert a + b == both  # the two ranks together = one process with the global batch


def test_sampler_resume_continues_with_the_exact_next_batch():
    shares = [Fraction(2, 5), Fraction(3, 5)]
    ref = _drain(MultiTaskSampler([30, 50], shares, batch_size=4, steps_per_epoch=17, seed=2), 17)
    first = MultiTaskSampler([30, 50], shares, batch_size=4, steps_per_epoch=17, seed=2)
    head = _drain(first, 7)
    state = first.state_dict()
    resumed = MultiTaskSampler([30, 50], shares, batch_size=4, steps_per_epoch=17, seed=2)
    resumed.load_state_dict(state)
    assert head + _drain(resumed, 10) == ref
    with pytest.raises(ValueError, match="trained on 2 tasks"):
        MultiTaskSampler(
            [1, 2, 3], [Fraction(1, 3)] * 3, batch_size=1, steps_per_epoch=1
        ).load_state_dict(state)


# ------------------------------------------------------------------ specs
def test_task_spec_validation_names_the_task_and_field():
    with pytest.raises(ValueError, match=r"task\.topic: .*needs labels"):
        parse_tasks({"topic": {"kind": "classification", "builtin": "classify"}})
    with pytest.raises(ValueError, match=r"task\.topic\.lables: unknown key"):
        parse_tasks({"topic": {**TOPIC, "lables": ["x"]}})
    with pytest.raises(ValueError, match="exactly one of builtin or sources"):
        TaskSpec(kind="regression")
    with pytest.raises(ValueError, match="no task selected"):
        parse_tasks(None)


# ------------------------------------------------------------------ pooling and heads
def test_pool_last_real_token_for_right_and_left_padding_and_mean():
    h = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)  # (B, T, C)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert pool(h, right, "last").flatten().tolist() == [1.0, 7.0]
    assert pool(h, left, "last").flatten().tolist() == [3.0, 7.0]
    assert pool(h, right, "mean").flatten().tolist() == [0.5, 5.5]


def _module(**tasks) -> MultiTaskModule:
    torch.manual_seed(0)
    model = llama(preset="tiny", vocab_size=50, max_position_embeddings=16, pad_token_id=0)
    return MultiTaskModule(model, optimizer=None, tasks=tasks)


def _batch(ids: list[list[int]], targets, task: int = 0) -> dict:
    width = max(map(len, ids))
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in ids])
    return {
        "input_ids": torch.tensor([r + [0] * (width - len(r)) for r in ids]),
        "attention_mask": mask,
        "targets": torch.tensor(targets),
        "task": task,
    }


def test_classification_loss_and_metrics_on_a_known_batch():
    m = _module(topic=TOPIC).eval()
    batch = _batch([[5, 6, 7], [8, 9], [10, 11, 12, 13], [3]], [0, 2, 1, 1])
    with torch.no_grad():
        hidden = final_hidden(m.model, batch)  # (B, T, C) after the final norm
        last = batch["attention_mask"].sum(1) - 1
        logits = m.heads["topic"].proj(hidden[torch.arange(4), last])  # by hand
        loss, pred, n = m.task_outputs("topic", batch)
    assert torch.allclose(pred, logits, atol=1e-6)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, batch["targets"]).item(), rel=1e-6)
    assert n == 4
    m._eval_step(batch, "val")
    expected = (logits.argmax(-1) == batch["targets"]).float().mean().item()
    assert m.task_metrics["val_topic"]["accuracy"].compute().item() == pytest.approx(expected)
    assert m.task_metrics["val_topic"]["loss"].compute().item() == pytest.approx(loss.item())


def test_each_task_metric_sees_only_its_own_examples():
    m = _module(
        a=TOPIC, b={**TOPIC, "labels": ["x", "y"]}, r={"kind": "regression", "builtin": "count"}
    ).eval()
    a = _batch([[5, 6], [7, 8, 9]], [0, 1], task=0)
    b = _batch([[11, 12, 13]] * 5, [1] * 5, task=1)
    r = _batch([[20, 21], [22], [23, 24, 25]], [1.0, 0.0, 2.0], task=2)
    with torch.no_grad():
        for batch in (a, b, r, b):
            m._eval_step(batch, "val")
    acc = m.task_metrics["val_a"]["accuracy"]
    assert int(acc.tp.sum() + acc.fn.sum()) == 2  # a's 2 examples only
    b_acc = m.task_metrics["val_b"]["accuracy"]
    assert int(b_acc.tp.sum() + b_acc.fn.sum()) == 10
    with torch.no_grad():
        _, pred_r, _ = m.task_outputs("r", r)
    mse = F.mse_loss(pred_r, r["targets"]).item()
    assert m.task_metrics["val_r"]["mse"].compute().item() == pytest.approx(mse, rel=1e-5)
    assert m.task_metrics["test_a"]["loss"].update_count == 0  # test metrics untouched


def test_uncertainty_weighting_formula_and_optimum():
    m = _module(topic=TOPIC, count={"kind": "regression", "builtin": "count"})
    m.weighting = "uncertainty"
    with torch.no_grad():
        m.log_vars.copy_(torch.tensor([math.log(2.0), 0.0]))
    L = torch.tensor(3.0)
    assert m.weigh(0, L).item() == pytest.approx(3.0 / 2 + 0.5 * math.log(2.0))  # CE: e^-s L + s/2
    assert m.weigh(1, L).item() == pytest.approx(0.5 * 3.0)  # regression: e^-s L / 2 + s/2
    # the learned weight settles where d/ds = 0: s* = log(2 L) for cross-entropy tasks
    s = torch.zeros((), requires_grad=True)
    opt = torch.optim.SGD([s], lr=0.1)
    for _ in range(500):
        opt.zero_grad()
        (torch.exp(-s) * L + 0.5 * s).backward()
        opt.step()
    m.log_vars.data[0] = s.detach()
    assert s.item() == pytest.approx(math.log(6.0), abs=1e-3)
    static = _module(topic={**TOPIC, "loss_weight": 0.25})
    assert static.weigh(0, L).item() == pytest.approx(0.75)


def test_aggregate_maps_metrics_to_higher_is_better():
    assert higher_is_better("accuracy", 0.7) == 0.7
    assert higher_is_better("ppl", 4.0) == 0.25
    assert higher_is_better("mse", 1.0) == 0.5
    assert higher_is_better("loss", 0.0) == 1.0


# ------------------------------------------------------------------ the study's table
def test_forgetting_rows_and_study_files(tmp_path):
    from fmlab.evaluation.multitask_study import forgetting_rows, write_study

    def run(em: float, acc: float, steps: int) -> dict:
        return {
            "test/logic/exact_match": em,
            "test/logic/loss": 1 - em,
            "test/topic/accuracy": acc,
            "global_step": steps,
        }

    results = {
        "first only": run(0.9, 0.25, 400),
        "second only": run(0.1, 0.95, 400),
        "sequential": run(0.55, 0.97, 400),
        "multi-task": run(0.88, 0.96, 800),
    }
    metrics = {"logic": "exact_match", "topic": "accuracy"}
    rows = {r["condition"]: r for r in forgetting_rows(results, "logic", "topic", metrics)}
    assert rows["sequential"]["forgetting"] == pytest.approx(0.35)
    assert rows["multi-task"]["forgetting"] == pytest.approx(0.02)
    assert rows["first only"]["forgetting"] is None and rows["second only"]["forgetting"] is None
    table = write_study([results], tmp_path, "logic", "topic", metrics)
    assert (
        "| sequential | 400 | 0.550 ± 0.000 | 0.450 ± 0.000 | 0.970 ± 0.000 | +0.350 ± 0.000 |"
        in table
    )
    again = {
        k: {**v, "test/logic/exact_match": v["test/logic/exact_match"] - 0.1}
        for k, v in results.items()
    }
    table = write_study([results, again], tmp_path, "logic", "topic", metrics)
    assert "| multi-task | 800 | 0.830 ± 0.071 |" in table  # mean and sample std of 0.88, 0.78
    assert (tmp_path / "study.png").stat().st_size > 0
    assert (tmp_path / "results.json").is_file()
