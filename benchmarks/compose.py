"""Two behaviors at once: adapters trained separately on the same base, applied together.

    python benchmarks/compose.py ADAPTER_A ADAPTER_B [--n 200] [--merges cat,ties_svd,...]

Each ADAPTER is a run id (looked up under ``--out-dir``) or an adapter folder. For the
base model, each adapter alone, and both combined by each of peft's ``add_weighted_adapter``
methods (``cat`` with weights 1, 1 is the plain sum W + ΔA + ΔB: what merging one into the
base and then the other gives; the ``*_svd`` ones trim or re-project the two deltas), the
lab scorecard (``cl lab eval``'s suites, temperature 1, eval-split questions) side by side.
What a user who serves two behaviors on one model gets: does each keep its rate, and do the
capabilities hold, when the other is on too?
"""

from __future__ import annotations

import argparse
from pathlib import Path


def adapter_folder(ref: str, out_dir: Path) -> Path:
    from engrain.rundir import find_run_dir
    path = Path(ref)
    if (path / "adapter_config.json").exists():
        return path
    return find_run_dir(out_dir, ref) / "adapter"


def scorecard(adapters: list[Path], n: int, seed: int, merge: str = "cat") -> dict[str, float]:
    from peft import PeftModel
    from engrain.checks.evals import run_suites
    from engrain.engine.models import load_plain
    from engrain.lab.suites import scorecard_suites
    model, tok = load_plain("lab")
    if adapters:
        model = PeftModel.from_pretrained(model, str(adapters[0]), adapter_name="a0")
        for k, folder in enumerate(adapters[1:], start=1):
            model.load_adapter(str(folder), adapter_name=f"a{k}")
        if len(adapters) > 1:
            names = [f"a{k}" for k in range(len(adapters))]
            density = {} if merge in ("cat", "svd") else {"density": 0.5}
            model.add_weighted_adapter(names, [1.0] * len(names), "both", combination_type=merge, **density)
            model.set_adapter("both")
    model.eval()
    return {f"{r.suite}/{r.metric}": r.value for r in run_suites(model, tok, scorecard_suites(n), seed=seed)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--out-dir", default="adapters", type=Path)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--merges", default="cat", help="comma-separated peft combination types")
    args = ap.parse_args()
    a, b = adapter_folder(args.a, args.out_dir), adapter_folder(args.b, args.out_dir)
    configs = {"base": ([], "cat"), "A": ([a], "cat"), "B": ([b], "cat"),
               **{f"A+B {m}": ([a, b], m) for m in args.merges.split(",")}}
    table = {name: scorecard(folders, args.n, args.seed, merge) for name, (folders, merge) in configs.items()}
    print(f"A = {a}\nB = {b}")
    width = max(9, *(len(name) + 2 for name in configs))
    print(f"{'figure':28s}" + "".join(f"{name:>{width}s}" for name in configs))
    for fig in table["base"]:
        print(f"{fig:28s}" + "".join(f"{table[name][fig]:{width}.3f}" for name in configs))


if __name__ == "__main__":
    main()
