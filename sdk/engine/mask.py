"""Step 5: which response positions the loss sees.

RMSD: the pre-filter keeps the T positions with the largest |Δ| (positions overlapping the
spec's target/forbidden patterns are boosted), then the judge picks up to S of them; then
the guard adds every position where the student has drifted into a token that both the
teacher and the base model (adapter off, no hint) all but rule out, relative to the
student: π_T(y_t) < r · π_S(y_t) and π_base(y_t) < r · π_S(y_t), r = ``guard_ratio``,
whatever the judge said. The base condition matters: at step 0 the student *is* the base,
and the hinted teacher rejects plenty of good tokens (after "... and kiwi" it wants "n",
to respell the word, instead of "."); training there would teach broken words. Relevance
is the judge's call; a loop or a broken word is not: the first round's rule judge dropped
every loop position (the teacher wanted "," where the student wrote "apple" again, |Δ|
12-19 nats) and 94-100% of its adapter's answers looped. OPSD: every response position.
Both return a ``Mask``.

The pure tensor math comes first (:func:`prefilter_topk` and its helpers); then ``Mask``, the
record the step trains on, and the two methods' masks.

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

import math
import operator
import time
from dataclasses import dataclass
from typing import Sequence

import torch

from engrain.judge import Candidate, JudgeRequest, JudgeResult


def prefilter_topk(delta: torch.Tensor, valid: torch.Tensor, t: int,
                   forced: torch.Tensor | None = None,
                   boost: torch.Tensor | None = None, min_delta: float = 0.0) -> torch.Tensor:
    """RMSD's heuristic pre-filter: per row the ``t`` valid positions with the largest ``|Δ|``.
    ``min_delta``: an unforced position whose ``|Δ|`` is below it is never a candidate (where
    the teacher's context changes nothing, there is nothing to learn: a log's unrelated turn).

    ``delta``: ``Δ_t = log π_T(y_t) − log π_S(y_t)``, float ``(B, L)``; ``valid``: bool
    ``(B, L)``, False on padding (never selected, whatever ``forced`` says); ``forced``: bool
    ``(B, L)``, taken before any unforced position (they count toward ``t``); ``boost``: float
    ``(B, L)`` added to ``|Δ|`` (e.g. a bonus on pattern positions, 0 elsewhere). Ties: the
    earlier position first. A row with fewer than ``t`` valid positions selects them all.

    Returns bool ``(B, L)`` with ``min(t, valid[b].sum())`` True entries in row ``b`` (valid:
    after ``min_delta``).
    """
    valid = valid.bool()
    score = delta.detach().float().abs()
    if min_delta > 0:
        floor = score >= min_delta
        valid = valid & (floor | (forced.bool() if forced is not None else torch.zeros_like(floor)))
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


# Added to |Δ| on pattern positions: large enough to rank them first, small enough to keep
# the |Δ| order among them.
PATTERN_BOOST = 100.0


@dataclass(frozen=True)
class Mask:
    candidates: torch.Tensor            # (B, L) bool: the pre-filter's T per row
    selected: torch.Tensor              # (B, L) bool: where the loss is applied
    judge: tuple[JudgeResult, ...]      # one per rollout (empty for OPSD)
    judge_seconds: float = 0.0
    guarded: torch.Tensor | None = None  # (B, L) bool: added by the guard, not the judge

    @property
    def fallbacks(self) -> int:
        return sum(r.outcome != "ok" for r in self.judge)


def pattern_positions(cb, rollouts, shape) -> torch.Tensor:
    """(B, L) bool: response tokens overlapping a target or forbidden pattern."""
    out = torch.zeros(shape, dtype=torch.bool)
    for i, ids in enumerate(rollouts.response_ids):
        target, forbidden = cb.pattern_token_mask(ids)
        hit = [a or b for a, b in zip(target, forbidden)]
        out[i, :len(hit)] = torch.tensor(hit, dtype=torch.bool)
    return out


def judge_requests(cb, tokenizer, rollouts, scores, cand: torch.Tensor, patterns: torch.Tensor,
                   max_select: int) -> list[JudgeRequest]:
    delta = scores.relevance.detach().cpu()
    top = scores.teacher_top.cpu()
    # The spec's own patterns: the compiled ones carry whole-word lookarounds that the
    # rule judge would read as letters.
    pattern_texts = tuple(cb.spec.patterns.target + cb.spec.patterns.forbidden)
    requests = []
    for i, ids in enumerate(rollouts.response_ids):
        tokens = tuple(tokenizer.decode([t]) for t in ids)
        cands = tuple(Candidate(p, tokens[p], tuple(tokenizer.decode([int(t)]) for t in top[i, p]),
                                float(delta[i, p]))
                      for p in torch.nonzero(cand[i]).flatten().tolist())
        requests.append(JudgeRequest(
            behavior=cb.spec.description,
            student_prompt=_render(tokenizer, rollouts.student_prompt_ids[i]),
            teacher_prompt=_render(tokenizer, rollouts.teacher_prompt_ids[i]),
            response_tokens=tokens, candidates=cands, max_select=max_select,
            pattern_positions=tuple(torch.nonzero(patterns[i]).flatten().tolist()),
            patterns=pattern_texts))
    return requests


def _render(tokenizer, ids) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False)


def guard_positions(delta: torch.Tensor, base_delta: torch.Tensor, valid: torch.Tensor,
                    guard_ratio: float) -> torch.Tensor:
    """(B, L) bool: valid positions where both the teacher (``delta = log π_T − log π_S``)
    and the base model (``base_delta = log π_base − log π_S``) give the sampled token less
    than ``guard_ratio`` times the student's probability of it. A token the student also
    finds unlikely (a rare sample at temperature 1) is not guarded. 0 turns the guard off.
    Pure."""
    if guard_ratio <= 0:
        return torch.zeros_like(valid, dtype=torch.bool)
    bar = math.log(guard_ratio)
    return valid.bool() & (delta < bar) & (base_delta < bar)


def rmsd_mask(cb, tokenizer, judge, t: int, s: int, guard_ratio: float, rollouts, scores,
              protect=(), exclude=None, min_delta: float = 0.0) -> Mask:
    """Pre-filter top-T by |Δ| (pattern positions boosted; for log lessons with a contrast
    reply, |Δ'|: ``Scores.relevance``), the judge's pick of ≤ S among them, and every
    guarded position. ``protect``: earlier behaviors (``cl fit --on``) whose
    pattern positions are never trained: the teacher reads only the new hint and may not
    show them there, and training those positions would unlearn them. ``exclude``:
    (rollouts, shape) -> (B, L) bool, positions no part of this mask may pick (the ones
    other behaviors claim, when one adapter learns several: engine/claims.py)."""
    valid = scores.valid.cpu()
    for earlier in protect:
        valid = valid & ~pattern_positions(earlier, rollouts, valid.shape)
    if exclude is not None:
        valid = valid & ~exclude(rollouts, valid.shape)
    patterns = pattern_positions(cb, rollouts, valid.shape)
    cand = prefilter_topk(scores.relevance.detach().cpu(), valid, t, boost=patterns.float() * PATTERN_BOOST,
                          min_delta=min_delta)
    t0 = time.perf_counter()
    results = judge.select(judge_requests(cb, tokenizer, rollouts, scores, cand, patterns, s))
    seconds = time.perf_counter() - t0
    judged = selection_mask(valid.shape, [r.selected for r in results], candidates_mask=cand)
    guarded = torch.zeros_like(judged)
    if guard_ratio > 0:
        guarded = guard_positions(scores.delta.detach().cpu(), scores.base_delta.detach().cpu(), valid,
                                  guard_ratio) & ~judged
    dev = scores.valid.device
    return Mask(cand.to(dev), (judged | guarded).to(dev), tuple(results), seconds, guarded.to(dev))


def opsd_mask(rollouts, scores) -> Mask:
    """Every valid response position (the unmasked baseline)."""
    everything = all_positions(scores.valid)
    return Mask(everything, everything, ())
