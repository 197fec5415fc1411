"""What the readers show (`cl runs`, `cl show`, `cl report`): the latest scores of each
subject, a run's headline numbers, and the gate's verdict on it.

One gate. The verdict shown is the one the fit recorded with its adapter ("recorded").
Only when none was recorded and the run has finished is it recomputed, with the fit's
own gate (``engrain.checks.gate.gated``) on the spec the run stored and the stored
temperature-1 rows of the eval split, each at its subject's latest step ("recomputed").
A run still in progress has no verdict yet: it reads "running".

Eval conventions the readers rely on (engrain.spec.figures): suite ``behavior`` holds the
behavior's rates without the hint, ``behavior_hinted`` the base model's with it,
``specificity`` the probe rates and ``well_formed`` the share of answers that neither loop
nor run out; every other suite is a regression suite.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from engrain.checks.gate import GateRow, GateVerdict, LearnRow, gated
from engrain.spec.figures import BEHAVIOR, SPECIFICITY
from engrain.store.rows import SUBJECTS

RECORDED, RECOMPUTED, RUNNING, NONE = "recorded", "recomputed", "running", "none"


@dataclass(frozen=True)
class RunVerdict:
    """The verdict a reader shows for a run, and where it came from."""
    gate: GateVerdict | None
    source: str              # recorded | recomputed | running (none yet) | none (cannot tell)
    note: str = ""           # without a verdict: why

    @property
    def outcome(self) -> str | None:
        """accepted | regressed | not learned | running; None when there is no verdict."""
        if self.gate is not None:
            return self.gate.outcome
        return RUNNING if self.source == RUNNING else None

    def describe(self) -> str:
        """One line: "Gate (recorded): accepted (...)", "Gate: running (...)"."""
        if self.gate is not None:
            return f"Gate ({self.source}): {self.gate.summary()}"
        return f"Gate: {RUNNING if self.source == RUNNING else 'no verdict'} ({self.note})"

    def to_dict(self) -> dict:
        return {"outcome": self.outcome, "source": self.source, "note": self.note,
                "gate": None if self.gate is None else self.gate.to_dict()}


# --- scores ---------------------------------------------------------------------------------

def latest_scores(evals: Iterable[Mapping], subject: str,
                  suites: Iterable[str] | None = None, split: str = "eval",
                  decoding: str = "sample") -> dict[tuple[str, str], float]:
    """``{(suite, metric): value}`` at the subject's latest evaluated step, among the rows
    of one split and decoding (NULL, in stores written before they existed, reads as
    eval / sample)."""
    wanted = None if suites is None else set(suites)
    best: dict[tuple[str, str], tuple[int, float]] = {}
    for e in evals:
        if e["subject"] != subject or (wanted is not None and e["suite"] not in wanted):
            continue
        if (e.get("split") or "eval") != split or (e.get("decoding") or "sample") != decoding:
            continue
        key = (e["suite"], e["metric"])
        if key not in best or e["step"] >= best[key][0]:
            best[key] = (e["step"], e["value"])
    return {k: v for k, (_, v) in best.items()}


def gate_inputs(evals: Iterable[Mapping], subject: str) -> list[dict]:
    """The rows the fit's gate reads for ``subject``: temperature 1, eval split, each
    (suite, metric) at its latest step, as {"suite", "metric", "value"}."""
    return [{"suite": s, "metric": m, "value": v} for (s, m), v in latest_scores(evals, subject).items()]


def headline_metric(scores: Mapping[tuple[str, str], float], suite: str) -> float | None:
    """The headline of a suite: its "rate" if it has one, else the strictest of the
    write-up's metrics (Only before Exists), else its first metric."""
    metrics = {m: v for (s, m), v in scores.items() if s == suite}
    for name in ("rate", "only", "exists"):
        if name in metrics:
            return metrics[name]
    return metrics[min(metrics)] if metrics else None


# --- the verdict ----------------------------------------------------------------------------

