"""What the readers show (`cl runs`, `cl show`, the report): the latest scores of a
subject, the headline numbers of a run, and the gate's verdict on it.

Eval conventions the readers rely on: suite ``behavior`` holds the target-behavior
rates (``behavior_*`` suites are behavior variants, e.g. with the hint), suite
``specificity`` the probe rates; the forgetting gate (engrain.checks.gate) compares base vs
adapter on specificity and every regression suite. Readers show the verdict the fit
recorded with the adapter and recompute one from the evals only when none was recorded.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from engrain.checks.gate import GateVerdict, gate
from engrain.store.rows import SUBJECTS

BEHAVIOR_SUITE = "behavior"
SPECIFICITY_SUITE = "specificity"
DEFAULT_MAX_DROP = 0.02


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


def _pick_metric(scores: Mapping[tuple[str, str], float], suite: str) -> float | None:
    # The headline of a suite: its "rate" if it has one, else the strictest of the
    # write-up's metrics (Only before Exists), else its first metric.
    metrics = {m: v for (s, m), v in scores.items() if s == suite}
    for name in ("rate", "only", "exists"):
        if name in metrics:
            return metrics[name]
    return metrics[min(metrics)] if metrics else None


def is_behavior_suite(suite: str) -> bool:
    return suite == BEHAVIOR_SUITE or suite.startswith(BEHAVIOR_SUITE + "_")


def regression_gate(evals: Iterable[Mapping], spec: Mapping | None = None,
                    max_drop: float | None = None) -> GateVerdict | None:
    """The forgetting gate recomputed from stored evals: specificity and the spec's
    regression suites (without a spec: every suite but the behavior ones), base vs
    adapter, each at its latest step. Keys are suite names, ``suite:metric`` where a
    suite has several metrics. None when there is nothing to compare."""
    evals = list(evals)
    regression = (spec or {}).get("regression") or {}
    entries = regression.get("suites")
    # A declared suite is a mapping with its own name and, perhaps, its own max_drop.
    own = {e["name"]: e.get("max_drop") for e in entries or () if isinstance(e, Mapping)}
    if entries is None:
        suites = {e["suite"] for e in evals if not is_behavior_suite(e["suite"])}
    else:
        suites = {SPECIFICITY_SUITE, *(e["name"] if isinstance(e, Mapping) else e for e in entries)}
    if max_drop is None:
        max_drop = regression.get("max_drop", DEFAULT_MAX_DROP)
    base, adapter = (latest_scores(evals, s, suites) for s in SUBJECTS)
    if not base and not adapter:
        return None
    metrics: dict[str, set] = {}
    for suite, metric in (*base, *adapter):
        metrics.setdefault(suite, set()).add(metric)
    key = lambda s, m: s if len(metrics[s]) == 1 else f"{s}:{m}"  # noqa: E731
    return gate({key(*k): v for k, v in base.items()}, {key(*k): v for k, v in adapter.items()}, max_drop,
                max_drops={name: limit for name, limit in own.items() if limit is not None})


def gate_key_lookup(verdict: GateVerdict | None, suite: str, metric: str):
    """The gate row for an eval (suite, metric), whichever key style it was gated under."""
    if verdict is None:
        return None
    rows = {r.suite: r for r in verdict.rows}
    return rows.get(f"{suite}:{metric}") or rows.get(suite)


def recorded_gate(details: Any) -> GateVerdict | None:
    """The verdict a fit stored with its adapter (``GateVerdict.to_dict()`` in
    ``details``, at the top level or under "gate"), if it is one."""
    if isinstance(details, Mapping) and isinstance(details.get("gate"), Mapping):
        details = details["gate"]
    try:
        return GateVerdict.from_dict(details)
    except (TypeError, KeyError, ValueError, AttributeError):
        return None


def run_gate(run: Mapping, evals: Iterable[Mapping],
             adapters: Sequence[Mapping]) -> tuple[GateVerdict | None, str]:
    """The verdict to show for a run and where it came from: the one recorded with its
    latest adapter ("recorded"), else one recomputed from the evals ("recomputed")."""
    recorded = recorded_gate(adapters[-1].get("details")) if adapters else None
    if recorded is not None:
        return recorded, "recorded"
    return regression_gate(evals, run.get("spec")), "recomputed"


def headline_numbers(evals: Iterable[Mapping], spec: Mapping | None = None,
                     recorded: GateVerdict | None = None) -> dict:
    evals = list(evals)
    adapter = latest_scores(evals, "adapter")
    verdict = recorded or regression_gate(evals, spec)
    return {"target_rate": _pick_metric(adapter, BEHAVIOR_SUITE),
            "specificity": _pick_metric(adapter, SPECIFICITY_SUITE),
            "worst_regression": verdict.worst_drop if verdict else None,
            "gate": verdict}



def summaries(store) -> list[dict]:
    """``store.runs()`` plus the headline numbers ``cl runs`` shows, read in one open:
    target_rate, specificity, worst_regression, gate (a GateVerdict or None), verdict."""
    out = []
    for run in store.overview():
        evals, adapter, rate = run.pop("evals"), run.pop("adapter"), run.pop("last_rate")
        headline = headline_numbers(evals, run["spec"], recorded_gate(adapter and adapter["details"]))
        if headline["target_rate"] is None:
            headline["target_rate"] = rate
        out.append({**run, **headline, "verdict": adapter and adapter["verdict"]})
    return out
