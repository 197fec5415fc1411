"""Step 5: which response positions the loss sees (the stage around mask.py's pure math).

RMSD: the pre-filter keeps the T positions with the largest |Δ| (positions overlapping the
spec's target/forbidden patterns are boosted), then the judge picks up to S of them.
OPSD: every response position. Both return the same ``Mask`` record.
"""

from __future__ import annotations

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
    pattern_texts = tuple(p.pattern for p in cb.target + cb.forbidden)
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


def rmsd_mask(cb, tokenizer, judge, rollouts, scores, t: int, s: int) -> Mask:
    """Pre-filter top-T by |Δ| (pattern positions boosted), then the judge's pick of ≤ S."""
    valid = scores.valid.cpu()
    patterns = pattern_positions(cb, rollouts, valid.shape)
    cand = prefilter_topk(scores.delta.detach().cpu(), valid, t, boost=patterns.float() * PATTERN_BOOST)
    t0 = time.perf_counter()
    results = judge.select(judge_requests(cb, tokenizer, rollouts, scores, cand, patterns, s))
    seconds = time.perf_counter() - t0
    selected = selection_mask(valid.shape, [r.selected for r in results], candidates_mask=cand)
    dev = scores.valid.device
    return Mask(cand.to(dev), selected.to(dev), tuple(results), seconds)


def opsd_mask(cb, tokenizer, judge, rollouts, scores, t: int, s: int) -> Mask:
    """Every valid response position (the unmasked baseline)."""
    everything = all_positions(scores.valid)
    return Mask(everything, everything, ())
