"""Rollout reuse: one generation serves ``train.steps_per_rollout`` optimizer steps.

Generating is a step's largest single cost (``generate`` runs token by token). With reuse,
the step that samples keeps the rollouts and the student's log-probabilities of their tokens
(the policy that sampled them); the next ``k - 1`` steps re-score the same tokens under the
updated student and weight each position by the clipped ratio π_S / π_old, the correction
the engine already applies to a lagging sampler (losses.importance_weight). On the step
that sampled, π_old is the student itself, so the weight is exactly 1.

The cache is part of a checkpoint: a run resumed between two generations goes on with the
same tokens and the same π_old, as an uninterrupted run would.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Callable

import torch

from engrain.engine.rollout import Rollouts
from engrain.engine.scoring import aligned


class RolloutReuse:
    """Samples at steps ``0, k, 2k, ...`` and hands the same rollouts to the steps between."""

    def __init__(self, every: int = 1):
        if every < 1:
            raise ValueError(f"steps_per_rollout must be >= 1, got {every}")
        self.every = every
        self.rollouts: Rollouts | None = None
        self.sampled_at: int | None = None
        self.old_logp: list[list[float]] | None = None   # π_old per response token, if recorded

    def take(self, step: int, sample: Callable[[], Rollouts]) -> Rollouts:
        """This step's rollouts: fresh ones at a multiple of ``every`` (or when the cache is
        not the one this step's window sampled), else the cached ones."""
        window = step - step % self.every
        if self.rollouts is None or self.sampled_at != window or step == window:
            self.rollouts, self.sampled_at, self.old_logp = sample(), step, None
        return self.rollouts

    def behavior_logp(self, student_logp: torch.Tensor, valid: torch.Tensor) -> torch.Tensor | None:
        """log π_old(y_t) of the policy that sampled this step's rollouts, aligned like
        ``student_logp``; None when that policy is the student itself (no reuse, no lag)."""
        ro = self.rollouts
        if ro.sampler_logprobs is not None:      # a lagging sampler said what it sampled from
            return aligned(ro.sampler_logprobs, valid)
        if self.every == 1:
            return None
        if self.old_logp is None:                # the step that sampled: π_old is the student now
            self.old_logp = [row[:int(n)] for row, n in zip(student_logp.detach().float().cpu().tolist(),
                                                              valid.sum(-1).tolist())]
        return aligned(self.old_logp, valid)

    def state(self) -> dict | None:
        """What a checkpoint keeps (JSON): the cached rollouts and π_old."""
        if self.rollouts is None or self.every == 1:
            return None
        return {"sampled_at": self.sampled_at, "rollouts": asdict(self.rollouts), "old_logp": self.old_logp}

    def load(self, state: dict | None) -> None:
        if not state:
            return
        self.sampled_at, self.old_logp = state["sampled_at"], state["old_logp"]
        self.rollouts = Rollouts(**state["rollouts"])
