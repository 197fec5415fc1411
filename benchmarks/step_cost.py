"""Seconds per training step, RMSD beside OPSD (and SFT), on the same work, in one run.

    python benchmarks/step_cost.py                        # the pinapple spec, 30 steps each
    python benchmarks/step_cost.py --steps 60 --methods rmsd,opsd
    python benchmarks/step_cost.py --methods rmsd --samplers hf,vllm   # where vLLM is installed
    python benchmarks/step_cost.py --methods rmsd --configs today,k2,k4,one_base_pass,anchor_every2

``--configs`` runs each method once per named setting of the step's cost options (CONFIGS:
train.steps_per_rollout, train.one_base_pass, anchor.every) and adds the mean seconds per
step beside the median: with rollout reuse only every k-th step generates, so the median
step hides what the mean shows.

Each method gets its own copy of the model and adapter, set up as ``cl fit`` sets it up
(``engine.context.build_context``, the spec's anchor); the methods then take turns, one step each, so
machine noise hits them alike. Every step's wall time is split into the step's stages
(``StepResult.stage_seconds``: rollout, score, mask, loss, update). It prints the median
per stage and per step, the response tokens per second, and each method's ratio to OPSD.
Answers grow or shrink as each adapter trains, so the tokens a step handles are printed
beside its time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from engrain.engine.anchor import build_anchor
from engrain.spec.behavior import load_behavior
from engrain.engine.context import build_context
from engrain.engine.models import load_model
from engrain.registry import METHODS
from engrain.engine.step import STAGES



CONFIGS = {     # name -> (train fields, anchor fields)
    "today": ({}, {}),
    "k2": ({"steps_per_rollout": 2}, {}),
    "k4": ({"steps_per_rollout": 4}, {}),
    "one_base_pass": ({"one_base_pass": True}, {}),
    "anchor_every2": ({}, {"every": 2}),
}


def make(spec_path: str, method: str, seed: int, sampler: str | None = None, model: str | None = None,
         config: str = "today"):
    overrides = {"method": method, "seed": seed, **({"sampler": sampler} if sampler else {}),
                 **({"model": model} if model else {})}
    behavior = load_behavior(spec_path).with_overrides(overrides)
    spec, (train, anchor) = behavior.spec, CONFIGS[config]
    spec = spec.model_copy(update={"train": spec.train.model_copy(update=train),
                                   "anchor": spec.anchor.model_copy(update=anchor) if spec.anchor else None})
    torch.manual_seed(seed)
    loaded = load_model(spec.model, lora=spec.train.lora, qlora=spec.train.qlora)
    cb = behavior.compile(loaded.tokenizer)
    run = build_context(spec, cb, loaded)
    run.anchor = build_anchor(loaded, run.sampler, cb, spec.anchor, spec.train.max_new_tokens, seed)
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="behaviors/pinapple.yaml")
    ap.add_argument("--methods", default="rmsd,opsd,sft")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--skip", type=int, default=3, help="First steps per method left out (warm-up).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samplers", default=None, help="Rollout backends to compare, e.g. hf,vllm (default: the spec's).")
    ap.add_argument("--configs", default="today", help=f"Cost options to compare, of {','.join(CONFIGS)}.")
    a = ap.parse_args()
    samplers = a.samplers.split(",") if a.samplers else [None]
    configs = a.configs.split(",")
    runs = {"/".join([m] + ([s] if s else []) + ([c] if len(configs) > 1 else [])): make(a.spec, m, a.seed, s, config=c)
            for m in a.methods.split(",") for s in samplers for c in configs}
    methods = list(runs)
    rows: dict[str, list[dict]] = {m: [] for m in methods}
    t0 = time.time()
    for step in range(a.steps):
        for m in methods:
            out = METHODS.get(runs[m].train.method).step(runs[m], step)
            if step >= a.skip:
                tokens = sum(len(r) for r in out.rollouts.response_ids)
                rows[m].append({"seconds": out.seconds, "tokens": tokens, **(out.stage_seconds or {})})
    print(f"{a.spec}: {a.steps} steps per method ({a.skip} warm-up left out), batch "
          f"{runs[methods[0]].train.batch_size}, torch threads {torch.get_num_threads()}, "
          f"{time.time() - t0:.0f} s in all\n")
    med = lambda rs, k: statistics.median(r[k] for r in rs) if rs and k in rs[0] else None  # noqa: E731
    ref_name = next((m for m in methods if m.startswith("opsd")), methods[0])
    width = max(10, max(len(m) for m in methods) + 2)
    head = (f"{'method':<{width}}" + "".join(f"{s:>9}" for s in STAGES)
            + f"{'step s':>9}{'mean s':>9}{'tokens':>8}{'tok/s':>8}{'vs ' + ref_name:>16}")
    print(head)
    print("-" * len(head))
    mean = lambda rs: statistics.fmean(r["seconds"] for r in rs)  # noqa: E731
    ref = mean(rows[ref_name])
    for m in methods:
        rs = rows[m]
        cells = "".join(f"{med(rs, s):9.3f}" if med(rs, s) is not None else f"{'-':>9}" for s in STAGES)
        sec, tok = med(rs, "seconds"), med(rs, "tokens")
        ratio = f"{mean(rs) / ref:16.2f}" if ref else f"{'-':>16}"
        print(f"{m:<{width}}{cells}{sec:9.3f}{mean(rs):9.3f}{tok:8.0f}{tok / sec:8.0f}{ratio}")
    print("\nmedians over steps (mean s: the mean, and the ratio is of means); stages: rollout (sampling), score (student, teacher and base passes), "
          "mask (pre-filter, judge, guard), loss (divergence + anchor), update (backward + AdamW)")


if __name__ == "__main__":
    main()
