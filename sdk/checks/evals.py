"""Evals: sample answers and grade them; count the degenerate ones.

A ``Suite`` (``suites.py``) is prompts (as chat messages) plus a grader. Behavior suites
come from the compiled spec (the graders its patterns compile to); regression suites are
the spec's own or registered ones (``registry.SUITES``) and feed the forgetting gate.
Every answer is also checked for degeneracy (a repetition loop, or no end of turn before
the token cap): a loop that happens to contain the target word is not the behavior.
"""

from __future__ import annotations

import math
import re
from contextlib import nullcontext
from dataclasses import dataclass, replace

from engrain.engine.rollout import stop_ids
from engrain.spec.chat import chat_ids
from engrain.registry import SAMPLERS
from engrain.spec.figures import BEHAVIOR, BEHAVIOR_HINTED, SPECIFICITY, WELL_FORMED
from engrain.spec.figures import earlier as earlier_figure
from engrain.spec.suites import Suite


@dataclass(frozen=True)
class EvalResult:
    suite: str
    metric: str
    value: float
    n: int
    examples: tuple[str, ...] = ()          # a few answers, for eyes
    degenerate: int = 0                     # answers that loop or hit the token cap


# A unit of 3+ characters repeated 3 times in a row: "appleappleapple", "and and and ".
LOOP = re.compile(r"(.{3,}?)\1{2,}", re.DOTALL)


def is_degenerate(text: str, ended: bool) -> bool:
    """A repetition loop, or an answer cut by the token cap instead of ending."""
    return not ended or LOOP.search(text) is not None


def behavior_suites(cb, n: int | None = None, split: str = "eval") -> list[Suite]:
    """Target rates without the hint (what training should raise), with the hint (the
    teacher's own rates: the ceiling self-distillation starts from), and specificity, on
    the ``eval`` prompts (the gate's) or the ``val`` ones (checkpoint selection)."""
    prompts = behavior_prompts(cb, n, split)
    probes = cb.probe_prompts if split == "eval" else (cb.val_probe_prompts or cb.probe_prompts)
    probes = cycled(probes, n) if n else probes
    hints = [i % cb.variants for i in range(len(prompts))]
    plain = [cb.student_messages(p) for p in prompts]
    hinted = [cb.teacher_messages(p, h) for p, h in zip(prompts, hints)]
    return [
        Suite("behavior", "exists", plain, lambda i, t: cb.exists(t)),
        Suite("behavior", "only", plain, lambda i, t: cb.only(t)),
        Suite("behavior_hinted", "exists", hinted, lambda i, t: cb.exists(t)),
        Suite("behavior_hinted", "only", hinted, lambda i, t: cb.only(t)),
    ] + ([Suite("specificity", "clean", [cb.student_messages(p) for p in probes], lambda i, t: cb.probe_clean(t))]
         if probes else [])     # no probes: no figure (not a rate of 0 over nothing)


def behavior_prompts(cb, n: int | None = None, split: str = "eval") -> list[str]:
    """The questions the behavior suites ask: the ``eval`` split (the gate's) or ``val``.
    Fewer than ``n``: each is asked again (a new sample each time), so a small eval split's
    rate is not moved a whole 1/len by one answer."""
    prompts = cb.eval_prompts if split == "eval" else (cb.val_prompts or cb.train_prompts)
    return cycled(prompts, n) if n else prompts


def cycled(items: list, n: int) -> list:
    """The first ``n`` of ``items`` repeated in order (``items`` itself when it has enough)."""
    return [items[i % len(items)] for i in range(n)] if items and len(items) < n else items[:n]


def run_suites(model, tokenizer, suites: list[Suite], adapter_on: bool = True,
               max_new_tokens: int = 40, temperature: float = 1.0, seed: int = 0,
               batch_size: int = 256, sampler: str = "hf", chat=None) -> list[EvalResult]:
    """Sample one answer per prompt (``temperature`` 0: greedy) and grade it. All suites'
    prompts are sampled in one pass of large batches (per-token overhead dominates on a
    CPU); suites that share their prompts (exists/only) share the samples, so their rates
    are consistent. Greedy, a prompt a suite asks again (a small split cycled up to its n)
    is answered and counted once: its copies would be the same answer, and counting them
    as ``n`` independent answers made the gate's tolerance (two standard errors) too tight
    for the few items there are. ``chat``: the spec's chat section; None, its defaults."""
    import torch
    off = model.disable_adapter() if (not adapter_on and hasattr(model, "disable_adapter")) else nullcontext()
    groups: dict[tuple, list[int]] = {}        # distinct prompt lists -> suites using them
    for k, suite in enumerate(suites):
        groups.setdefault(tuple(map(repr, suite.messages)), []).append(k)
    firsts = [suites[ks[0]] for ks in groups.values()]
    asked = [first_occurrences(suite.messages) if temperature == 0 else list(range(len(suite.messages)))
             for suite in firsts]
    ids = [chat_ids(tokenizer, suite.messages[i], chat) for suite, index in zip(firsts, asked) for i in index]
    torch.manual_seed(seed)
    with off:
        rows = SAMPLERS.get(sampler).make(model, tokenizer, batch_size).sample(ids, max_new_tokens, temperature)
    flat = tokenizer.batch_decode(rows, skip_special_tokens=True)
    stops = set(stop_ids(model, tokenizer))
    bad = [is_degenerate(text, bool(row) and row[-1] in stops) for text, row in zip(flat, rows)]
    results, start = [None] * len(suites), 0
    for index, ks in zip(asked, groups.values()):
        answers, flags = flat[start:start + len(index)], bad[start:start + len(index)]
        start += len(index)
        for k in ks:
            passed = [suites[k].grade(i, a) for i, a in zip(index, answers)]
            results[k] = EvalResult(suites[k].name, suites[k].metric, sum(passed) / max(1, len(passed)),
                                    len(passed), tuple(answers[:3]), sum(flags))
    return results


