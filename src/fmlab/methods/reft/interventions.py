"""ReFT interventions: low-rank edits of a hidden state h ∈ R^d (Wu et al. 2024, DESIGN.md §5).

Both act on a batch of selected hidden states ``(N, d)``. They compute in float32 whatever the
model's dtype (the orthogonal parametrization is not defined in half precision, and a rank-r
edit of a bf16 residual stream loses most of its bits), then cast back to the input's dtype.
Their parameters stay float32 even through ``.to(torch.bfloat16)``/``.half()`` on a parent.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["DiReFTIntervention", "Intervention", "LoReFTIntervention", "OrthonormalRows"]


class Intervention(nn.Module, ABC):
    """Common plumbing: float32 compute, dropout on the edit, ``n_params = 2·d·r + r``.

    Args:
        d: Hidden size (the residual-stream width).
        r: Rank of the edit.
        dropout: Dropout probability applied to the edit ``Φ(h) − h`` (not to h itself, as
            pyreft does: dropping coordinates of the residual stream would perturb the frozen
            model, not regularise the intervention).
    """

    kind = ""

    def __init__(self, d: int, r: int, dropout: float = 0.0) -> None:
        super().__init__()
        if not 0 < r <= d:
            raise ValueError(f"rank must be in [1, d={d}], got {r}")
        self.d, self.r = d, r
        self.dropout = nn.Dropout(dropout)

    @abstractmethod
    def edit(self, h: torch.Tensor) -> torch.Tensor:
        """The additive edit ``Φ(h) − h`` in float32. Shapes: h (N, d) → (N, d)."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        # autocast off: under bf16-mixed the matmuls would otherwise run in bf16
        with torch.autocast(device_type=h.device.type, enabled=False):
            h32 = h.float()
            return (h32 + self.dropout(self.edit(h32))).to(h.dtype)

    @property
    def n_params(self) -> int:
        """Number of stored parameters: ``2·d·r + r``."""
        return sum(p.numel() for p in self.parameters())

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True):
        # Never half precision, even through a parent's .to(bf16)/.half() (Lightning "bf16-true"
        # does that); device moves and .double() still apply.
        def keep_fp32(t: torch.Tensor) -> torch.Tensor:
            out = fn(t)
            return out.float() if out.dtype in (torch.float16, torch.bfloat16) else out

        return super()._apply(keep_fp32, recurse)

    def extra_repr(self) -> str:
        return f"d={self.d}, r={self.r}"


class OrthonormalRows(nn.Module):
    """Parametrization R = ((H_1 ⋯ H_r)[:, :r] · diag(s))ᵀ: r × d with orthonormal rows.

    The same Householder map as ``torch.nn.utils.parametrizations.orthogonal(..., "householder")``
    (the reflectors are the strictly lower part of the stored (r, d) tensor, transposed), with one
    change: the column signs s live in a buffer, not on the stored tensor's diagonal. torch reads
    them as ``diagonal().int()``, so any weight decay (AdamW's 1 − lr·wd shrink) turns ±1 into
    ±0.99 → 0 after one step and zeroes rows of R; measured here, R Rᵀ = I then fails by 1.0.
    The signs are a gauge (flipping a row of R, W and b together leaves Φ unchanged) but keep
    ``set_R`` exact. Stored parameters: r·d (the diagonal and upper part are unused: zero gradient).
    """

    def __init__(self, r: int) -> None:
        super().__init__()
        self.register_buffer("signs", torch.ones(r))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        A = X.mT.tril(diagonal=-1)  # (d, r) reflectors below an implicit unit diagonal
        tau = 2.0 / (1.0 + (A * A).sum(dim=-2))  # makes each H_i = I − τ v vᵀ a reflection
        return (torch.linalg.householder_product(A, tau) * self.signs).mT  # (r, d)

    @torch.no_grad()
    def right_inverse(self, R: torch.Tensor) -> torch.Tensor:
        A, tau = torch.geqrf(R.mT)  # Rᵀ = Q_h · U with U upper triangular, U_ii = ±1
        signs = A.diagonal().sign()
        signs[tau == 0.0] *= -1  # LAPACK skipped that reflection; ours would flip the column
        signs[signs == 0] = 1.0
        self.signs.copy_(signs)
        return A.tril(diagonal=-1).mT.contiguous()


