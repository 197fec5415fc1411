"""The gate: refuse an adapter that regressed the model elsewhere, or did not learn.

Pure: it compares two score tables, ``{suite: value}`` for the base model and for the
adapter, and decides. Higher is better for every metric (accuracies, pass rates,
specificity, the share of well-formed answers), so the regression of a suite is
``drop = base - adapter``; a suite passes when ``drop <= max_drop``. A suite that is
missing (or not a number) on either side fails: a silently skipped eval must never let
an adapter through. Learning is checked apart (:func:`learning_rows`): the behavior rate
without the hint must reach the spec's bar. The outcome is one of ``OUTCOMES``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Mapping

from engrain.checks.selection import learned_but_disqualified
from engrain.spec.figures import BEHAVIOR, BEHAVIOR_HINTED, SPECIFICITY, WELL_FORMED
from engrain.spec.figures import earlier as earlier_figure

# Scores are means of a few hundred 0/1 grades: 0.9 - 0.88 is 0.020000000000000018 in
# floating point, and a drop exactly at the threshold must pass.
_EPS = 1e-9


@dataclass(frozen=True)
class GateRow:
    suite: str
    base: float | None
    adapter: float | None
    drop: float | None      # base - adapter; None when a side is missing
    ok: bool
    reason: str             # "" when ok


@dataclass(frozen=True)
class LearnRow:
    metric: str             # "exists" | "only": the behavior without the hint
    adapter: float | None
    required: float         # the bar: max(min_rate, min_share_of_hinted × hinted)
    hinted: float | None    # the base model's own rate with the hint, on the same prompts
    ok: bool
    reason: str             # "" when ok


OUTCOMES = ("accepted", "regressed", "not learned")
# What `cl fit`, `cl compose` and `cl eval` exit with for each outcome: one run, one code.
EXIT_CODES = {"accepted": 0, "regressed": 3, "not learned": 4}


@dataclass(frozen=True)
class GateVerdict:
    passed: bool              # regression rows and learning rows all ok
    max_drop: float
    rows: tuple[GateRow, ...]
    worst_drop: float | None  # largest drop over comparable suites; None if none
    learning: tuple[LearnRow, ...] = ()
    # Training learned the behavior, but every checkpoint that had it dropped a gated suite on
    # the val questions, so an unlearned one was kept: the best of those (selection.Candidate
    # as a dict). It makes the outcome "regressed": what happened is a regression.
    held_back: dict | None = None
    # Several behaviors in one adapter (checks/joint.py): those it does not carry while it
    # carries others. A composition that lost one is a regression, not "not learned".
    lost: tuple[str, ...] = ()

    @property
    def outcome(self) -> str:
        """accepted | regressed (something dropped, in the kept adapter or in every checkpoint
        that learned; wins over the rest) | not learned."""
        if any(not r.ok for r in self.rows) or self.held_back or self.lost:
            return "regressed"
        return "not learned" if any(not r.ok for r in self.learning) else "accepted"

    def with_training(self, history, kept, bar: float, label: str | None = None) -> "GateVerdict":
        """This verdict, told what training's val history shows: when checkpoints reached
        ``bar`` but a suite refused every one of them, "not learned" becomes "regressed" with
        the best of them (``label`` names its score in the summary; default "val behavior")."""
        held = learned_but_disqualified(history, kept, bar)
        if held is None or self.outcome != "not learned":
            return self
        return self.with_held_back({**asdict(held), "kept_step": kept.step, **({"label": label} if label else {})})

    def with_held_back(self, candidate) -> "GateVerdict":
        """This verdict, told that training's learners were all refused (``candidate``: the
        best of them, a selection.Candidate or its dict as metrics.json keeps it)."""
        from dataclasses import is_dataclass, replace
        return replace(self, passed=False, held_back=asdict(candidate) if is_dataclass(candidate) else dict(candidate))

    def failures(self) -> tuple[GateRow, ...]:
        return tuple(r for r in self.rows if not r.ok)

    def summary(self) -> str:
        if self.passed:
            # Suites may carry their own max_drop, so name the worst one rather than compare it
            # with the default.
            rows = [r for r in self.rows if r.drop is not None]
            top = max(rows, key=lambda r: r.drop) if rows else None
            worst = "n/a" if top is None else f"{top.drop:+.4f} ({top.suite})"
            learned = "".join(f", {r.metric} {r.adapter:.3f} >= {r.required:.3f}" for r in self.learning)
            return (f"accepted ({len(self.rows)} suites, each within its max_drop; worst drop {worst}"
                    f"{learned})")
        reasons = [f"lost {', '.join(self.lost)} (a behavior this adapter must carry fell below its bar, or "
                   "below its figure on the adapter it started from)"] if self.lost else []
        reasons += [f"{r.suite}: {r.reason}" for r in self.failures()]
        if self.held_back:
            h = self.held_back
            reasons.append(f"every checkpoint that learned the behavior dropped {h['worst_suite']} beyond its "
                           f"max_drop on the val questions (best: step {h['step']}, {h.get('label', 'val behavior')} "
                           f"{h['score']:.3f}, {h['worst_suite']} {h['worst_base']:.3f} -> "
                           f"{h['worst_value']:.3f}), so "
                           + (f"step {h['kept_step']}, under the bar, was kept" if h.get("kept_step")
                              else "the untrained adapter was kept"))
        reasons += [f"behavior {r.metric}: {r.reason}" for r in self.learning if not r.ok]
        return f"{self.outcome}: " + "; ".join(reasons)

    def to_dict(self) -> dict:
        """JSON-ready form, e.g. for ``Store.record_adapter(details=...)``."""
        return {"passed": self.passed, "outcome": self.outcome, "max_drop": self.max_drop,
                "worst_drop": self.worst_drop, "rows": [asdict(r) for r in self.rows],
                "learning": [asdict(r) for r in self.learning], "held_back": self.held_back,
                "lost": list(self.lost)}

    @classmethod
    def from_dict(cls, data: Mapping) -> "GateVerdict":
        """Inverse of ``to_dict`` (a verdict read back from the store)."""
        return cls(passed=bool(data["passed"]), max_drop=float(data["max_drop"]),
                   rows=tuple(GateRow(**r) for r in data["rows"]), worst_drop=data.get("worst_drop"),
                   learning=tuple(LearnRow(**r) for r in data.get("learning", ())),
                   held_back=data.get("held_back"), lost=tuple(data.get("lost", ())))


def _number(x) -> float | None:
    if x is None:
        return None
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def _problem(side: str, suite: str, scores: Mapping) -> str:
    if scores.get(suite) is None:
        return f"missing in {side} evals"
    return f"{side} score {scores[suite]!r} is not a number"


def learning_rows(adapter: Mapping[str, float], hinted: Mapping[str, float],
                  min_share_of_hinted: float | None, min_rate: float | None) -> tuple[LearnRow, ...]:
    """One row per metric of ``adapter`` (the behavior without the hint, e.g. exists and
    only): its bar is ``max(min_rate, min_share_of_hinted × hinted[metric])``, and a rate of
    0 never passes; a missing or NaN rate fails. No bar at all (both None): no rows."""
    if min_share_of_hinted is None and min_rate is None:
        return ()
    rows = []
    for metric in sorted(adapter):
        a, h = _number(adapter.get(metric)), _number(hinted.get(metric))
        bars = [min_rate or 0.0]
        if min_share_of_hinted is not None:
            bars.append(min_share_of_hinted * (h or 0.0))
        required = max(bars)
        if a is None:
            rows.append(LearnRow(metric, None, required, h, False, "missing in adapter evals"))
            continue
        # A behavior that never shows is not learned, whatever the bar (0 × a teacher at 0).
        ok = a + _EPS >= required and a > 0
        share = f", {a / h:.2f} of the base model's {h:.3f} with the hint" if h else ""
        reason = ("" if ok else f"{a:.3f} < {required:.3f} required{share}" if a + _EPS < required
                  else "0.000: the behavior never showed")
        rows.append(LearnRow(metric, a, required, h, ok, reason))
    return tuple(rows)


def gate(base: Mapping[str, float], adapter: Mapping[str, float], max_drop: float,
         *, required: Iterable[str] = (), learning: tuple[LearnRow, ...] = (),
         max_drops: Mapping[str, float] | None = None) -> GateVerdict:
    """Compare per-suite scores; pass iff every suite is present on both sides and
    drops by at most ``max_drop`` (or its own entry in ``max_drops``), and every
    ``learning`` row is ok. ``required`` names suites that must appear even if neither side
    has them (the spec's regression suites)."""
    limits = {**(max_drops or {})}
    for limit in (max_drop, *limits.values()):
        if math.isnan(float(limit)) or float(limit) < 0:
            raise ValueError(f"max_drop must be a non-negative number, got {limit!r}")
    max_drop = float(max_drop)
    suites = sorted(set(base) | set(adapter) | set(required))
    rows = []
    for suite in suites:
        b, a = _number(base.get(suite)), _number(adapter.get(suite))
        problems = [_problem(side, suite, src) for side, v, src
                    in (("base", b, base), ("adapter", a, adapter)) if v is None]
        if problems:
            rows.append(GateRow(suite, b, a, None, False, "; ".join(problems)))
            continue
        drop, limit = b - a, float(limits.get(suite, max_drop))
        ok = drop <= limit + _EPS
        reason = "" if ok else f"dropped {drop:.4f} > max_drop {limit} ({b:.4f} -> {a:.4f})"
        rows.append(GateRow(suite, b, a, drop, ok, reason))
    drops = [r.drop for r in rows if r.drop is not None]
    return GateVerdict(passed=all(r.ok for r in rows) and all(r.ok for r in learning), max_drop=max_drop,
                       rows=tuple(rows), worst_drop=max(drops) if drops else None, learning=tuple(learning))


def max_drops(spec, earlier=()) -> dict[str, float]:
    """Each gated suite's largest allowed drop: the spec's own suites (a declared suite: its
    own), and, trained ``--on`` earlier behaviors (their specs), what each must keep: its
    rate without the hint (``regression.earlier_max_drop``), its specificity and its suites."""
    drops = {s: spec.regression.max_drop_of(s) for s in (SPECIFICITY, WELL_FORMED, *spec.regression.names)}
    for e in earlier:
        drops[earlier_figure(e.name, BEHAVIOR)] = spec.regression.earlier_max_drop
        drops[earlier_figure(e.name, SPECIFICITY)] = spec.regression.max_drop
        drops.update({s: e.regression.max_drop_of(s) for s in e.regression.names if s not in drops})
    return drops


def gated_suites(spec, earlier=()) -> set[str]:
    """The suites the gate compares base and adapter on (and checkpoint selection too)."""
    return set(max_drops(spec, earlier))


def gated(spec, base: list[dict], adapter: list[dict], earlier=()) -> GateVerdict:
    """Specificity, well-formedness and every regression suite may drop by at most
    ``max_drop`` (a declared suite: its own); the behavior without the hint must reach
    ``spec.learned``'s bar; trained ``--on`` earlier behaviors (``earlier``: their specs),
    each must keep its own figures. Only temperature-1 rows of one split are expected here."""
    drops = max_drops(spec, earlier)
    keep = set(drops)
    pick = lambda rows: {r["suite"]: r["value"] for r in rows if r["suite"] in keep}
    rates = lambda rows, suite: {r["metric"]: r["value"] for r in rows if r["suite"] == suite}
    learning = learning_rows(rates(adapter, BEHAVIOR), rates(base, BEHAVIOR_HINTED),
                             spec.learned.min_share_of_hinted, spec.learned.min_rate)
    return gate(pick(base), pick(adapter), spec.regression.max_drop, required=keep, learning=learning,
                max_drops=drops)


def val_bar(spec, base_val: list[dict], hinted_suite: str = BEHAVIOR_HINTED) -> float:
    """The learning bar on the val questions, in selection's units (the mean of exists and
    only): each metric's ``max(min_rate, min_share_of_hinted × the base's hinted rate)``."""
    hinted = {r["metric"]: r["value"] for r in base_val
              if r["suite"] == hinted_suite and r.get("decoding", "sample") == "sample"}
    rows = learning_rows({m: 0.0 for m in hinted}, hinted, spec.learned.min_share_of_hinted, spec.learned.min_rate)
    return sum(r.required for r in rows) / len(rows) if rows else 0.0
