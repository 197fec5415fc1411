"""The method table: SFT, OPSD and RMSD with the specs' defaults, on the lab's held-out
behaviors, several seeds each, side by side in one run.

    python benchmarks/method_table.py                       # 2 behaviors x 3 methods x 3 seeds
    python benchmarks/method_table.py --specs behaviors/pinapple.yaml --methods rmsd --seeds 0
    python benchmarks/method_table.py --methods rmsd --set train.teacher_temperature=1.0   # an ablation

Every fit is the product's own (``engrain.fit.fit``, the spec's settings, only method and
seed overridden). Per fit it prints the gate's outcome; the behavior without the hint on
held-out questions (exists / only, temperature 1 and greedy) beside the base model's own
rate *with* the hint; specificity; each capability suite, greedy and at temperature 1; the
share of well-formed answers; the adapter's drift ‖ΔW‖/‖W‖; the step the kept checkpoint
came from; the steps to reach 90% of the kept checkpoint's val behavior; and seconds.
Then one summary line per (behavior, method): accepted k/n and the means.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from engrain.fit import fit
from engrain.store.db import Store

CAPABILITIES = ("lab/arithmetic", "lab/capitals", "lab/hints")


def steps_to_90(db: Store, run_id: str, best_step: int) -> int | None:
    """First val eval step whose behavior (mean of exists, only) reached 90% of the kept one's."""
    curve: dict[int, list[float]] = {}
    for e in db.evals(run_id):
        if e["split"] == "val" and e["subject"] == "adapter" and e["suite"] == "behavior":
            curve.setdefault(e["step"], []).append(e["value"])
    score = {s: sum(v) / len(v) for s, v in curve.items()}
    target = 0.9 * score.get(best_step, 0.0)
    return next((s for s in sorted(score) if target > 0 and score[s] >= target), None)


def one(spec: str, method: str, seed: int, work: Path, eval_n: int) -> dict:
    store = work / "bench.duckdb"
    t0 = time.time()
    r = fit(spec, method=method, seed=seed, out_dir=work / "adapters", store=store, eval_n=eval_n,
            progress=False, log=lambda *x: None, keep_rejected=True)
    db = Store(store)
    fig = {(x["suite"], x["metric"], x["decoding"]): x["value"] for x in r.adapter}
    base = {(x["suite"], x["metric"], x["decoding"]): x["value"] for x in r.base}
    steps = db.steps(r.run_id)
    kept = next((s for s in steps if s["step"] == r.best_step - 1), None)
    row = {"behavior": Path(spec).stem, "method": method, "seed": seed, "outcome": r.outcome,
           "exists": fig[("behavior", "exists", "sample")], "only": fig[("behavior", "only", "sample")],
           "exists greedy": fig[("behavior", "exists", "greedy")],
           "only greedy": fig[("behavior", "only", "greedy")],
           "hinted base": base[("behavior_hinted", "exists", "sample")],
           "hinted base only": base[("behavior_hinted", "only", "sample")],
           "specificity": fig[("specificity", "clean", "sample")],
           "well formed": fig[("well_formed", "rate", "sample")],
           "base well formed": base[("well_formed", "rate", "sample")],
           "drift": kept["drift"] if kept else 0.0, "kept step": r.best_step, "steps run": r.steps_run,
           "steps to 90%": steps_to_90(db, r.run_id, r.best_step), "seconds": time.time() - t0,
           "why": "" if r.outcome == "accepted" else r.verdict.summary()}
    for suite in ("lab/in-context", "lab/hint-signoff", "lab/hint-pinapple"):
        if (suite, "follows", "sample") in fig:
            row[f"{suite} T=1"] = fig[(suite, "follows", "sample")]
            row[f"base {suite} T=1"] = base[(suite, "follows", "sample")]
    by_suite = lambda rows: {(s, d): v for (s, _, d), v in rows.items()}   # noqa: E731  (one metric each)
    for cap in CAPABILITIES:
        for decoding, tag in (("greedy", "greedy"), ("sample", "T=1")):
            row[f"{cap} {tag}"] = by_suite(fig).get((cap, decoding))
            row[f"base {cap} {tag}"] = by_suite(base).get((cap, decoding))
    return row


