"""The checks around training: the same figures for the base model and the adapter, and
the gate over them.

Base and adapter are sampled with the same seed (common random numbers), so a gap between
them is the adapter's doing more than sampling noise. The gate reads the temperature-1
figures on the ``eval`` split; greedy figures are reported beside them; the ``val`` split
(disjoint questions) is what training looks at to pick its checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

from .evals import behavior_suites, run_suites
from .gate import GateVerdict, gate, learning_rows

WELL_FORMED = "well_formed"     # the suite of the pooled share of non-degenerate answers
DECODINGS = {"sample": 1.0, "greedy": 0.0}


def evaluate(model, tokenizer, cb, spec, adapter_on: bool, n: int, seed: int, split: str = "eval",
             decoding: str = "sample") -> list[dict]:
    """Behavior (without and with the hint), specificity, the regression suites and the
    share of well-formed answers, as store rows {"suite", "metric", "value", "n", "split",
    "decoding"}."""
    suites = behavior_suites(cb, n, split) + [source.build(n, split) for source in cb.regression.values()]
    results = run_suites(model, tokenizer, suites, adapter_on=adapter_on, seed=seed,
                         max_new_tokens=spec.train.max_new_tokens, temperature=DECODINGS[decoding],
                         sampler=spec.train.sampler)
    rows = [{"suite": r.suite, "metric": r.metric, "value": r.value, "n": r.n} for r in results]
    # Degeneracy pooled over every answer given without the hint (exists/only share theirs).
    plain = {r.suite: r for r in results if r.suite != "behavior_hinted"}.values()
    total = sum(r.n for r in plain)
    rows.append({"suite": WELL_FORMED, "metric": "rate", "n": total,
                 "value": 1 - sum(r.degenerate for r in plain) / max(1, total)})
    return [{**r, "split": split, "decoding": decoding} for r in rows]


def gated_suites(spec) -> set[str]:
    """The suites the gate compares base and adapter on (and checkpoint selection too)."""
    return {"specificity", WELL_FORMED, *spec.regression.names}


def gated(spec, base: list[dict], adapter: list[dict]) -> GateVerdict:
    """Specificity, well-formedness and every regression suite may drop by at most
    ``max_drop`` (a declared suite: its own); the behavior without the hint must reach
    ``spec.learned``'s bar. Only temperature-1 rows of one split are expected here."""
    keep = gated_suites(spec)
    pick = lambda rows: {r["suite"]: r["value"] for r in rows if r["suite"] in keep}
    rates = lambda rows, suite: {r["metric"]: r["value"] for r in rows if r["suite"] == suite}
    learning = learning_rows(rates(adapter, "behavior"), rates(base, "behavior_hinted"),
                             spec.learned.min_share_of_hinted, spec.learned.min_rate)
    return gate(pick(base), pick(adapter), spec.regression.max_drop, required=keep, learning=learning,
                max_drops={s: spec.regression.max_drop_of(s) for s in spec.regression.names})


def recheck(run_dir: Path, n: int = 200):
    """Re-run the checks for a run's saved adapter: (spec, base rows, adapter rows, verdict)."""
    from .behavior import Behavior
    from .models import load_model
    from .spec import BehaviorSpec
    saved = json.loads((run_dir / "run.json").read_text())
    spec = BehaviorSpec.model_validate(saved["spec"]) if "spec" in saved else None
    behavior = (Behavior(spec, Path(saved["spec_path"])) if spec is not None else
                _legacy_behavior(saved))
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


def _legacy_behavior(saved: dict):
    # Runs started before run.json kept the validated spec: re-read the file.
    from .behavior import load_behavior
    return load_behavior(saved["spec_path"]).with_overrides(saved["overrides"])
