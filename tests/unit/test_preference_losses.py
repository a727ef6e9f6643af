"""DPO, IPO and SimPO on a hand-computable batch, and the same batch through TRL's own code.

TRL (a test-only reference, in the ``dev`` extra) has no free loss functions: its losses are
methods of trainers. They are called unbound, with a stand-in ``self`` carrying only the
attributes the method reads (and, for ``DPOTrainer._compute_loss``, a stand-in model returning
the per-token log-probs of the batch), so TRL's real arithmetic runs on our numbers:

- DPO (sigmoid) and IPO: ``trl.DPOTrainer._compute_loss`` with precomputed reference log-probs;
  rewards, margins, accuracies and log-probs come from the metrics it records;
- conservative DPO (label smoothing) and SimPO: ``trl.experimental.cpo.CPOTrainer.cpo_loss``
  (TRL 1.x's DPO ``sigmoid`` has no label smoothing; CPO's ``sigmoid`` is the cDPO formula,
  fed with the log-ratios ``log π − log π_ref``, and CPO's ``simpo`` is SimPO);
- sequence log-probs: ``CPOTrainer.get_batch_logps`` (a static method).
"""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from trl import DPOTrainer
from trl.experimental.cpo import CPOTrainer

from fmlab.modules.preference_losses import preference_loss, sequence_logps

# Two pairs: policy and reference log-probs of chosen/rejected, response lengths.
PI_C, PI_R = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.5])
REF_C, REF_R = torch.tensor([-1.5, -2.0]), torch.tensor([-2.5, -1.0])
LEN_C, LEN_R = torch.tensor([2.0, 4.0]), torch.tensor([1.0, 2.0])


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def _ours(loss: str, **kw):
    return preference_loss(
        loss,
        PI_C,
        PI_R,
        ref_chosen=REF_C,
        ref_rejected=REF_R,
        chosen_tokens=LEN_C,
        rejected_tokens=LEN_R,
        **kw,
    )


def test_dpo_by_hand():
    # log-ratios: chosen [0.5, 0.0], rejected [-0.5, -0.5] → h = 0.1·[1.0, 0.5]
    losses, r_c, r_r = _ours("dpo", beta=0.1)
    assert losses.tolist() == pytest.approx([softplus(-0.1), softplus(-0.05)], abs=1e-7)
    assert r_c.tolist() == pytest.approx([0.05, 0.0], abs=1e-7)
    assert r_r.tolist() == pytest.approx([-0.05, -0.05], abs=1e-7)
    smoothed, _, _ = _ours("dpo", beta=0.1, label_smoothing=0.2)  # conservative DPO
    want = [0.8 * softplus(-h) + 0.2 * softplus(h) for h in (0.1, 0.05)]
    assert smoothed.tolist() == pytest.approx(want, abs=1e-7)


def test_ipo_by_hand():
    # per-token log-ratios: chosen [0.25, 0.0], rejected [-0.5, -0.25] → h = [0.75, 0.25]
    losses, r_c, _ = _ours("ipo", beta=0.1)
    assert losses.tolist() == pytest.approx([(0.75 - 5) ** 2, (0.25 - 5) ** 2], abs=1e-5)
    assert r_c.tolist() == pytest.approx([0.05, 0.0], abs=1e-7)


def test_simpo_by_hand_needs_no_reference():
    # averages: chosen [-0.5, -0.5], rejected [-3.0, -0.75] → h = 2·[2.5, 0.25] − 1 = [4, −0.5]
    losses, r_c, r_r = preference_loss(
        "simpo", PI_C, PI_R, chosen_tokens=LEN_C, rejected_tokens=LEN_R, beta=2.0, gamma=1.0
    )
    assert losses.tolist() == pytest.approx([softplus(-4.0), softplus(0.5)], abs=1e-6)
    assert r_c.tolist() == pytest.approx([-1.0, -1.0]) and r_r.tolist() == pytest.approx([-6, -1.5])
    with pytest.raises(ValueError, match="reference"):
        preference_loss("dpo", PI_C, PI_R)


# ------------------------------------------------------------------------ TRL's own code
def _trl_batch(prompt: int = 2, width: int = 7):
    """A batch as DPOTrainer sees it (chosen rows then rejected rows) and a stand-in model whose
    per-token log-probs sum to PI_C/PI_R over each completion (spread unevenly)."""
    lens = torch.cat([LEN_C, LEN_R]).long()
    totals = torch.cat([PI_C, PI_R])
    completion = torch.zeros(4, width, dtype=torch.long)
    log_probs = torch.zeros(4, width - 1)
    for i, n in enumerate(lens.tolist()):
        completion[i, prompt : prompt + n] = 1
        weights = torch.arange(1, n + 1, dtype=torch.float)
        log_probs[i, prompt - 1 : prompt - 1 + n] = totals[i] * weights / weights.sum()
    inputs = {
        "input_ids": torch.ones(4, width, dtype=torch.long),
        "attention_mask": torch.ones(4, width, dtype=torch.long),
        "completion_mask": completion,
        "ref_chosen_logps": REF_C,
        "ref_rejected_logps": REF_R,
    }
    zeros = torch.zeros(4, width - 1)

    def model(**_):
        return SimpleNamespace(
            log_probs=log_probs, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool()
        )

    return inputs, model


