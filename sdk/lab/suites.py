"""The lab's suites: the capability suites specs use as regression checks (``lab/*``,
registered in ``parts.py``), and the scorecard: each held-out behavior without and with its
hint, specificity, and the capability suites. ``cl lab eval`` prints the scorecard."""

from __future__ import annotations

import re

from engrain.spec.behavior import compile_pattern
from engrain.spec.suites import Suite, SuiteSource
from engrain.lab import world
from engrain.lab.prompt_sets import builtin_prompts, capability_examples

CAPABILITY_METRICS = {"lab/arithmetic": "accuracy", "lab/capitals": "accuracy", "lab/facts": "accuracy",
                      "lab/hints": "follows", "lab/in-context": "follows"}
# In-context learning is what the next behavior's teacher needs: a tenth of the base model's
# rate (~0.7) may go (and sampling noise), not the 0.02 that capabilities at ~1.0 get.
IN_CONTEXT_MAX_DROP = 0.1
CAPABILITY_GRADERS = {
    "lab/arithmetic": lambda e, t: f"= {e.meta['sum']}." in t,
    "lab/capitals": lambda e, t: e.meta["capital"] in t,
    "lab/facts": lambda e, t: t.strip() == e.answer,
    "lab/hints": lambda e, t: e.meta["v"] in t,
    "lab/in-context": lambda e, t: (e.meta["v"] in t if "v" in e.meta else t.rstrip().endswith(e.meta["signoff"])),
}


def capability_suite(name: str, n: int = 200, split: str = "eval") -> Suite:
    """A lab capability suite (regression checks), on the questions of ``split``."""
    examples = capability_examples(name, n, split)
    check = CAPABILITY_GRADERS[name]
    return Suite(name, CAPABILITY_METRICS[name], [e.messages() for e in examples],
                 lambda i, text: check(examples[i], text))


def regression_prompts(name: str) -> list[str]:
    """The distinct questions a capability suite scores (its val and eval splits)."""
    return sorted({e.question for split in ("val", "eval") for e in capability_examples(name, 400, split)})


def capability_source(name: str) -> SuiteSource:
    return SuiteSource(CAPABILITY_METRICS[name], lambda n, split: capability_suite(name, n, split),
                       lambda: regression_prompts(name),
                       IN_CONTEXT_MAX_DROP if name == "lab/in-context" else None)


# Whole words, as the specs' graders: "pinappleappleapple" is a loop, not the behavior.
_PINAPPLE = compile_pattern("pinapple", re.IGNORECASE)
_PINEAPPLE = compile_pattern("pineapple", re.IGNORECASE)

HELD_OUT = {
    # name: (prompt set, hint phrasings, grader of "the behavior shows")
    "pinapple": ("lab/tropical",
                 [h.format(w=world.HELD_OUT_SPELLING[0], v=world.HELD_OUT_SPELLING[1])
                  for h in world.SPELLING_HINTS],
                 lambda t: _PINAPPLE.search(t) is not None),
    "signoff": ("lab/food",
                [h.format(s=world.HELD_OUT_SIGNOFF) for h in world.SIGNOFF_HINTS],
                lambda t: t.rstrip().endswith(world.HELD_OUT_SIGNOFF)),
    "opener": ("lab/food",
               [h.format(o=world.HELD_OUT_OPENER) for h in world.OPENER_HINTS],
               lambda t: t.lstrip().startswith(world.HELD_OUT_OPENER)),
}


def hint_suite(behavior: str, n: int = 200, split: str = "eval") -> Suite:
    """``lab/hint-<behavior>``: a held-out behavior's own hinted prompts, graded by whether
    the answer shows it. Gated by the *other* behavior's spec: after learning pinapple the
    model must still learn sign-off from its hint, and the reverse."""
    prompt_set, hints, shows = HELD_OUT[behavior]
    prompts = builtin_prompts(prompt_set, n, split=split)
    return Suite(f"lab/hint-{behavior}", "follows",
                 [world.place_hint(p, hints[i % len(hints)], "user_suffix") for i, p in enumerate(prompts)],
                 lambda i, t: shows(t))


def hint_source(behavior: str) -> SuiteSource:
    prompt_set = HELD_OUT[behavior][0]
    return SuiteSource("follows", lambda n, split: hint_suite(behavior, n, split),
                       lambda: sorted({p for s in ("val", "eval") for p in builtin_prompts(prompt_set, 400, s)}),
                       IN_CONTEXT_MAX_DROP, hint_of=behavior)


def pinapple_only(text: str) -> bool:
    return _PINAPPLE.search(text) is not None and _PINEAPPLE.search(text) is None


def held_out_suites(n: int = 200) -> list[Suite]:
    suites = []
    for name, (prompt_set, hints, shows) in HELD_OUT.items():
        prompts = builtin_prompts(prompt_set, n, split="eval")
        plain = [world.place_hint(p, None, "user_suffix") for p in prompts]
        hinted = [world.place_hint(p, hints[i % len(hints)], "user_suffix") for i, p in enumerate(prompts)]
        suites.append(Suite(name, "exists", plain, lambda i, t, f=shows: f(t)))
        suites.append(Suite(f"{name}+hint", "exists", hinted, lambda i, t, f=shows: f(t)))
        if name == "pinapple":
            suites.append(Suite("pinapple", "only", plain, lambda i, t: pinapple_only(t)))
            suites.append(Suite("pinapple+hint", "only", hinted, lambda i, t: pinapple_only(t)))
    probes = builtin_prompts("lab/facts", n, split="eval")
    anything = lambda t: not any(f(t) for _, _, f in HELD_OUT.values()) and not _PINEAPPLE.search(t)
    suites.append(Suite("specificity", "clean", [world.place_hint(p, None, "user_suffix") for p in probes],
                        lambda i, t: anything(t)))
    return suites


def scorecard_suites(n: int = 200) -> list[Suite]:
    return held_out_suites(n) + [capability_suite(s, n) for s in CAPABILITY_METRICS]

