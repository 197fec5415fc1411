"""Does `cl export --merged` answer as base + adapter does? Greedy answers of the merged
model (reloaded with plain transformers) and of the base with the PEFT adapter, on the
held-out eval prompts of the run's behavior (the split training never saw).

    python benchmarks/export_check.py RUN --store S.duckdb [--n 50] [--tokens 48]
"""

from __future__ import annotations

import argparse
import tempfile

from transformers import AutoModelForCausalLM

from engrain.export import merged
from engrain.library import entry
from engrain.rundir import read_run, stored_behavior
from engrain.store import Store
from engrain.use import Loaded, generate, load


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--store", required=True)
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--tokens", type=int, default=48)
    args = ap.parse_args()
    db = Store(args.store, create=False)
    e = entry(db, args.run)
    behavior = stored_behavior(read_run(e.path.parent))
    prompts = behavior.prompt_splits().eval[:args.n]
    # base + lineage + adapter exactly as `cl generate` loads it; answers through the same path
    adapted = load(adapters=[e.path])
    answer = lambda loaded, **kw: generate(loaded, prompts, greedy=True, max_new_tokens=args.tokens, **kw)  # noqa: E731
    b, c = answer(adapted), answer(adapted, base=True)
    with tempfile.TemporaryDirectory() as tmp:
        merged(db, e.run_id, tmp, overwrite=True)
        plain = AutoModelForCausalLM.from_pretrained(tmp).eval()
        a = answer(Loaded(plain, adapted.tokenizer, tmp, ()))
    same = sum(x == y for x, y in zip(a, b))
    print(f"merged == adapter: {same}/{len(prompts)}")
    print(f"adapter differs from the base on {sum(x != y for x, y in zip(b, c))}/{len(prompts)}")
    for x, y in list(zip(a, b))[:2]:
        print(f"  merged:  {x!r}\n  adapter: {y!r}")


if __name__ == "__main__":
    main()
