"""Forgetting checks: the same figures for the base model and the adapter, and the gate.

Base and adapter are sampled with the same seed (common random numbers), so a gap between
them is the adapter's doing more than sampling noise.
"""

from __future__ import annotations

import json
from pathlib import Path

from .evals import behavior_suites, capability_suite, run_suites
from .gate import GateVerdict, gate


def evaluate(model, tokenizer, cb, spec, adapter_on: bool, n: int, seed: int) -> list[dict]:
    """Behavior (without and with the hint), specificity and the regression suites, as
    store rows: {"suite", "metric", "value", "n"}."""
    suites = behavior_suites(cb, n) + [capability_suite(s, n) for s in spec.regression.suites]
    results = run_suites(model, tokenizer, suites, adapter_on=adapter_on, seed=seed,
                         max_new_tokens=spec.train.max_new_tokens)
    return [{"suite": r.suite, "metric": r.metric, "value": r.value, "n": r.n} for r in results]


def gated(spec, base: list[dict], adapter: list[dict]) -> GateVerdict:
    """Specificity and every regression suite may drop by at most ``max_drop``."""
    keep = {"specificity", *spec.regression.suites}
    pick = lambda rows: {r["suite"]: r["value"] for r in rows if r["suite"] in keep}
    return gate(pick(base), pick(adapter), spec.regression.max_drop, required=keep)


def recheck(run_dir: Path, n: int = 200):
    """Re-run the checks for a run's saved adapter: (spec, base rows, adapter rows, verdict)."""
    from .behavior import load_behavior
    from .models import load_model
    saved = json.loads((run_dir / "run.json").read_text())
    behavior = load_behavior(saved["spec_path"]).with_overrides(saved["overrides"])
    spec = behavior.spec
    adapter = next((run_dir / d for d in ("adapter", "adapter.rejected") if (run_dir / d).exists()), None)
    if adapter is None:
        raise FileNotFoundError(f"{run_dir} has no adapter yet (still training, or interrupted: "
                                f"resume it with cl fit --resume {saved['run_id']})")
    loaded = load_model(spec.model, adapter=adapter)
    cb = behavior.compile(loaded.tokenizer)
    base = evaluate(loaded.model, loaded.tokenizer, cb, spec, False, n, spec.train.seed)
    after = evaluate(loaded.model, loaded.tokenizer, cb, spec, True, n, spec.train.seed)
    return spec, base, after, gated(spec, base, after)