def with_settings(spec: str, settings: list[str], work: Path) -> str:
    """A copy of ``spec`` with dotted ``key=value`` settings applied (values read as YAML)."""
    if not settings:
        return spec
    data = yaml.safe_load(Path(spec).read_text())
    for section in ("prompts", "probes", "anchor"):      # prompt files stay where they are
        if isinstance(data.get(section), dict) and "file" in data[section]:
            data[section]["file"] = str((Path(spec).parent / data[section]["file"]).resolve())
    for suite in (data.get("regression") or {}).get("suites", []):
        if isinstance(suite, dict) and "file" in suite:
            suite["file"] = str((Path(spec).parent / suite["file"]).resolve())
    for setting in settings:
        key, value = setting.split("=", 1)
        node, *path = key.split(".")
        target = data
        for part in [node, *path][:-1]:
            target = target.setdefault(part, {})
        target[[node, *path][-1]] = yaml.safe_load(value)
    out = work / Path(spec).name
    out.write_text(yaml.safe_dump(data))
    return str(out)


def fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


COLUMNS = ("behavior", "method", "seed", "outcome", "exists", "only", "exists greedy", "only greedy",
           "hinted base", "hinted base only", "specificity", "well formed", "lab/arithmetic greedy",
           "lab/capitals greedy", "lab/arithmetic T=1", "lab/capitals T=1", "lab/hints T=1", "drift", "kept step",
           "steps run", "steps to 90%", "seconds")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--specs", default="behaviors/pinapple.yaml,behaviors/signoff.yaml")
    ap.add_argument("--methods", default="sft,opsd,rmsd")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--eval-n", type=int, default=200)
    ap.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                    help="Change a spec field for every fit, e.g. train.teacher_temperature=1.0 (repeatable).")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="engrain-table-"))
    if a.settings:
        print("settings: " + ", ".join(a.settings))
    rows = []
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for spec in (with_settings(s, a.settings, work) for s in a.specs.split(",")):
        for method in a.methods.split(","):
            for seed in (int(s) for s in a.seeds.split(",")):
                rows.append(one(spec, method, seed, work, a.eval_n))
                print("| " + " | ".join(fmt(rows[-1][c]) for c in COLUMNS) + " |", flush=True)
                hints = [f"{k.removesuffix(' T=1')} {fmt(rows[-1]['base ' + k])} -> {fmt(rows[-1][k])}"
                         for k in rows[-1] if k.startswith("lab/") and k.endswith(" T=1") and "hint" in k
                         or k == "lab/in-context T=1"]
                print(f"  other hints (T=1, base -> adapter): {', '.join(hints) or '-'}"
                      + (f"; why: {rows[-1]['why']}" if rows[-1]["why"] else ""), flush=True)
    print("\nsummary: behavior, method: accepted k/n; means of exists / only (T=1) as a share of the base "
          "model's hinted rate; specificity; capitals greedy; well formed; drift; steps to 90%")
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["behavior"], r["method"]), []).append(r)
    mean = lambda rs, k: statistics.mean(r[k] for r in rs if r[k] is not None) if any(  # noqa: E731
        r[k] is not None for r in rs) else None
    for (behavior, method), rs in groups.items():
        share = lambda k, h: mean([{"x": r[k] / r[h] if r[h] else None} for r in rs], "x")  # noqa: E731
        print(f"{behavior:10s} {method:5s} accepted {sum(r['outcome'] == 'accepted' for r in rs)}/{len(rs)}  "
              f"exists {fmt(mean(rs, 'exists'))} ({fmt(share('exists', 'hinted base'))} of hinted)  "
              f"only {fmt(mean(rs, 'only'))} ({fmt(share('only', 'hinted base only'))})  "
              f"spec {fmt(mean(rs, 'specificity'))}  capitals {fmt(mean(rs, 'lab/capitals greedy'))}  "
              f"wf {fmt(mean(rs, 'well formed'))}  drift {fmt(mean(rs, 'drift'))}  "
              f"steps to 90% {fmt(mean(rs, 'steps to 90%'))}")


if __name__ == "__main__":
    main()
