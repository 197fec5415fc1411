"""``engrain.compose``: a consolidation's teachers fit first, then the composition.

The default design, consolidate (engrain/composition.py), teaches each behavior from an
adapter that already carries it. Given none, each spec is fit alone first (``fit_teachers``),
then ``composition.compose`` learns them all into one adapter. A module above both ``fit``
and ``composition``, because the one uses the other.
"""

from __future__ import annotations

from pathlib import Path

from engrain.composition import ComposeError, ComposeResult
from engrain.composition import compose as compose_adapter
from engrain.spec.behavior import as_behavior


def compose(specs, *, design: str = "consolidate", teachers=None, seed: int | None = None,
            out_dir: str | Path = "adapters", store: str | Path | None = None, eval_n: int | None = None,
            base_dir: str | Path | None = None, log=None, resume: str | None = None, **options) -> ComposeResult:
    """Learn every behavior of ``specs`` into one adapter (``composition.compose``'s options);
    for a consolidation without ``teachers``, each spec's teacher is fit first (``fit_teachers``)."""
    if design == "consolidate" and not teachers and not resume:
        behaviors = [as_behavior(s, base_dir) for s in specs]
        teachers = [r.adapter_path for r in fit_teachers(
            behaviors, seed=behaviors[0].spec.train.seed if seed is None else seed, out_dir=out_dir, store=store,
            eval_n=eval_n, log=log)]
    return compose_adapter(specs, design=design, teachers=teachers, seed=seed, out_dir=out_dir, store=store,
                           eval_n=eval_n, base_dir=base_dir, log=log, resume=resume, **options)


def fit_teachers(behaviors, *, seed: int, out_dir, store, eval_n=None, log=None) -> list:
    """A consolidation's first stage: each behavior fit alone (``engrain.fit``, the same seed),
    gated on its suites less those of hint following (metric ``follows``). A teacher need only
    carry its behavior, at its own mask's positions; the consolidated adapter is gated on every
    suite. (Gated on them, the lab's sign-off alone kept no learned checkpoint on 5 seeds,
    benchmarks/RESULTS.md section 23.) A behavior not learned alone has nothing to teach: refused.
    Returns the fits' results (``FitResult``), in order; each ``adapter_path`` is a teacher."""
    from engrain.fit import fit
    from engrain.registry import SUITES
    log, results = log or (lambda *_: None), []
    for b in behaviors:
        keep = [e for e in b.spec.regression.suites
                if not (isinstance(e, str) and e in SUITES and SUITES.get(e).metric == "follows")]
        # Its own name ("pinapple-teacher"), so that a teacher gated less is never listed or
        # promoted as the behavior's adapter.
        spec = b.spec.model_copy(update={"name": f"{b.spec.name}-teacher", "regression":
                                         b.spec.regression.model_copy(update={"suites": keep})})
        log(f"teacher for {b.spec.name}: fitting it alone (suites: {', '.join(spec.regression.names) or 'none'})")
        r = fit(spec, base_dir=b.path.parent, seed=seed, out_dir=out_dir, store=store, eval_n=eval_n, log=log)
        if r.verdict.outcome == "not learned" or r.best_step == 0:
            raise ComposeError(f"{b.spec.name} was not learned alone (run {r.run_id}: {r.verdict.summary()}); "
                               "a consolidation has nothing to teach it from: fix that spec's fit first, or "
                               "give --teacher RUN_OR_DIR for it")
        results.append(r)
    return results