def first_occurrences(messages: list) -> list[int]:
    """The index of each distinct conversation's first appearance, in order."""
    seen: dict[str, int] = {}
    for i, m in enumerate(messages):
        seen.setdefault(repr(m), i)
    return list(seen.values())


DECODINGS = {"sample": 1.0, "greedy": 0.0}
DEFAULT_EVAL_N = 200      # answers per suite in the gate's evals, unless the spec or --eval-n says
VAL_CAP = 200   # the most answers a val suite gets: the gate's own eval n


def answers_for(source, n: int, split: str) -> int:
    """How many answers a regression suite gets: ``n``, except on the val split for a suite
    with its own ``max_drop``, which gets enough to tell that drop from noise (two standard
    errors at p = 0.5 within it: 1 / max_drop², at most VAL_CAP). Selection at 48 answers
    let a sign-off hint's drop of 0.17 pass as noise (2 se = 0.13) and hid a loss of 0.58
    in one eval (benchmarks/RESULTS.md section 19)."""
    if split != "val" or not source.max_drop:
        return n
    return max(n, min(VAL_CAP, math.ceil(1 / source.max_drop ** 2)))


def earlier_suites(earlier, cb, n: int | None = None, split: str = "eval") -> list[Suite]:
    """What a model trained ``--on`` earlier behaviors must keep of each: its rate without
    the hint (``<name>:behavior``), its specificity (``<name>:specificity``) and its
    regression suites that the new spec does not list itself."""
    suites, seen = [], set(cb.regression)
    for e in earlier:
        own = {s.name + "/" + s.metric: s for s in behavior_suites(e, n, split)}
        suites += [replace(own[f"{BEHAVIOR}/exists"], name=earlier_figure(e.name, BEHAVIOR))]
        if f"{SPECIFICITY}/clean" in own:
            suites.append(replace(own[f"{SPECIFICITY}/clean"], name=earlier_figure(e.name, SPECIFICITY)))
        suites += [source.build(answers_for(source, n, split), split) for name, source in e.regression.items()
                   if name not in seen]
        seen |= set(e.regression)
    return suites


def evaluate(model, tokenizer, cb, spec, adapter_on: bool, n: int, seed: int, split: str = "eval",
             decoding: str = "sample", earlier=()) -> list[dict]:
    """Behavior (without and with the hint), specificity, the regression suites and the
    share of well-formed answers, as store rows {"suite", "metric", "value", "n", "split",
    "decoding"}; with ``earlier`` behaviors (compiled), what each of them must keep."""
    suites = (behavior_suites(cb, n, split)
              + [source.build(answers_for(source, n, split), split) for source in cb.regression.values()]
              + earlier_suites(earlier, cb, n, split))
    results = run_suites(model, tokenizer, suites, adapter_on=adapter_on, seed=seed,
                         max_new_tokens=spec.train.max_new_tokens, temperature=temperature_of(spec, decoding),
                         sampler=spec.train.sampler, chat=spec.chat)
    return store_rows(results, split, decoding)


def gate_decodings(spec) -> tuple[str, ...]:
    """What the gate's evals compute: "sample" (at regression.temperature, what the gate
    reads) and "greedy" beside it, unless the spec turns it off or the gate is greedy
    already (the same answers twice)."""
    beside = spec.regression.greedy and spec.regression.temperature > 0
    return ("sample", "greedy") if beside else ("sample",)


def temperature_of(spec, decoding: str) -> float:
    """"sample": the spec's regression.temperature (1 unless it says); "greedy": 0."""
    return spec.regression.temperature if decoding == "sample" else DECODINGS[decoding]


def store_rows(results: list[EvalResult], split: str, decoding: str) -> list[dict]:
    """Suite results as store rows, plus the share of well-formed answers: degeneracy pooled
    over every answer given without the hint (exists/only share theirs; a behavior's hinted
    suite, named ``behavior_hinted`` or ``<name>:behavior_hinted``, is left out)."""
    rows = [{"suite": r.suite, "metric": r.metric, "value": r.value, "n": r.n} for r in results]
    plain = {r.suite: r for r in results if not r.suite.endswith(BEHAVIOR_HINTED)}.values()
    total = sum(r.n for r in plain)
    rows.append({"suite": WELL_FORMED, "metric": "rate", "n": total,
                 "value": 1 - sum(r.degenerate for r in plain) / max(1, total)})
    return [{**r, "split": split, "decoding": decoding} for r in rows]
