"""Which checkpoint to keep, and when to stop: pure bookkeeping over validation figures.

Every ``eval_every`` steps the adapter is evaluated on the ``val`` split (questions
disjoint from the gate's ``eval`` split). A checkpoint *qualifies* when, compared with the
base model on the same val prompts, no gated figure (specificity, well-formedness,
regression suites) dropped by more than the gate's ``max_drop`` widened by two binomial
standard errors (val sets are small: one miss in 48 is already 0.021); answers decoded
greedily are compared as the gate compares them, without the widening (a greedy answer that
changed is the model changing). Among qualifying
checkpoints, the kept one is the *latest* whose behavior score (mean of exists and only,
without the hint) is within one standard error of the best score seen. Measured on the lab
(pinapple, r=4): capitals recall dipped to 0.975 while the behavior was being learned
(steps 30-60, lr at its peak, anchor KL spiking) and the anchor repaired it to 0.99 by step
70 with the behavior level; the noisy val peak sat in the dip, so "earliest best" kept the
damaged checkpoint. The untrained adapter (step 0, identical to the base model) is the
first candidate, so the kept adapter is never worse on val than not training at all.
Training stops once the behavior has shown (its best score is three standard errors above
zero: a single lucky answer in the first evals stopped a slow learner at step 60 before it
took off at 100) and ``patience`` evals in a row brought no improvement beyond one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

BEHAVIOR_METRICS = ("exists", "only")


@dataclass(frozen=True)
class Candidate:
    step: int
    qualifies: bool
    score: float            # mean behavior rate without the hint (exists, only)
    worst_excess: float     # largest drop beyond its tolerance (<= 0 when it qualifies)
    n: int = 1              # val prompts behind the score
    worst_suite: str = ""   # the gated suite of that drop
    worst_base: float = 0.0     # that suite's val figure on the base model...
    worst_value: float = 0.0    # ...and on this checkpoint


def standard_error(p: float, n: int) -> float:
    """A binomial standard error that never goes below one sample's worth."""
    p, n = min(max(p, 0.0), 1.0), max(n, 1)
    return math.sqrt(max(p * (1 - p), 1 / n) / n)


def tolerance(base: float, n: int, max_drop: float) -> float:
    """``max(max_drop, 2·se)``."""
    return max(max_drop, 2 * standard_error(base, n))


def judge_candidate(step: int, base: list[dict], adapter: list[dict], gated: set[str],
                    max_drop: float | Callable[[str], float], greedy: bool = False) -> Candidate:
    """Score one checkpoint's val rows (store rows: suite, metric, value, n) against the
    base model's; ``max_drop`` may be per suite (a function of its name). ``greedy``: the
    val answers were decoded greedily (``regression.temperature`` 0), so a drop is answers
    that changed, not sampling noise, and is read as the gate reads it, without the two
    standard errors. (SmolLM2 French, seed 2: one fact of 7 changed on val was within the
    widened limit, the checkpoint was kept, and the gate's eval split lost 9 facts of 43.)"""
    drop_of = max_drop if callable(max_drop) else (lambda suite: max_drop)
    limit = (lambda b, n, d: d) if greedy else tolerance
    base_by = {r["suite"]: r for r in base if r["suite"] in gated}
    excess = [((base_by[r["suite"]]["value"] - r["value"])
               - limit(base_by[r["suite"]]["value"], r["n"], drop_of(r["suite"])), r["suite"],
               base_by[r["suite"]]["value"], r["value"])
              for r in adapter if r["suite"] in base_by]
    worst, suite, b, a = max(excess, default=(0.0, "", 0.0, 0.0))
    rates = [r for r in adapter if r["suite"] == "behavior" and r["metric"] in BEHAVIOR_METRICS]
    score = sum(r["value"] for r in rates) / max(1, len(rates))
    bad = worst > 1e-9
    return Candidate(step, not bad, score, worst, min((r["n"] for r in rates), default=1),
                     suite if bad else "", b if bad else 0.0, a if bad else 0.0)


def learned_but_disqualified(history: list[Candidate], kept: Candidate, bar: float) -> Candidate | None:
    """The best checkpoint that showed the behavior (val score >= ``bar``) but was refused by
    a gated suite, when the kept one did not reach the bar: training learned, and what it
    broke on the way is the truth to tell, not "not learned". None otherwise."""
    if kept.score >= bar:
        return None
    learners = [c for c in history if not c.qualifies and c.score >= bar and c.score > 0]
    return max(learners, key=lambda c: (c.score, -c.worst_excess), default=None)


@dataclass
class Selection:
    patience: int
    best: Candidate = field(default_factory=lambda: Candidate(0, True, 0.0, 0.0))
    top: float = 0.0            # the best behavior score seen among qualifying candidates
    since_top: int = 0          # val evals since the top last rose by more than one se
    history: list[Candidate] = field(default_factory=list)

    def offer(self, cand: Candidate) -> bool:
        """Record a candidate; True when it becomes the kept one (save its weights)."""
        self.history.append(cand)
        if not cand.qualifies:
            self.since_top += 1
            return False
        margin = standard_error(self.top, cand.n)
        self.since_top = 0 if cand.score > self.top + margin else self.since_top + 1
        self.top = max(self.top, cand.score)
        keep = cand.score > 0 and cand.score >= self.top - standard_error(self.top, cand.n)
        if keep:
            self.best = cand
        return keep

    def should_stop(self) -> bool:
        shown = self.top >= 3 * standard_error(0.0, self.best.n)
        return self.patience > 0 and shown and self.since_top >= self.patience

    def state(self) -> dict:
        return {"patience": self.patience, "best": asdict(self.best), "top": self.top,
                "since_top": self.since_top, "history": [asdict(c) for c in self.history]}

    @classmethod
    def from_state(cls, state: dict) -> "Selection":
        return cls(state["patience"], Candidate(**state["best"]), state["top"], state["since_top"],
                   [Candidate(**c) for c in state["history"]])
