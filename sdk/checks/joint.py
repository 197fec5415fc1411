"""Several behaviors in one adapter: their evals, checkpoint score and gate.

Each behavior's figures carry its name (``pinapple:behavior``, ``pinapple:behavior_hinted``,
``pinapple:specificity``); the regression suites are the union of the specs' (each at the
strictest limit any spec gives it). An adapter passes when every behavior reaches its own
learning bar and nothing gated dropped beyond its limit; one that carries some behaviors
but not all has *lost* the others, and the verdict names them (outcome "regressed").
"""

from __future__ import annotations

from dataclasses import replace

from engrain.checks.evals import (answers_for, behavior_prompts, behavior_suites, run_suites, store_rows,
                                  temperature_of)
from engrain.checks.gate import GateVerdict, gate, learning_rows, val_bar
from engrain.checks.selection import judge_candidate
from engrain.registry import SUITES
from engrain.spec.figures import BEHAVIOR, BEHAVIOR_HINTED, SPECIFICITY, WELL_FORMED
from engrain.spec.figures import earlier as named
from engrain.spec.suites import Suite

_SUITE_OF = {"behavior": BEHAVIOR, "behavior_hinted": BEHAVIOR_HINTED, "specificity": SPECIFICITY}
TOGETHER = "together"        # the share of answers that carry every behavior that applies to them


def together_suite(cbs, messages: list, questions: list[str]) -> Suite:
    """On the first behavior's questions: an answer carries every behavior whose domain (its
    prompts, any split) holds its question. Pinapple's tropical questions ask for the
    sign-off too; a savory behavior's (tomatto) never applies to them."""
    domains = [set(c.train_prompts) | set(c.val_prompts) | set(c.eval_prompts) for c in cbs]
    applies = [[c for c, d in zip(cbs, domains) if q in d] for q in questions]
    return Suite(TOGETHER, "all", messages, lambda i, t: all(c.exists(t) for c in applies[i]))


def joint_suites(cbs, n: int | None, split: str):
    suites, seen = [], set()
    for k, cb in enumerate(cbs):
        own = behavior_suites(cb, n, split)
        if k == 0:
            suites.append(together_suite(cbs, own[0].messages, behavior_prompts(cb, n, split)))
        suites += [replace(s, name=named(cb.name, _SUITE_OF[s.name])) for s in own]
        for name, source in cb.regression.items():
            if name not in seen:
                suites.append(source.build(answers_for(source, n, split), split))
                seen.add(name)
    return suites


def joint_evaluate(model, tokenizer, cbs, train, adapter_on: bool, n: int, seed: int, split: str = "eval",
                   decoding: str = "sample") -> list[dict]:
    """Every behavior's figures and the union of suites, as store rows (evals.evaluate's),
    sampled at the first spec's regression.temperature."""
    results = run_suites(model, tokenizer, joint_suites(cbs, n, split), adapter_on=adapter_on, seed=seed,
                         max_new_tokens=train.max_new_tokens, temperature=temperature_of(cbs[0].spec, decoding),
                         sampler=train.sampler, chat=cbs[0].spec.chat)
    return store_rows(results, split, decoding)


def carried_hints(specs) -> set[str]:
    """The regression suites that follow the hint of a behavior the adapter carries. A spec
    gates another behavior's hint so that the model can still learn it next; an adapter that
    carries it shows it without the hint, so there they are figures, not gates (measured on
    the lab: the composed adapter shows pinapple 0.9+ unhinted while its following of the
    pinapple hint falls to 0.56-0.69 on val, benchmarks/RESULTS.md section 22)."""
    names = {s.name for s in specs}
    return {suite for s in specs for suite in s.regression.names
            if suite in SUITES and SUITES.get(suite).hint_of in names}


def joint_max_drops(specs) -> dict[str, float]:
    """Each gated figure's limit: every behavior's specificity at its spec's max_drop, each
    regression suite at the strictest limit any spec gives it (but the carried behaviors'
    own hints: ``carried_hints``), well-formedness at the strictest max_drop."""
    drops = {WELL_FORMED: min(s.regression.max_drop for s in specs)}
    moot = carried_hints(specs)
    for s in specs:
        drops[named(s.name, SPECIFICITY)] = s.regression.max_drop
        for suite in s.regression.names:
            if suite not in moot:
                drops[suite] = min(drops.get(suite, 1.0), s.regression.max_drop_of(suite))
    return drops


