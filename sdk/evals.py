"""Evals: sample answers at temperature 1 and grade them.

A ``Suite`` is prompts (as chat messages) plus a grader. Behavior suites come from the
compiled spec (the graders its patterns compile to); capability suites come from the lab
world (arithmetic, capitals, facts, in-distribution hints) and feed the forgetting gate.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

from .behavior import chat_ids
from .lab import world
from .lab.prompt_sets import SPLIT_SEEDS
from .rollout import HFSampler


@dataclass(frozen=True)
class Suite:
    name: str                               # e.g. "behavior", "specificity", "lab/arithmetic"
    metric: str                             # e.g. "exists", "accuracy"
    messages: list[list[dict]]
    grade: Callable[[int, str], bool]       # (index, answer text) -> pass


@dataclass(frozen=True)
class EvalResult:
    suite: str
    metric: str
    value: float
    n: int
    examples: tuple[str, ...] = ()          # a few answers, for eyes


def _lab_suite(name: str, maker, metric: str, check, n: int) -> Suite:
    rng = random.Random(SPLIT_SEEDS["eval"] + zlib.crc32(name.encode()) % 1000)
    examples = [maker(rng) for _ in range(n)]
    return Suite(name, metric, [e.messages() for e in examples],
                 lambda i, text: check(examples[i], text))


def capability_suite(name: str, n: int = 200) -> Suite:
    """The lab's capability suites, used by regression checks."""
    if name == "lab/arithmetic":
        return _lab_suite(name, world.arithmetic, "accuracy",
                          lambda e, t: f"= {e.meta['sum']}." in t, n)
    if name == "lab/capitals":
        return _lab_suite(name, world.capital, "accuracy", lambda e, t: e.meta["capital"] in t, n)
    if name == "lab/facts":
        return _lab_suite(name, world.fact, "accuracy", lambda e, t: t.strip() == e.answer, n)
    if name == "lab/hints":
        # In-distribution hints: pairs drawn the way pretraining drew them.
        return _lab_suite(name, world.hinted_food, "follows", lambda e, t: e.meta["v"] in t, n)
    raise KeyError(f"unknown suite {name!r}")


def behavior_suites(cb, n: int | None = None) -> list[Suite]:
    """Target rate without the hint (what training should raise), with the hint (the
    teacher's own rate: the ceiling self-distillation starts from), and specificity."""
    prompts = cb.eval_prompts[:n] if n else cb.eval_prompts
    probes = cb.probe_prompts[:n] if n else cb.probe_prompts
    hints = [i % len(cb.hints) for i in range(len(prompts))]
    return [
        Suite("behavior", "exists", [cb.student_messages(p) for p in prompts],
              lambda i, t: cb.exists(t)),
        Suite("behavior", "only", [cb.student_messages(p) for p in prompts],
              lambda i, t: cb.only(t)),
        Suite("behavior_hinted", "exists", [cb.teacher_messages(p, h) for p, h in zip(prompts, hints)],
              lambda i, t: cb.exists(t)),
        Suite("specificity", "clean", [cb.student_messages(p) for p in probes],
              lambda i, t: cb.probe_clean(t)),
    ]


def run_suites(model, tokenizer, suites: list[Suite], adapter_on: bool = True,
               max_new_tokens: int = 40, temperature: float = 1.0, seed: int = 0,
               batch_size: int = 256) -> list[EvalResult]:
    """Sample one answer per prompt and grade it. All suites' prompts are sampled in one
    pass of large batches (per-token overhead dominates on a CPU); suites that share
    their prompts (exists/only) share the samples, so their rates are consistent."""
    import torch
    off = model.disable_adapter() if (not adapter_on and hasattr(model, "disable_adapter")) else nullcontext()
    groups: dict[tuple, list[int]] = {}        # distinct prompt lists -> suites using them
    for k, suite in enumerate(suites):
        groups.setdefault(tuple(map(repr, suite.messages)), []).append(k)
    firsts = [suites[ks[0]] for ks in groups.values()]
    ids = [chat_ids(tokenizer, m) for suite in firsts for m in suite.messages]
    torch.manual_seed(seed)
    with off:
        flat = tokenizer.batch_decode(HFSampler(model, tokenizer, batch_size).sample(
            ids, max_new_tokens, temperature), skip_special_tokens=True)
    answers: dict[int, list[str]] = {}
    start = 0
    for suite, ks in zip(firsts, groups.values()):
        for k in ks:
            answers[k] = flat[start:start + len(suite.messages)]
        start += len(suite.messages)
    results = []
    for k, suite in enumerate(suites):
        passed = [suite.grade(i, a) for i, a in enumerate(answers[k])]
        results.append(EvalResult(suite.name, suite.metric, sum(passed) / max(1, len(passed)),
                                  len(passed), tuple(answers[k][:3])))
    return results
