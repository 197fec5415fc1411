"""Several behaviors in one adapter: the designs side by side, several seeds, and the lineage.

    python benchmarks/compose_designs.py                                   # claims, 3 seeds
    python benchmarks/compose_designs.py --designs claims,masks,opsd --seeds 0
    python benchmarks/compose_designs.py --seeds 0 --then behaviors/opener.yaml   # + a third --on it
    python benchmarks/compose_designs.py --designs consolidate --seeds 0     # each spec fit alone first

Each run is the product's own ``engrain.compose`` (the specs' settings; design and seed
changed). Per run: the joint gate's outcome and why; each behavior's rate without its hint
(temperature 1, its eval questions) beside the base model's own rate with the hint; the
share of answers carrying every behavior at once ("together", on the first spec's
questions); capabilities and other hints' following (the union of the specs' suites); the
kept step and seconds. ``consolidate``: each spec is first fit alone (the product's
``fit_teachers``: same seed, gated on its suites less hint following; its line printed), and
its adapter teaches that behavior. ``--then SPEC``: after each accepted composition, ``fit(SPEC, on=[it])``
(the lineage: one adapter replaying every earlier behavior's teacher), with the same figures.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def figures(rows: list[dict]) -> dict[str, float]:
    return {f"{r['suite']}/{r['metric']}": r["value"] for r in rows if r["decoding"] == "sample"}


def line(kind: str, seed: int, result, names: list[str], seconds: float) -> str:
    a, b = figures(result.adapter), figures(result.base)
    parts = [f"{kind} seed {seed}: {result.outcome}"]
    for n in names:
        parts.append(f"{n} {a.get(f'{n}:behavior/exists', float('nan')):.3f} "
                     f"(hinted base {b.get(f'{n}:behavior_hinted/exists', float('nan')):.3f})")
    parts.append(f"together {a.get('together/all', float('nan')):.3f}")
    for k in sorted(a):
        if k.startswith("lab/"):
            parts.append(f"{k.split('/')[1]} {b.get(k, float('nan')):.3f}->{a[k]:.3f}")
    parts.append(f"kept step {result.best_step}, {seconds:.0f} s")
    if result.outcome != "accepted":
        parts.append(f"why: {result.verdict.summary()}")
    return " | ".join(parts)


def main() -> None:
    from engrain.composition import compose
    from engrain.fit import fit_teachers
    from engrain.fit import fit
    from engrain.spec.behavior import as_behavior
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--specs", default="behaviors/pinapple.yaml,behaviors/signoff.yaml")
    ap.add_argument("--designs", default="claims")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, help="Steps per behavior (default: the specs').")
    ap.add_argument("--eval-n", type=int, default=200)
    ap.add_argument("--schedule", default="turns", help="turns | weakest (engrain.compose's schedule).")
    ap.add_argument("--lr", type=float, help="The shared optimizer's peak rate (default: the first spec's).")
    ap.add_argument("--then", help="A spec to fit --on each accepted composition.")
    a = ap.parse_args()
    specs = [ROOT / s for s in a.specs.split(",")]
    names = [p.stem for p in specs]
    for design in a.designs.split(","):
        for seed in map(int, a.seeds.split(",")):
            work = Path(tempfile.mkdtemp(prefix="engrain-compose-"))
            kw = dict(out_dir=work / "adapters", store=work / "s.duckdb", eval_n=a.eval_n)
            teachers = None
            if design == "consolidate":     # the product's first stage, here to print each teacher
                t0 = time.time()
                alone = fit_teachers([as_behavior(p) for p in specs], seed=seed, **kw)
                for spec, f in zip(specs, alone):
                    fa, fb = figures(f.adapter), figures(f.base)
                    print(f"  {spec.stem}'s teacher, seed {seed}: {f.verdict.summary()} | {spec.stem} "
                          f"{fa.get('behavior/exists', float('nan')):.3f} (hinted base "
                          f"{fb.get('behavior_hinted/exists', float('nan')):.3f}) | kept step {f.best_step}", flush=True)
                print(f"  teachers: {time.time() - t0:.0f} s", flush=True)
                teachers = [f.adapter_path for f in alone]
            t0 = time.time()
            r = compose(specs, design=design, seed=seed, steps=a.steps, lr=a.lr, schedule=a.schedule,
                        teachers=teachers, **kw)
            print(line(f"compose {'+'.join(names)} [{design}]", seed, r, names, time.time() - t0), flush=True)
            if a.then and r.outcome == "accepted":
                t0 = time.time()
                third = fit(ROOT / a.then, on=[r.run_id], seed=seed, **kw)
                print(line(f"  {Path(a.then).stem} --on it", seed, third, names + [Path(a.then).stem],
                           time.time() - t0), flush=True)


if __name__ == "__main__":
    main()