def _rates(rows, suite):
    return {r["metric"]: r["value"] for r in rows if r["suite"] == suite and r.get("decoding", "sample") == "sample"}


def kept_rows(keep, start: list[dict]) -> list[dict]:
    """The figures a lineage must keep (``keep``: behaviors its adapter carried): each one's
    rate without the hint on the adapter training started from, as ``<name>:kept`` rows."""
    return [{**r, "suite": named(r["suite"].split(":")[0], "kept")} for r in start
            if r["suite"] in {named(k, BEHAVIOR) for k in keep} and r["metric"] == "exists"
            and r.get("decoding", "sample") == "sample"]


def joint_gated(specs, base: list[dict], adapter: list[dict], keep=(), start=(), earlier_max_drop=0.05) -> GateVerdict:
    """``keep``/``start``: a lineage's behaviors and the figures of the adapter training
    started from; each must stay within ``earlier_max_drop`` of its rate there."""
    drops = joint_max_drops(specs) | {named(k, "kept"): earlier_max_drop for k in keep}
    base = list(base) + kept_rows(keep, start)
    adapter = list(adapter) + kept_rows(keep, adapter)
    pick = lambda rows: {r["suite"]: r["value"] for r in rows if r["suite"] in drops   # noqa: E731
                         and r.get("decoding", "sample") == "sample"}
    learning = []
    for s in specs:
        rows = learning_rows(_rates(adapter, named(s.name, BEHAVIOR)), _rates(base, named(s.name, BEHAVIOR_HINTED)),
                             s.learned.min_share_of_hinted, s.learned.min_rate)
        learning += [replace(r, metric=f"{s.name}:{r.metric}") for r in rows]
    v = gate(pick(base), pick(adapter), min(s.regression.max_drop for s in specs), required=set(drops),
             learning=tuple(learning), max_drops=drops)
    failed = {r.metric.split(":")[0] for r in learning if not r.ok}
    dropped = {r.suite.split(":")[0] for r in v.rows if not r.ok and r.suite.endswith(":kept")}
    # Lost: a lineage's behavior below its bar or its start, or (composing afresh) a behavior
    # the adapter does not carry while it carries others. A lineage's new behavior that did
    # not show is "not learned", as a single fit's.
    lost = (failed & set(keep) if keep else failed if len(failed) < len(specs) else set()) | dropped
    return replace(v, lost=tuple(sorted(lost))) if lost else v


def bars(specs, base_val: list[dict]) -> dict[str, float]:
    """Each behavior's learning bar on the val questions, in selection's units."""
    return {s.name: val_bar(s, base_val, named(s.name, BEHAVIOR_HINTED)) for s in specs}


def behavior_score(rows: list[dict], name: str) -> float:
    rates = [v for m, v in _rates(rows, named(name, BEHAVIOR)).items() if m in ("exists", "only")]
    return sum(rates) / max(1, len(rates))


def joint_candidate(step: int, specs, base_val: list[dict], rows: list[dict], bar: dict[str, float],
                    keep=(), start_val=(), earlier_max_drop=0.05, greedy: bool = False):
    """Selection's view of a checkpoint: qualifies as judge_candidate says on the gated
    figures (a lineage's kept behaviors among them); its score is the *weakest* behavior's
    share of its own bar, so a checkpoint that carries every behavior beats one that carries
    one of them very well. In a lineage the score reads the behaviors being learned (the kept
    ones are held by the qualification), so a fit whose every learner lost a kept behavior
    says so rather than "not learned"."""
    drops = joint_max_drops(specs) | {named(k, "kept"): earlier_max_drop for k in keep}
    cand = judge_candidate(step, list(base_val) + kept_rows(keep, start_val), list(rows) + kept_rows(keep, rows),
                           set(drops), drops.__getitem__, greedy=greedy)
    learning = [s for s in specs if s.name not in keep] or specs
    score = min(behavior_score(rows, s.name) / max(bar[s.name], 1e-6) for s in learning)
    n = min((r["n"] for r in rows if r["suite"].endswith(f":{BEHAVIOR}")), default=1)
    return replace(cand, score=score, n=n)
