"""Which prompt tokens an intervention edits: ``"f7+l7"`` = the first 7 and the last 7.

Positions are counted per example over the tokens marked in a prompt mask (B, T), so the same
spec selects the same tokens whether a batch is padded on the left, on the right, or not at all.

Short prompts: with both groups, each is capped at ⌊n/2⌋ for a prompt of n tokens (pyreft's rule),
so the two groups never share a token (a 1-token prompt gets no intervention). With a single
group (``"f5"``, ``"l3"``) the cap is n.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

__all__ = ["Positions", "parse_positions", "position_masks"]

_PART = re.compile(r"^([fl])(\d+)$")


@dataclass(frozen=True)
class Positions:
    """A parsed position spec: ``first``/``last`` token counts (0 = group absent)."""

    first: int = 0
    last: int = 0

    @property
    def groups(self) -> list[str]:
        """Present groups, in order: ``"first"``, ``"last"``."""
        return [g for g, k in (("first", self.first), ("last", self.last)) if k]

    def __str__(self) -> str:
        parts = [f"f{self.first}"] * bool(self.first) + [f"l{self.last}"] * bool(self.last)
        return "+".join(parts)


def parse_positions(spec: str, key: str = "method.positions") -> Positions:
    """Parse ``"f7+l7"``, ``"l7+f7"``, ``"f5"``, ``"l3"``.

    Raises:
        ValueError: Naming ``key``, on anything else (zero counts, repeats, unknown letters).
    """
    if not isinstance(spec, str):
        raise ValueError(f"{key}={spec!r}: expected a string like 'f7+l7', 'f5' or 'l3'")
    counts: dict[str, int] = {}
    for part in spec.replace(" ", "").lower().split("+"):
        m = _PART.match(part)
        if not m:
            raise ValueError(
                f"{key}={spec!r}: cannot parse {part!r}; expected 'f<n>', 'l<n>' or "
                "'f<n>+l<n>' (first/last n prompt tokens), e.g. 'f7+l7'"
            )
        letter, n = m.group(1), int(m.group(2))
        if n <= 0:
            raise ValueError(f"{key}={spec!r}: token counts must be positive, got {part!r}")
        if letter in counts:
            raise ValueError(f"{key}={spec!r}: '{letter}' given twice")
        counts[letter] = n
    return Positions(first=counts.get("f", 0), last=counts.get("l", 0))


def position_masks(
    prompt_mask: torch.Tensor,
    positions: Positions,
    position_ids: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Boolean masks (B, T) per group (``"first"``, ``"last"``) of the tokens to edit.

    Args:
        prompt_mask: (B, T), true at prompt tokens (pads and response tokens false). The
            prompt tokens of a row need not be contiguous; they are ranked left to right.
        positions: The parsed spec.
        position_ids: (B, T), optional. A row holding several packed documents restarts its
            positions at each one (a position not above its predecessor starts a new document);
            each document then gets its own first/last tokens. Padded rows are unaffected.
    """
    pm = prompt_mask.bool()
    b, t = pm.shape
    starts = torch.zeros_like(pm)
    starts[:, 0] = True
    if position_ids is not None:
        starts[:, 1:] = position_ids[:, 1:] <= position_ids[:, :-1]
    ends = torch.ones_like(pm)
    ends[:, :-1] = starts[:, 1:]
    idx = torch.arange(t, device=pm.device).expand(b, t)
    first_idx = torch.where(starts, idx, 0).cummax(dim=1).values  # (B, T) start of my document
    last_idx = torch.where(ends, idx, t - 1).flip(1).cummin(dim=1).values.flip(1)  # its end
    count = pm.long().cumsum(dim=1)  # prompt tokens up to and including t
    before = (count - pm.long()).gather(1, first_idx)  # prompt tokens before my document
    rank = count - before - 1  # (B, T) index among my document's prompt tokens
    n = count.gather(1, last_idx) - before  # (B, T) my document's prompt length
    cap = n // 2 if positions.first and positions.last else n
    masks = {}
    if positions.first:
        masks["first"] = pm & (rank < cap.clamp(max=positions.first))
    if positions.last:
        masks["last"] = pm & (rank >= n - cap.clamp(max=positions.last))
    return masks
