"""Step 5: which response positions the loss sees (the stage around mask.py's pure math).

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
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from .judge import Candidate, JudgeRequest, JudgeResult
from .mask import all_positions, prefilter_topk, selection_mask

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
    delta = scores.delta.detach().cpu()
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


def rmsd_mask(cb, tokenizer, judge, t: int, s: int, guard_ratio: float, rollouts, scores) -> Mask:
    """Pre-filter top-T by |Δ| (pattern positions boosted), the judge's pick of ≤ S among
    them, and every guarded position."""
    valid = scores.valid.cpu()
    patterns = pattern_positions(cb, rollouts, valid.shape)
    cand = prefilter_topk(scores.delta.detach().cpu(), valid, t, boost=patterns.float() * PATTERN_BOOST)
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
