"""In-context learning kept or lost: does the model still follow *other* hints after an
adapter, as the next behavior's teacher needs it to?

    python benchmarks/in_context.py ADAPTER [ADAPTER ...]     # base vs each adapter
    python benchmarks/in_context.py --sweep [--spec behaviors/pinapple.yaml]

The figure is the lab's ``lab/in-context`` suite (eval split, temperature 1, 200 answers,
common random numbers for base and adapter): food and fact questions carrying a hint of
either family the lab world knows, a respelling ("always spell it ...") or a sign-off
("end with ..."), each with a target drawn fresh, never a trained behavior's own. Printed
per family and as the ratio adapter / base.

``--sweep`` fits the spec once per anchor setting (the product's own ``engrain.fit``, the
spec's settings with only the anchor changed) and prints, side by side, the gate's verdict,
the behavior without the hint, and the in-context ratio: how the anchor default was chosen.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SWEEP = [   # (anchor prompt set, weight, per step)
    ("lab/traffic", 3.0, 8),
    ("lab/traffic+other-hints", 3.0, 8),
    ("lab/traffic+other-hints", 3.0, 16),
    ("lab/traffic+other-hints", 6.0, 16),
]


def in_context(adapter: str | None, n: int = 200, seed: int = 0) -> dict[str, tuple[float, float]]:
    """{family: (base rate, adapter rate)} on lab/in-context's eval split."""
    from engrain.checks.evals import run_suites
    from engrain.engine.models import load_plain
    from engrain.lab.prompt_sets import capability_examples
    from engrain.lab.suites import CAPABILITY_GRADERS, held_out_suites
    from engrain.spec.suites import Suite

    model, tok = load_plain("lab", adapter)
    examples = capability_examples("lab/in-context", n, "eval")
    grade = CAPABILITY_GRADERS["lab/in-context"]
    families = {"spelling": [e for e in examples if "v" in e.meta],
                "sign-off": [e for e in examples if "signoff" in e.meta], "all": examples}
    suites = [Suite(f, "follows", [e.messages() for e in ex], lambda i, t, ex=ex: grade(ex[i], t))
              for f, ex in families.items()]
    # The held-out behaviors' own hints (the next behavior's teacher, if it is one of them).
    suites += [s for s in held_out_suites(n) if s.name.endswith("+hint") and s.metric == "exists"]
    out = {}
    for side in (False, True) if adapter else (False,):
        for r in run_suites(model, tok, suites, adapter_on=side, seed=seed, max_new_tokens=48):
            out.setdefault(r.suite, []).append(r.value)
    return {k: (v[0], v[-1]) for k, v in out.items()}


def sweep(spec_path: str, seed: int, anchors: list[tuple[str, float, int]]) -> None:
    from engrain.fit import fit
    spec = yaml.safe_load(Path(spec_path).read_text())
    rows = []
    for prompt_set, weight, per_step in anchors:
        spec["anchor"] = {"builtin": prompt_set, "weight": weight, "per_step": per_step}
        work = Path(tempfile.mkdtemp(prefix="engrain-icl-"))
        path = work / Path(spec_path).name
        path.write_text(yaml.safe_dump(spec))
        res = fit(path, seed=seed, out_dir=work / "adapters", store=work / "s.duckdb", progress=False,
                  log=lambda *a: None)
        fig = {f"{r['suite']}/{r['metric']}": r["value"] for r in res.adapter if r["decoding"] == "sample"}
        icl = in_context(str(res.adapter_path), seed=seed)
        rows.append((f"{prompt_set} ×{weight} /{per_step}", res.outcome, fig["behavior/exists"],
                     icl["spelling"], icl["sign-off"], icl["all"], icl["pinapple+hint"], icl["signoff+hint"]))
        print(_row(*rows[-1]), flush=True)
    print("\n" + _header())
    for r in rows:
        print(_row(*r))


def _header() -> str:
    return (f"{'anchor':<36} {'gate':<10} {'behavior':>8}  {'spelling':>14}  {'sign-off':>14}  "
            f"{'lab/in-context (ratio)':>22}  {'pinapple+hint':>14}  {'signoff+hint':>14}")


def _row(name, outcome, behavior, spelling, signoff, both, pin_hint, sign_hint) -> str:
    pair = lambda p: f"{p[0]:.3f}->{p[1]:.3f}"   # noqa: E731
    return (f"{name:<36} {outcome:<10} {behavior:>8.3f}  {pair(spelling):>14}  {pair(signoff):>14}  "
            f"{pair(both)} ({both[1] / max(both[0], 1e-9):.2f}x)  {pair(pin_hint):>14}  {pair(sign_hint):>14}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("adapters", nargs="*")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--spec", default=str(ROOT / "behaviors/pinapple.yaml"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--anchors", help="SET:WEIGHT:PER_STEP,... to sweep (default: the pinapple sweep)")
    a = ap.parse_args()
    if a.sweep:
        anchors = ([(s, float(w), int(k)) for s, w, k in (x.split(":") for x in a.anchors.split(","))]
                   if a.anchors else SWEEP)
        return sweep(a.spec, a.seed, anchors)
    print(f"{'adapter':<60} {'spelling':>18} {'sign-off':>18} {'all':>18}")
    for adapter in a.adapters or [None]:
        r = in_context(adapter, a.n, a.seed)
        cell = lambda k: f"{r[k][0]:.3f} -> {r[k][1]:.3f}"   # noqa: E731
        print(f"{str(adapter)[-60:]:<60} {cell('spelling'):>18} {cell('sign-off'):>18} {cell('all'):>18}")


if __name__ == "__main__":
    main()
