"""``engrain.compose``: a consolidation's teachers fit first, then the composition.

The default design, consolidate (engrain/composition.py), teaches each behavior from an
adapter that already carries it. Given none, each spec is fit alone first
(``fit.fit_teachers``), then ``composition.compose`` learns them all into one adapter. A
module above both ``fit`` and ``composition``: the public entry that uses both.
"""

from __future__ import annotations

from pathlib import Path

from engrain.composition import ComposeResult
from engrain.composition import compose as compose_adapter
from engrain.fit import fit_teachers
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
