"""Records of RMSD step 5's second half: which pre-filtered positions matter.

The pre-filter (mask.py) proposes ``T`` candidate positions of one sampled response;
a judge picks up to ``S`` of them. Every judge maps a batch of ``JudgeRequest`` to one
``JudgeResult`` each, in order, and never raises into the training step: on failure it
returns the heuristic selection with ``outcome="fallback:<reason>"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable


@dataclass(frozen=True)
class Candidate:
    """One pre-filtered response position."""

    position: int                    # index t into the response tokens
    token: str                       # the student's sampled token y_t, decoded
    teacher_tokens: tuple[str, ...]  # the teacher's preferred tokens at t, best first
    delta: float                     # log π_T(y_t) − log π_S(y_t)


@dataclass(frozen=True)
class JudgeRequest:
    """Everything a judge sees about one rollout."""

    behavior: str                        # the spec's description: the judge's task
    student_prompt: str                  # x
    teacher_prompt: str                  # x' = x plus the hint
    response_tokens: tuple[str, ...]     # y, decoded token by token
    candidates: tuple[Candidate, ...]    # the pre-filter's T positions
    max_select: int                      # S
    pattern_positions: tuple[int, ...]   # positions overlapping target/forbidden regexes
    patterns: tuple[str, ...]            # the regex strings themselves


@dataclass(frozen=True)
class JudgeResult:
    """The positions to train on, and how the judge got there."""

    selected: tuple[int, ...]
    outcome: str                 # "ok" | "fallback:<reason>"
    latency_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0            # USD, 0.0 when the provider's price is unknown
    cached: bool = False


@runtime_checkable
class Judge(Protocol):
    def select(self, requests: Sequence[JudgeRequest]) -> list[JudgeResult]:
        """One result per request, same order; never raises."""
        ...
