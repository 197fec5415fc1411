"""The continual protocol: behaviors learned one stage after another on one lineage, and what
the model keeps of each.

    python benchmarks/continual.py --seeds 0 --orders pinapple,signoff,tomatto signoff,pinapple,tomatto
    python benchmarks/continual.py --seeds 0,1,2 --orders pinapple+signoff,tomatto     # compose, then --on
    python benchmarks/continual.py --seeds 0 --orders pinapple+signoff+tomatto         # all three at once

An order is stages separated by commas; a stage is one behavior or, first, several joined by
"+" (learned at once: ``engrain.compose``, as ``cl compose``). Every later stage is ``cl fit
SPEC --on RUN`` on the previous stage's run (``engrain.fit(on=...)``: one adapter that carries
every behavior so far, each taught by what already carries it). The product's own functions
and the specs' settings; only the seed is changed. A stage the gate refuses ends its order
(``--on`` needs an accepted run).

Printed after each stage: its verdict and seconds, and the matrix R[stage][behavior]: each
behavior's rate without its hint (exists, temperature 1, its spec's eval questions) on that
stage's adapter; then per order the backward transfer (the mean, over the behaviors learned
before the last stage, of their rate at the end minus their rate when first learned), the
average rate at the end, the capability suites and the following of other hints
(``lab/in-context``), base -> end. Every figure is read from the fits' own eval rows.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def figures(rows: list[dict]) -> dict[str, float]:
    return {f"{r['suite']}/{r['metric']}": r["value"] for r in rows if r["decoding"] == "sample"}


def rate(result, name: str) -> float | None:
    """A behavior's rate without its hint on a stage's adapter: a lone fit names it
    ``behavior``, a composition or an ``--on`` fit ``NAME:behavior``."""
    f = figures(result.adapter)
    return f.get(f"{name}:behavior/exists", f.get("behavior/exists"))


def run_order(stages: list[list[str]], seed: int, work: Path, steps: int | None = None,
              eval_n: int | None = None) -> dict:
    from engrain import compose
    from engrain.fit import fit
    kw = dict(seed=seed, out_dir=work / "adapters", store=work / "s.duckdb", log=lambda *a: None, steps=steps,
              eval_n=eval_n)
    spec = lambda name: ROOT / "behaviors" / f"{name}.yaml"   # noqa: E731
    learned, matrix, first_rate, results = [], [], {}, []
    for k, stage in enumerate(stages):
        if k == 0 and len(stage) > 1:
            r = compose([spec(n) for n in stage], **kw)
        elif len(stage) > 1:
            raise SystemExit(f"stage {'+'.join(stage)}: only the first stage can compose several behaviors")
        else:
            r = fit(spec(stage[0]), on=[results[-1].run_id] if results else [], **kw)
        results.append(r)
        learned += stage
        row = {n: rate(r, n) for n in learned}
        matrix.append(row)
        for n in stage:
            first_rate.setdefault(n, row[n])
        print(f"seed {seed} stage {k + 1} ({'+'.join(stage)}): {r.outcome} in {r.seconds:.0f} s; "
              + "  ".join(f"{n} {v:.3f}" for n, v in row.items() if v is not None), flush=True)
        if r.outcome != "accepted":
            break
    end, start = figures(results[-1].adapter), figures(results[0].base)
    earlier = [n for n in learned if n not in stages[len(results) - 1]]
    out = {"order": ",".join("+".join(s) for s in stages), "seed": seed, "stages run": len(results),
           "verdicts": [r.outcome for r in results], "R": matrix,
           "average rate": sum(v for v in matrix[-1].values() if v is not None) / len(matrix[-1]),
           "capabilities": {k: (start.get(k), end[k]) for k in end if k.startswith("lab/")}}
    if earlier:
        out["backward transfer"] = sum(matrix[-1][n] - first_rate[n] for n in earlier) / len(earlier)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--orders", nargs="+", default=["pinapple,signoff,tomatto", "signoff,pinapple,tomatto"])
    ap.add_argument("--steps", type=int, help="steps per fit (default: the specs'; a smoke test)")
    ap.add_argument("--eval-n", type=int, help="answers per eval suite (default: the specs')")
    a = ap.parse_args()
    results = []
    for seed in map(int, a.seeds.split(",")):
        for order in a.orders:
            stages = [s.split("+") for s in order.split(",")]
            results.append(run_order(stages, seed, Path(tempfile.mkdtemp(prefix="engrain-continual-")), a.steps,
                                     a.eval_n))
    for r in results:
        print(f"\n{r['order']}, seed {r['seed']}: {' -> '.join(r['verdicts'])}")
        names = list(r["R"][-1])
        print("stage    " + "  ".join(f"{n:>9}" for n in names))
        for k, row in enumerate(r["R"], 1):
            print(f"{k:<8} " + "  ".join(f"{row[n]:9.3f}" if row.get(n) is not None else f"{'':>9}" for n in names))
        print(f"average rate {r['average rate']:.3f}"
              + (f"   backward transfer {r['backward transfer']:+.3f}" if "backward transfer" in r else ""))
        print("   ".join(f"{k} {b:.3f} -> {e:.3f}" for k, (b, e) in r["capabilities"].items() if b is not None))


if __name__ == "__main__":
    main()
