"""Preference objectives on per-sequence log-probabilities: DPO, IPO and SimPO.

Notation: for a pair (x, y_c, y_r), ``log π(y|x)`` is the sum of the response tokens' log-probs
(EOS included), ``|y|`` the number of response tokens, ``π_ref`` the reference model, σ the
logistic function, ε the label smoothing.

- DPO (Rafailov et al. 2023), conservative with ε > 0 (cDPO):
  ``h = β[(log π(y_c) − log π_ref(y_c)) − (log π(y_r) − log π_ref(y_r))]``,
  ``loss = −(1−ε) log σ(h) − ε log σ(−h)``.
- IPO (Azar et al. 2023), with the log-ratios averaged per response token as TRL does (the IPO
  authors' reported runs use this normalisation):
  ``h = (log π(y_c) − log π_ref(y_c))/|y_c| − (log π(y_r) − log π_ref(y_r))/|y_r|``,
  ``loss = (h − 1/(2β))²``.
- SimPO (Meng et al. 2024), reference-free and length-normalised:
  ``h = β(log π(y_c)/|y_c| − log π(y_r)/|y_r|) − γ``, ``loss = −(1−ε) log σ(h) − ε log σ(−h)``.

Implicit rewards (what ``rewards/*`` report): DPO/IPO ``r = β(log π(y) − log π_ref(y))``;
SimPO ``r = β log π(y)/|y|``. Reward accuracy is the share of pairs with ``r_c > r_r`` (strictly,
so it is 0 before training, when the policy equals the reference), margin the mean ``r_c − r_r``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["LOSSES", "preference_loss", "sequence_logps", "token_kl"]

IGNORE = -100
LOSSES = ("dpo", "ipo", "simpo")
Loss = Literal["dpo", "ipo", "simpo"]


def sequence_logps(
    logits: torch.Tensor, labels: torch.Tensor, seq_index: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of each sequence's target tokens, and their number.

    Args:
        logits: (R, T, V) next-token logits of R rows (padded or packed).
        labels: (R, T) token ids, -100 where nothing is predicted (prompt, padding).
        seq_index: (R, T) the sequence (0..n-1) each token belongs to; -1 on padding.
        n: Number of sequences.

    Returns:
        ``logps`` (n,) float32 and ``tokens`` (n,) float32.
    """
    targets = labels[:, 1:]  # token t predicts token t+1
    mask = targets != IGNORE  # (R, T-1)
    shifted = logits[:, :-1].float()
    picked = shifted.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    per_token = picked - torch.logsumexp(shifted, dim=-1)  # (R, T-1) log p(target)
    owner = seq_index[:, 1:][mask]
    logps = per_token.new_zeros(n).index_add(0, owner, per_token[mask])
    tokens = per_token.new_zeros(n).index_add(0, owner, torch.ones_like(per_token[mask]))
    return logps, tokens


def token_kl(
    logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact per-token ``KL(π ‖ π_ref)`` over the vocabulary, summed over response positions
    (where ``labels`` predicts a token), and the number of positions. Logits (R, T, V)."""
    mask = labels[:, 1:] != IGNORE
    log_p = F.log_softmax(logits[:, :-1].float(), dim=-1)
    log_ref = F.log_softmax(ref_logits[:, :-1].float(), dim=-1)
    kl = (log_p.exp() * (log_p - log_ref)).sum(-1)  # (R, T-1)
    return (kl * mask).sum(), mask.sum()


def _smoothed_sigmoid_loss(h: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    return -(1 - label_smoothing) * F.logsigmoid(h) - label_smoothing * F.logsigmoid(-h)


def preference_loss(
    loss: Loss,
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    *,
    ref_chosen: torch.Tensor | None = None,
    ref_rejected: torch.Tensor | None = None,
    chosen_tokens: torch.Tensor | None = None,
    rejected_tokens: torch.Tensor | None = None,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    gamma: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses and implicit rewards of a batch (formulas in the module docstring).

    Args:
        loss: ``dpo``, ``ipo`` or ``simpo``.
        chosen: (B,) ``log π(y_c|x)`` summed over response tokens.
        rejected: (B,) ``log π(y_r|x)``.
        ref_chosen: (B,) reference log-probs of the chosen responses (DPO, IPO).
        ref_rejected: (B,) reference log-probs of the rejected responses (DPO, IPO).
        chosen_tokens: (B,) response lengths |y_c| (IPO, SimPO).
        rejected_tokens: (B,) response lengths |y_r| (IPO, SimPO).
        beta: β (for IPO, the regularisation τ of the paper).
        label_smoothing: ε, the assumed share of flipped labels (DPO, SimPO).
        gamma: SimPO's target reward margin γ.

    Returns:
        ``losses`` (B,), ``chosen_rewards`` (B,), ``rejected_rewards`` (B,); rewards detached.
    """
    if loss not in LOSSES:
        raise ValueError(f"module.loss={loss!r}: expected one of {list(LOSSES)}")
    if loss == "simpo":
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("simpo needs the response lengths")
        avg_c, avg_r = chosen / chosen_tokens.clamp(min=1), rejected / rejected_tokens.clamp(min=1)
        losses = _smoothed_sigmoid_loss(beta * (avg_c - avg_r) - gamma, label_smoothing)
        return losses, (beta * avg_c).detach(), (beta * avg_r).detach()
    if ref_chosen is None or ref_rejected is None:
        raise ValueError(f"{loss} needs the reference log-probs")
    ratio_c, ratio_r = chosen - ref_chosen, rejected - ref_rejected
    if loss == "dpo":
        losses = _smoothed_sigmoid_loss(beta * (ratio_c - ratio_r), label_smoothing)
    else:
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("ipo needs the response lengths")
        h = ratio_c / chosen_tokens.clamp(min=1) - ratio_r / rejected_tokens.clamp(min=1)
        losses = (h - 1 / (2 * beta)) ** 2
    return losses, (beta * ratio_c).detach(), (beta * ratio_r).detach()