class LoReFTIntervention(Intervention):
    """LoReFT: Φ(h) = h + Rᵀ(W h + b − R h), R ∈ R^{r×d} with orthonormal rows (R Rᵀ = I_r).

    R is ``rotation.weight`` under the :class:`OrthonormalRows` (Householder) parametrization:
    the stored parameter is an r×d matrix of reflectors, so the count stays 2·d·r + r, and no
    d×d buffer is kept (torch's default trivialization keeps one per intervention: 2 GiB for
    LLaMA-7B at all 32 layers). W, b are ``source`` (Linear d → r).

    Args:
        d: Hidden size.
        r: Rank.
        dropout: Dropout on the edit.
        init_identity: Start from W = R, b = 0, i.e. Φ = identity at initialisation.
    """

    kind = "loreft"

    def __init__(self, d: int, r: int, dropout: float = 0.0, init_identity: bool = False) -> None:
        super().__init__(d, r, dropout)
        self.rotation = nn.Linear(d, r, bias=False, dtype=torch.float32)
        nn.init.orthogonal_(self.rotation.weight)  # random orthonormal rows
        parametrize.register_parametrization(self.rotation, "weight", OrthonormalRows(r))
        self.source = nn.Linear(d, r, dtype=torch.float32)
        if init_identity:
            with torch.no_grad():
                self.source.weight.copy_(self.R)
                self.source.bias.zero_()

    @property
    def R(self) -> torch.Tensor:
        """The orthonormal projection, (r, d) float32, materialised from its parametrization."""
        return self.rotation.weight

    @property
    def W(self) -> torch.Tensor:
        """Shape (r, d)."""
        return self.source.weight

    @property
    def b(self) -> torch.Tensor:
        """Shape (r,)."""
        return self.source.bias

    @torch.no_grad()
    def set_R(self, R: torch.Tensor) -> None:
        """Assign R (rows must be orthonormal; stored through the parametrization's inverse)."""
        R = R.to(self.source.weight)
        if R.shape != (self.r, self.d):
            raise ValueError(f"R must have shape {(self.r, self.d)}, got {tuple(R.shape)}")
        if not torch.allclose(R @ R.T, torch.eye(self.r, device=R.device), atol=1e-5):
            raise ValueError("R must have orthonormal rows (R Rᵀ = I)")
        self.rotation.weight = R

    def edit(self, h: torch.Tensor) -> torch.Tensor:
        R = self.R  # (r, d)
        return (self.source(h) - h @ R.T) @ R  # (N, r) @ (r, d) → (N, d)


class DiReFTIntervention(Intervention):
    """DiReFT: Φ(h) = h + W2ᵀ(W1 h + b), W1, W2 ∈ R^{r×d}, no orthogonality constraint.

    W1, b are ``source`` (Linear d → r); W2 is a parameter of shape (r, d). Both start from
    PyTorch's default Linear initialisation (as pyreft), so Φ is not the identity at init.

    Args:
        d: Hidden size.
        r: Rank.
        dropout: Dropout on the edit.
    """

    kind = "direft"

    def __init__(self, d: int, r: int, dropout: float = 0.0) -> None:
        super().__init__(d, r, dropout)
        self.source = nn.Linear(d, r, dtype=torch.float32)
        bound = 1.0 / r**0.5  # nn.Linear(r, d)'s default range for its (d, r) weight = W2ᵀ
        self.W2 = nn.Parameter(torch.empty(r, d, dtype=torch.float32).uniform_(-bound, bound))

    @property
    def W1(self) -> torch.Tensor:
        """Shape (r, d)."""
        return self.source.weight

    @property
    def b(self) -> torch.Tensor:
        """Shape (r,)."""
        return self.source.bias

    def edit(self, h: torch.Tensor) -> torch.Tensor:
        return self.source(h) @ self.W2  # (N, r) @ (r, d) → (N, d)


INTERVENTIONS: dict[str, type[Intervention]] = {
    "loreft": LoReFTIntervention,
    "direft": DiReFTIntervention,
}
