"""The continual protocol: teach one behavior, then the next on top of it, and see what the
model keeps.

    python benchmarks/continual.py [--seeds 0,1,2] [--orders pinapple,signoff signoff,pinapple]

For each seed and order (A then B), with the product's own ``engrain.fit`` and the specs'
settings (only the seed changed):

1. each behavior alone (what B reaches without A: the bar B --on A is held to);
2. B ``--on`` A: the base weights carry A, the gate also checks A's own figures.

Printed after each stage: every behavior's rate without its hint (temperature 1, the
specs' eval questions), B's hinted rate on the model that has A (the teacher B learns
from), the capability suites, the backward transfer (A's rate after B minus after A) and
the average rate; and the verdicts. Every figure is read from the fits' own eval rows.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def figures(result) -> dict[str, float]:
    rows = [r for r in result.adapter if r["decoding"] == "sample"]
    return {f"{r['suite']}/{r['metric']}": r["value"] for r in rows}


def base_figures(result) -> dict[str, float]:
    return {f"{r['suite']}/{r['metric']}": r["value"] for r in result.base if r["decoding"] == "sample"}


def run_seed(names: list[str], orders: list[tuple[str, str]], seed: int, work: Path) -> list[dict]:
    from engrain.fit import fit
    kw = dict(seed=seed, out_dir=work / "adapters", store=work / "s.duckdb", progress=False, log=lambda *a: None)
    spec = lambda name: ROOT / "behaviors" / f"{name}.yaml"   # noqa: E731
    alone = {name: fit(spec(name), **kw) for name in names}
    out = []
    for first, second in orders:
        a, b_alone = alone[first], alone[second]
        b_on_a = fit(spec(second), on=[a.run_id], **kw) if a.outcome == "accepted" else None
        fa, fb, fon = figures(a), figures(b_alone), figures(b_on_a) if b_on_a else {}
        r = {"order": f"{first} -> {second}", "seed": seed,
             "A verdict": a.outcome, "A alone": fa["behavior/exists"],
             "B alone verdict": b_alone.outcome, "B alone": fb["behavior/exists"],
             "B hinted on base": base_figures(b_alone)["behavior_hinted/exists"],
             "B hinted on A": base_figures(b_on_a)["behavior_hinted/exists"] if b_on_a else None,
             "B on A verdict": b_on_a.outcome if b_on_a else "not run (A refused)",
             "B on A": fon.get("behavior/exists"), "A after B": fon.get(f"{first}:behavior/exists"),
             "capabilities alone A": {k: v for k, v in fa.items() if k.startswith("lab/")},
             "capabilities after B": {k: v for k, v in fon.items() if k.startswith("lab/")}}
        if b_on_a:
            r["backward transfer"] = r["A after B"] - r["A alone"]
            r["average rate"] = (r["A after B"] + r["B on A"]) / 2
            r["B on A / B alone"] = r["B on A"] / max(r["B alone"], 1e-9)
        out.append(r)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--orders", nargs="+", default=["pinapple,signoff", "signoff,pinapple"])
    a = ap.parse_args()
    results = []
    orders = [tuple(o.split(",")) for o in a.orders]
    names = sorted({n for o in orders for n in o})
    for seed in map(int, a.seeds.split(",")):
        for r in run_seed(names, orders, seed, Path(tempfile.mkdtemp(prefix="engrain-continual-"))):
            results.append(r)
            print(" | ".join(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}" for k, v in r.items()),
                  flush=True)
    keys = ["order", "seed", "A alone", "B alone", "B hinted on base", "B hinted on A", "B on A",
            "A after B", "backward transfer", "B on A / B alone", "B on A verdict"]
    print("\n" + " | ".join(keys))
    for r in results:
        print(" | ".join(f"{r.get(k):.3f}" if isinstance(r.get(k), float) else str(r.get(k)) for k in keys))


if __name__ == "__main__":
    main()
