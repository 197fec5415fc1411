"""Capability retention without sampling noise: the probability of the reference answer.

    python benchmarks/retention.py ADAPTER [ADAPTER ...]          # the lab model + each adapter
    python benchmarks/retention.py --glob '/tmp/engrain-table-*/adapters/*/*/adapter*'

For every distinct eval-split question of the lab's capitals and arithmetic suites, the
probability the model gives the reference answer ("The capital of Peru is Lima."), token
by token, teacher-forced; printed as the mean over questions and the worst question. A
gate at temperature 1 on 200 samples moves by 0.01-0.02 with the sampling seed, which is
the size of the regressions that matter on the lab; this figure is deterministic, so two
adapters (or an adapter and the base) compare without noise. With ``--diff`` it also
prints the answer tokens that lost the most log-probability, with what the adapter
prefers there instead: where a regression comes from.
"""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

import torch

from engrain.spec.chat import chat_ids
from engrain.lab.prompt_sets import capability_examples
from engrain.engine.models import load_plain

SUITES = ("lab/capitals", "lab/arithmetic")


def distinct_examples(suite: str) -> list:
    """One example per distinct eval-split question of the suite."""
    return list({e.question: e for e in capability_examples(suite, 400, "eval")}.values())


def answer_logprobs(model, tok, example) -> tuple[list[int], torch.Tensor]:
    """The reference answer's ids and the model's log-probabilities over the vocabulary
    at each of its positions (teacher-forced)."""
    prompt = chat_ids(tok, example.messages())
    answer = tok(example.answer + tok.eos_token, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([prompt + answer])).logits[0, len(prompt) - 1:-1]
    return answer, torch.log_softmax(logits.float(), -1)


def retention(model, tok, suite: str) -> tuple[float, float]:
    """(mean, min) over the suite's distinct eval questions of P(reference answer)."""
    probs = []
    for e in distinct_examples(suite):
        answer, logp = answer_logprobs(model, tok, e)
        probs.append(logp.gather(-1, torch.tensor(answer)[:, None]).sum().exp().item())
    return sum(probs) / len(probs), min(probs)


def losses(base, model, tok, suite: str, top: int = 8) -> list[str]:
    """The answer tokens whose log-probability dropped most from base to model."""
    rows = []
    for e in distinct_examples(suite):
        answer, lb = answer_logprobs(base, tok, e)
        _, la = answer_logprobs(model, tok, e)
        for t, tid in enumerate(answer):
            drop = float(la[t, tid] - lb[t, tid])
            prefers = [tok.decode([int(i)]) for i in la[t].topk(2).indices]
            rows.append((drop, f"{drop:+.2f}  {tok.decode(answer[:t])!r} -> {tok.decode([tid])!r}, "
                               f"adapter prefers {prefers}"))
    return [text for _, text in sorted(rows)[:top]]


def label(adapter: Path) -> str:
    run = adapter.parent / "run.json"
    if run.exists():
        saved = json.loads(run.read_text())
        return f"{Path(saved['spec_path']).stem} {saved.get('overrides', {})} {adapter.parent.name[:8]}"
    return str(adapter)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("adapters", nargs="*", type=Path)
    ap.add_argument("--glob", help="Adapter folders matching this pattern, too.")
    ap.add_argument("--model", default="lab")
    ap.add_argument("--diff", action="store_true", help="Show the answer tokens that lost the most.")
    a = ap.parse_args()
    adapters = list(a.adapters) + [Path(p) for p in sorted(glob.glob(a.glob or ""))]
    base, tok = load_plain(a.model)
    figures = lambda m: "  ".join(f"{s}: P {mean:.4f} (worst {low:.3f})"  # noqa: E731
                                  for s in SUITES for mean, low in [retention(m, tok, s)])
    print(f"{'base model':60s} {figures(base)}", flush=True)
    for adapter in adapters:
        model, _ = load_plain(a.model, adapter)
        print(f"{label(adapter):60s} {figures(model)}", flush=True)
        if a.diff:
            for line in losses(base, model, tok, "lab/capitals"):
                print("    " + line)


if __name__ == "__main__":
    main()
