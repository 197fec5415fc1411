"""RMSD vs OPSD (and SFT) on the lab, side by side in one run.

    python benchmarks/rmsd_vs_opsd.py [--spec behaviors/pinapple.yaml] [--steps 60] [--methods rmsd,opsd]

For each method: `engrain.fit` with curve evals every ``--eval-every`` steps (64 prompts),
then the final 200-prompt figures. Prints steps to reach the target rate, the final
behavior / specificity / regression figures, and seconds per training step.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from engrain.fit import fit
from engrain.store import Store


def first_step_reaching(curve: list[tuple[int, float]], target: float) -> str:
    hit = next((step for step, v in sorted(curve) if v >= target), None)
    return str(hit) if hit is not None else f">{max((s for s, _ in curve), default=0)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="behaviors/pinapple.yaml")
    ap.add_argument("--methods", default="rmsd,opsd")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--target", type=float, default=0.6)
    ap.add_argument("--eval-n", type=int, default=200)
    a = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="engrain-bench-"))
    rows = []
    for method in a.methods.split(","):
        store = work / f"{method}.duckdb"
        r = fit(a.spec, method=method, steps=a.steps, out_dir=work / "adapters", store=store,
                eval_n=a.eval_n, progress=False, log=lambda *x: None, keep_rejected=True)
        db = Store(store)
        steps = db.steps(r.run_id)
        curve = [(e["step"], e["value"]) for e in db.evals(r.run_id)
                 if e["subject"] == "adapter" and e["suite"] == "behavior" and e["metric"] == "exists"]
        final = {(x["suite"], x["metric"]): x["value"] for x in r.adapter}
        base = {(x["suite"], x["metric"]): x["value"] for x in r.base}
        rows.append({
            "method": method,
            f"steps to {a.target}": first_step_reaching(curve, a.target),
            "exists": final[("behavior", "exists")], "only": final[("behavior", "only")],
            "specificity": final[("specificity", "clean")],
            **{k[0]: v for k, v in final.items() if k[0].startswith("lab/")},
            "base exists": base[("behavior", "exists")],
            "s/step": statistics.mean(s["seconds"] for s in steps),
            "masked/step": statistics.mean(s["n_selected"] for s in steps),
            "gate": r.status,
        })
    keys = list(rows[0])
    width = max(len(k) for k in keys) + 2
    print(f"spec {a.spec}, {a.steps or 'spec'} steps, eval n={a.eval_n}; work dir {work}")
    for k in keys:
        cells = [f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for r in rows]
        print(k.ljust(width) + "".join(c.rjust(14) for c in cells))


if __name__ == "__main__":
    main()