def _dpo_trainer_self(loss_type: str, beta: float) -> SimpleNamespace:
    accelerator = SimpleNamespace(
        device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x
    )
    return SimpleNamespace(
        model=SimpleNamespace(training=True),
        accelerator=accelerator,
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=[loss_type],
        loss_weights=[1.0],
        beta=beta,
        label_smoothing=0.0,
        use_weighting=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )


@pytest.mark.parametrize(
    ("ours", "trl_type", "beta"), [("dpo", "sigmoid", 0.1), ("ipo", "ipo", 0.5)]
)
def test_dpo_and_ipo_equal_trl_dpo_trainer(ours, trl_type, beta):
    inputs, model = _trl_batch()
    stand_in = _dpo_trainer_self(trl_type, beta)
    trl_loss = DPOTrainer._compute_loss(stand_in, model, inputs, return_outputs=False)
    logged = {k: v[0] for k, v in stand_in._metrics["train"].items() if v}
    losses, r_c, r_r = _ours(ours, beta=beta)
    assert float(losses.mean()) == pytest.approx(float(trl_loss), abs=1e-5)
    assert float(r_c.mean()) == pytest.approx(logged["rewards/chosen"], abs=1e-5)
    assert float(r_r.mean()) == pytest.approx(logged["rewards/rejected"], abs=1e-5)
    assert float((r_c - r_r).mean()) == pytest.approx(logged["rewards/margins"], abs=1e-5)
    assert float((r_c > r_r).float().mean()) == pytest.approx(logged["rewards/accuracies"])
    assert float(PI_C.mean()) == pytest.approx(logged["logps/chosen"], abs=1e-5)


def _cpo_self(loss_type: str, beta: float, label_smoothing: float, gamma: float = 0.0):
    return SimpleNamespace(
        alpha=0.0,
        accelerator=SimpleNamespace(device=torch.device("cpu")),
        loss_type=loss_type,
        beta=beta,
        label_smoothing=label_smoothing,
        simpo_gamma=gamma,
    )


def test_conservative_dpo_equals_trl():
    stand_in = _cpo_self("sigmoid", beta=0.1, label_smoothing=0.2)
    trl_losses, trl_c, trl_r = CPOTrainer.cpo_loss(stand_in, PI_C - REF_C, PI_R - REF_R)
    losses, r_c, r_r = _ours("dpo", beta=0.1, label_smoothing=0.2)
    torch.testing.assert_close(losses, trl_losses, atol=1e-5, rtol=0)
    torch.testing.assert_close(r_c, trl_c, atol=1e-5, rtol=0)
    torch.testing.assert_close(r_r, trl_r, atol=1e-5, rtol=0)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_simpo_equals_trl(label_smoothing):
    stand_in = _cpo_self("simpo", beta=2.0, label_smoothing=label_smoothing, gamma=1.0)
    trl_losses, trl_c, trl_r = CPOTrainer.cpo_loss(stand_in, PI_C / LEN_C, PI_R / LEN_R)
    losses, r_c, r_r = preference_loss(
        "simpo",
        PI_C,
        PI_R,
        chosen_tokens=LEN_C,
        rejected_tokens=LEN_R,
        beta=2.0,
        gamma=1.0,
        label_smoothing=label_smoothing,
    )
    torch.testing.assert_close(losses, trl_losses, atol=1e-5, rtol=0)
    torch.testing.assert_close(r_c, trl_c, atol=1e-5, rtol=0)
    torch.testing.assert_close(r_r, trl_r, atol=1e-5, rtol=0)


def test_sequence_logps_equal_trl_get_batch_logps():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 11, generator=g)
    labels = torch.randint(0, 11, (3, 6), generator=g)
    labels[:, :2] = -100  # prompt
    labels[1, 4:] = -100  # padding
    seq = torch.arange(3)[:, None].expand(3, 6)
    ours, tokens = sequence_logps(logits, labels, seq, 3)
    trl_sum = CPOTrainer.get_batch_logps(logits, labels.clone(), average_log_prob=False)
    trl_avg = CPOTrainer.get_batch_logps(logits, labels.clone(), average_log_prob=True)
    torch.testing.assert_close(ours, trl_sum, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours / tokens, trl_avg, atol=1e-5, rtol=0)
    assert tokens.tolist() == [4, 2, 4]
