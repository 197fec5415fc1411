"""What ``engrain.fit`` tells a ``callback=``: one typed record per training step and per
validation eval, so a tool that embeds the SDK (a web UI's progress bar, a job queue's
log) follows a fit without parsing printed text. Plain data, no torch: the records hold
numbers and strings only, safe to serialise (``dataclasses.asdict``) or send elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StepEvent:
    """One training step done."""
    run_id: str
    step: int                   # steps done so far (1 after the first)
    total: int                  # the most steps the fit will run (early stop may end sooner)
    loss: float
    anchor_kl: float | None
    behavior_rate: float        # share of this step's rollouts that showed the behavior
    n_selected: int             # positions trained
    n_candidates: int
    drift: float
    seconds: float


@dataclass(frozen=True)
class EvalEvent:
    """One validation eval: the checkpoint offered to selection, and whether it is the best."""
    run_id: str
    step: int
    score: float                # behavior rate without the hint, on the val prompts
    qualifies: bool             # no guarded figure dropped beyond its tolerance
    worst_suite: str
    best_step: int              # the checkpoint selection keeps so far
    is_best: bool


Event = StepEvent | EvalEvent
