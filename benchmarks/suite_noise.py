"""Does a regression suite measure what the base model knows, or where it guesses?

    python benchmarks/suite_noise.py behaviors/smollm-french.yaml --adapter DIR
    python benchmarks/suite_noise.py SPEC --adapter DIR --samples 8 --temperature 0.7 --perturbations 3

For each regression suite of the spec, on its eval split (each item once, as the spec's
greedy gate asks it): the base model's greedy answer, graded, and ``--samples`` answers at
``--temperature``, graded. An item the base gets right greedily is *robust* when it is also
right in at least 3 of 4 samples, *fragile* otherwise: the greedy answer was right by a
narrow margin. Then the greedy answers to those items from the base, from the adapter, and
from ``--perturbations`` random changes of the adapter's own size (each LoRA B replaced by
Gaussian noise of the same norm, A kept). A suite that a random change of that size moves as
much as training did cannot tell forgetting from noise: its drop is not evidence of either.
"""

from __future__ import annotations

import argparse
import json

import torch

from engrain.engine.models import STUDENT, load_model
from engrain.engine.rollout import HFSampler
from engrain.engine.update import lora_delta_norm_sq
from engrain.spec.behavior import load_behavior
from engrain.spec.chat import chat_ids


def items(source) -> tuple[list[list[dict]], callable]:
    """A suite's eval split, each prompt once, and its grader."""
    suite = source.build(10_000, "eval")
    first = {}
    for i, m in enumerate(suite.messages):
        first.setdefault(json.dumps(m), i)
    index = list(first.values())
    return [suite.messages[i] for i in index], lambda j, text: suite.grade(index[j], text)


def answers(model, tok, messages, tokens: int, temperature: float, repeat: int = 1) -> list[str]:
    ids = [chat_ids(tok, m) for m in messages for _ in range(repeat)]
    out = HFSampler(model, tok).sample(ids, tokens, temperature)
    return tok.batch_decode(out, skip_special_tokens=True)


def delta_norm(layers) -> float:
    return float(sum(lora_delta_norm_sq(m.lora_A[STUDENT].weight, m.lora_B[STUDENT].weight,
                                        m.scaling[STUDENT]) for m in layers)) ** 0.5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spec")
    ap.add_argument("--adapter", required=True, help="An adapter folder trained on the spec's model.")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--perturbations", type=int, default=3)
    a = ap.parse_args()
    torch.manual_seed(0)
    behavior = load_behavior(a.spec)
    loaded = load_model(behavior.spec.model, adapter=a.adapter)
    model, tok = loaded.model.eval(), loaded.tokenizer
    cb = behavior.compile(tok)
    tokens = behavior.spec.train.max_new_tokens
    suites = {}
    with model.disable_adapter():
        for name, source in cb.regression.items():
            messages, grade = items(source)
            greedy = [grade(j, t) for j, t in enumerate(answers(model, tok, messages, tokens, 0.0))]
            sampled = answers(model, tok, messages, tokens, a.temperature, a.samples)
            k = [sum(grade(j, t) for t in sampled[j * a.samples:(j + 1) * a.samples]) for j in range(len(messages))]
            keep = [j for j in range(len(messages)) if greedy[j]]
            robust = [j for j in keep if k[j] >= 0.75 * a.samples]
            suites[name] = (messages, grade, robust, [j for j in keep if j not in robust])
            hist = {n: sum(1 for j in keep if k[j] == n) for n in range(a.samples + 1)}
            print(f"{name}: {len(keep)} of {len(messages)} right greedily; of those, right in n of {a.samples} "
                  f"samples at T={a.temperature}: {hist}", flush=True)

    def row(label: str) -> None:
        cells = []
        for name, (messages, grade, robust, fragile) in suites.items():
            got = answers(model, tok, messages, tokens, 0.0)
            right = lambda js: sum(grade(j, got[j]) for j in js)  # noqa: E731
            cells.append(f"{name} robust {right(robust)}/{len(robust)} fragile {right(fragile)}/{len(fragile)}")
        print(f"{label:<34} " + " | ".join(cells), flush=True)

    layers = [m for m in model.modules() if hasattr(m, "lora_A") and STUDENT in m.lora_A]
    if not layers:
        raise SystemExit(f"{a.adapter}: no LoRA layers named {STUDENT!r} were loaded")
    with model.disable_adapter():
        row("base")
    row(f"adapter (|dW| {delta_norm(layers):.2f})")
    trained = [m.lora_B[STUDENT].weight.detach().clone() for m in layers]
    g = torch.Generator().manual_seed(0)
    for p in range(a.perturbations):
        with torch.no_grad():
            for m, b in zip(layers, trained):
                noise = torch.randn(b.shape, generator=g)
                m.lora_B[STUDENT].weight.copy_(noise * b.norm() / noise.norm())
        row(f"random change {p} (|dW| {delta_norm(layers):.2f})")


if __name__ == "__main__":
    main()
