"""Which response positions get the loss: RMSD's heuristic pre-filter and the judge's pick.

Pure tensor functions over ``(B, L)`` tensors aligned on response tokens (index ``t`` is
the ``t``-th response token of each row); ``valid`` is False on padding.

Pre-filter rule (:func:`prefilter_topk`), per row, exactly ``min(t, #valid)`` positions:

1. forced positions first (pattern tokens the spec insists on), by score;
2. then the remaining valid positions by score, to fill up to ``t``;

with score ``|Δ| + boost`` and ties broken by the earlier position. Forced positions
count toward ``t``: the judge is shown at most ``t`` candidates, so its prompt stays
bounded; if more than ``t`` positions are forced, the ``t`` highest-scoring ones are kept.
"""

from __future__ import annotations

import operator
from typing import Sequence

import torch


def prefilter_topk(delta: torch.Tensor, valid: torch.Tensor, t: int,
                   forced: torch.Tensor | None = None,
                   boost: torch.Tensor | None = None) -> torch.Tensor:
    """RMSD's heuristic pre-filter: per row the ``t`` valid positions with the largest ``|Δ|``.

    ``delta``: ``Δ_t = log π_T(y_t) − log π_S(y_t)``, float ``(B, L)``; ``valid``: bool
    ``(B, L)``, False on padding (never selected, whatever ``forced`` says); ``forced``: bool
    ``(B, L)``, taken before any unforced position (they count toward ``t``); ``boost``: float
    ``(B, L)`` added to ``|Δ|`` (e.g. a bonus on pattern positions, 0 elsewhere). Ties: the
    earlier position first. A row with fewer than ``t`` valid positions selects them all.

    Returns bool ``(B, L)`` with ``min(t, valid[b].sum())`` True entries in row ``b``.
    """
    valid = valid.bool()
    score = delta.detach().float().abs()
    if boost is not None:
        score = score + boost.float()
    # Invalid scores may be inf/NaN (padding); zero them so the sort stays well defined.
    score = torch.where(valid, score, torch.zeros_like(score))
    tier = valid.long()                                # 0 invalid, 1 valid, 2 forced
    if forced is not None:
        tier = tier + (forced.bool() & valid).long()
    # Two stable sorts = a sort by (tier, score) descending, positions ascending on ties.
    by_score = score.argsort(dim=-1, descending=True, stable=True)
    by_tier = tier.gather(-1, by_score).argsort(dim=-1, descending=True, stable=True)
    order = by_score.gather(-1, by_tier)               # (B, L): positions, best first
    n_take = valid.sum(dim=-1, keepdim=True).clamp(max=max(int(t), 0))
    rank = torch.arange(valid.shape[-1], device=valid.device).expand_as(order)
    return torch.zeros_like(valid).scatter(-1, order, rank < n_take)


def all_positions(valid: torch.Tensor) -> torch.Tensor:
    """OPSD's mask: every valid response position. Bool ``(B, L) -> (B, L)``."""
    return valid.bool().clone()


def candidates(mask_row: torch.Tensor) -> list[int]:
    """The True positions of one row, ascending: bool ``(L,) -> list[int]``."""
    if mask_row.dim() != 1:
        raise ValueError(f"candidates() takes one row (L,), got shape {tuple(mask_row.shape)}")
    return mask_row.nonzero().flatten().tolist()


def selection_mask(shape: Sequence[int], selected: Sequence[Sequence[int]],
                   candidates_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Bool ``(B, L)`` mask from per-row position lists (e.g. the judge's answer).

    Every index must be an int in ``[0, L)``; with ``candidates_mask`` (bool ``(B, L)``, the
    pre-filter's output) each must also be a candidate of its row: the judge may only
    narrow the candidates, never add positions (an injected rollout could ask it to).
    Duplicates are harmless. Raises ``ValueError`` naming the row and the index.
    """
    b, length = (int(n) for n in shape)
    if len(selected) != b:
        raise ValueError(f"selected has {len(selected)} rows, expected {b}")
    if candidates_mask is not None and tuple(candidates_mask.shape) != (b, length):
        raise ValueError(f"candidates_mask shape {tuple(candidates_mask.shape)} != {(b, length)}")
    device = candidates_mask.device if candidates_mask is not None else None
    out = torch.zeros((b, length), dtype=torch.bool, device=device)
    for row, indices in enumerate(selected):
        allowed = set(candidates(candidates_mask[row])) if candidates_mask is not None else None
        for i in indices:
            if isinstance(i, bool):
                raise ValueError(f"row {row}: index {i!r} is not an int")
            try:
                i = operator.index(i)
            except TypeError:
                raise ValueError(f"row {row}: index {i!r} is not an int") from None
            if not 0 <= i < length:
                raise ValueError(f"row {row}: index {i} out of range [0, {length})")
            if allowed is not None and i not in allowed:
                raise ValueError(f"row {row}: index {i} is not a candidate {sorted(allowed)}")
            out[row, i] = True
    return out
