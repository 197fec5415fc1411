"""Does `cl export --merged` answer as base + adapter does? Greedy answers of the merged
model (reloaded with plain transformers) and of the base with the PEFT adapter, on the
held-out eval prompts of the run's behavior (the split training never saw).

    python benchmarks/export_check.py RUN --store S.duckdb [--n 50] [--tokens 48]
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from engrain.engine.models import merge_adapters, load_tokenizer, resolve_model_path
from engrain.export import merged
from engrain.library import entry
from engrain.rundir import read_run, stored_behavior
from engrain.spec.chat import chat_ids
from engrain.store import Store


def greedy(model, tokenizer, prompts, tokens):
    out = []
    for p in prompts:
        ids = torch.tensor([chat_ids(tokenizer, [{"role": "user", "content": p}])])
        with torch.no_grad():
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        out.append(tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True))
    return out


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
    tokenizer = load_tokenizer(e.model)
    with tempfile.TemporaryDirectory() as tmp:
        merged(db, e.run_id, tmp, overwrite=True)
        plain = AutoModelForCausalLM.from_pretrained(tmp).eval()
        a = greedy(plain, tokenizer, prompts, args.tokens)
    base = merge_adapters(AutoModelForCausalLM.from_pretrained(resolve_model_path(e.model)), list(e.on))
    with_adapter = PeftModel.from_pretrained(base, str(e.path)).eval()
    b = greedy(with_adapter, tokenizer, prompts, args.tokens)
    with with_adapter.disable_adapter():
        c = greedy(with_adapter, tokenizer, prompts, args.tokens)
    same = sum(x == y for x, y in zip(a, b))
    print(f"merged == adapter: {same}/{len(prompts)}")
    print(f"adapter differs from the base on {sum(x != y for x, y in zip(b, c))}/{len(prompts)}")
    for x, y in list(zip(a, b))[:2]:
        print(f"  merged:  {x!r}\n  adapter: {y!r}")


if __name__ == "__main__":
    main()
