"""The lab's scorecard: each held-out behavior without and with its hint, specificity,
and the capability suites. ``cl lab eval`` prints it; the lab issue's figures come from it."""

from __future__ import annotations

import re

from ..behavior import compile_pattern
from ..evals import Suite, capability_suite
from . import world
from .prompt_sets import builtin_prompts

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
}


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
    return held_out_suites(n) + [capability_suite(s, n) for s in
                                 ("lab/arithmetic", "lab/capitals", "lab/facts", "lab/hints")]

