"""Seconds per rollout batch, each registered sampler side by side (``train.sampler``).

    python benchmarks/samplers.py                          # hf and vllm, 16 prompts x 48 tokens
    python benchmarks/samplers.py --samplers hf --batch 64 --tokens 128

The lab model with a trained-looking adapter (LoRA B perturbed before every batch, as an
optimizer step would: a backend that serves the adapter elsewhere must resync it each time,
and that cost is counted). Prompts are the lab's ``lab/tropical`` questions in the chat
template, sampled at temperature 1 with pure ancestral sampling; the samplers take turns,
one batch each, so machine noise hits them alike. Building a backend (vLLM's engine: tens of
seconds) and the first batches are left out; "of it sync" is the part of a batch spent handing
the changed adapter to the backend. The response tokens per batch are printed beside the
times, since a faster backend is only faster on the same work.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from engrain.spec.chat import chat_ids
from engrain.engine.models import load_model
from engrain.registry import PROMPT_SETS, SAMPLERS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samplers", default="hf,vllm")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--skip", type=int, default=2, help="First batches per sampler left out (warm-up).")
    ap.add_argument("--temperature", type=float, default=1.0)
    a = ap.parse_args()

    loaded = load_model("lab", device="cpu")
    tok = loaded.tokenizer
    questions = PROMPT_SETS.get("lab/tropical")(a.batch, "train")
    ids = [chat_ids(tok, [{"role": "user", "content": q}]) for q in questions][:a.batch]
    names = a.samplers.split(",")
    built = {}
    for name in names:
        t = time.perf_counter()
        built[name] = SAMPLERS.get(name).make(loaded.model, tok, a.batch)
        print(f"{name}: built in {time.perf_counter() - t:.1f} s", flush=True)

    lora_b = [p for n, p in loaded.model.named_parameters() if "lora_B" in n]
    times = {n: [] for n in names}
    syncs = {n: [] for n in names}
    tokens = {n: [] for n in names}
    for b in range(a.batches + a.skip):
        with torch.no_grad():               # "an optimizer step": the adapter changes
            for p in lora_b:
                p.add_(torch.randn_like(p) * 0.01)
        for name in names:
            torch.manual_seed(b)
            t = time.perf_counter()
            if hasattr(built[name], "lora_request"):    # the adapter resync, timed on its own
                built[name].lora_request()
            synced = time.perf_counter()
            out = built[name].sample(ids, a.tokens, a.temperature)
            if b >= a.skip:
                times[name].append(time.perf_counter() - t)
                syncs[name].append(synced - t)
                tokens[name].append(sum(map(len, out)))

    print(f"\n{len(ids)} prompts x up to {a.tokens} new tokens, T={a.temperature}, "
          f"median of {a.batches} batches ({torch.get_num_threads()} torch threads)")
    print(f"{'sampler':8} {'s/batch':>8} {'of it sync':>10} {'tokens/batch':>13} {'tokens/s':>9}")
    for name in names:
        s, n = statistics.median(times[name]), statistics.median(tokens[name])
        print(f"{name:8} {s:8.3f} {statistics.median(syncs[name]):10.3f} {n:13.0f} {n / s:9.0f}")


if __name__ == "__main__":      # vLLM's engine process needs the guard
    main()