def recorded_gate(details: Any) -> GateVerdict | None:
    """The verdict a fit stored with its adapter (``GateVerdict.to_dict()`` in
    ``details``, at the top level or under "gate"), if it is one."""
    if isinstance(details, Mapping) and isinstance(details.get("gate"), Mapping):
        details = details["gate"]
    try:
        return GateVerdict.from_dict(details)
    except (TypeError, KeyError, ValueError, AttributeError):
        return None


def stored_spec(run: Mapping) -> tuple[Any, str]:
    """(the run's stored spec as a ``BehaviorSpec``, "") or (None, why not)."""
    data = run.get("spec")
    if data is None:
        return None, "the run stored no spec"
    from engrain.spec.schema import BehaviorSpec   # pydantic: only when a verdict is recomputed
    try:
        return BehaviorSpec.model_validate(data), ""
    except Exception as err:     # noqa: BLE001 - a reader says why, and shows the rest of the run
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        return None, f"the stored spec does not validate: {first}"


def recompute(run: Mapping, evals: Iterable[Mapping]) -> RunVerdict:
    """The fit's gate, ``gated(spec, base_rows, adapter_rows)``, on what the run stored."""
    evals = list(evals)
    base, adapter = (gate_inputs(evals, s) for s in SUBJECTS)
    if not adapter:
        return RunVerdict(None, NONE, "no adapter evals on the eval split")
    spec, why = stored_spec(run)
    if spec is None:
        return RunVerdict(None, NONE, why)
    return RunVerdict(gated(spec, base, adapter), RECOMPUTED)


def run_verdict(run: Mapping, evals: Iterable[Mapping], adapters: Sequence[Mapping]) -> RunVerdict:
    """The verdict recorded with the run's latest adapter; else "running" while the run
    runs; else the one recomputed from the stored spec and evals."""
    recorded = recorded_gate(adapters[-1].get("details")) if adapters else None
    if recorded is not None:
        return RunVerdict(recorded, RECORDED)
    if run.get("status") == RUNNING:
        return RunVerdict(None, RUNNING, "no verdict until the fit ends")
    return recompute(run, evals)


def gate_row(verdict: GateVerdict | None, suite: str, metric: str) -> GateRow | LearnRow | None:
    """The gate's row for one eval figure: the behavior's metric is a learning row, any
    other suite a regression row (the gate compares one value per suite)."""
    if verdict is None:
        return None
    if suite == BEHAVIOR:
        return next((r for r in verdict.learning if r.metric == metric), None)
    return next((r for r in verdict.rows if r.suite == suite), None)


# --- cl runs --------------------------------------------------------------------------------

def headline_numbers(evals: Iterable[Mapping], verdict: RunVerdict) -> dict:
    """target_rate and specificity (the adapter's latest), worst_regression, the verdict
    (gate: a GateVerdict or None; gate_source; outcome)."""
    adapter = latest_scores(evals, "adapter")
    gate = verdict.gate
    return {"target_rate": headline_metric(adapter, BEHAVIOR),
            "specificity": headline_metric(adapter, SPECIFICITY),
            "worst_regression": gate.worst_drop if gate else None,
            "gate": gate, "gate_source": verdict.source, "outcome": verdict.outcome}


def summaries(store) -> list[dict]:
    """``store.runs()`` with the headline numbers `cl runs` shows (read in one open):
    target_rate (else the last step's training rate), specificity, worst_regression,
    gate, gate_source, outcome, and verdict (the adapters table's)."""
    out = []
    for run in store.overview():
        evals, adapter, rate = run.pop("evals"), run.pop("adapter"), run.pop("last_rate")
        headline = headline_numbers(evals, run_verdict(run, evals, [adapter] if adapter else []))
        if headline["target_rate"] is None:
            headline["target_rate"] = rate
        out.append({**run, **headline, "verdict": adapter and adapter["verdict"]})
    return out
