"""The scorecard's reading lines: what the lab model does with what is in its context.

- ``hints/held-out-wordings``: one hint in a wording frame pretraining never saw (fresh
  targets), and each held-out behavior's hint in such a frame;
- ``compound``: two or three hints at once (fresh targets), and the held-out behaviors'
  own hints together, in their specs' wordings (the teacher several behaviors need);
- ``passage`` / ``passage/absent``: a question about invented facts with and without the
  passage (rate of answers that give the fact);
- ``correction``: a user turn corrects the first answer; ``unrelated-turn``: a new
  question after an answer is answered as if alone.
Every line asks the eval split's questions; none of its prompts is in pretraining.
"""

from __future__ import annotations

import random
import zlib

from engrain.lab import compound, passages, turns, world
from engrain.spec.suites import Suite

# A held-out behavior's targets, as compound.instructed takes them.
HELD_OUT_TARGETS = {"pinapple": {"w": world.HELD_OUT_SPELLING[0], "v": world.HELD_OUT_SPELLING[1]},
                    "signoff": {"s": world.HELD_OUT_SIGNOFF}, "opener": {"o": world.HELD_OUT_OPENER}}
KIND_OF = {"pinapple": "spell", "signoff": "signoff", "opener": "opener"}
# Three behaviors' answers run longer than the scorecard's 40 tokens.
MAX_NEW_TOKENS = 72


def _rng(name: str) -> random.Random:
    return random.Random(2002 + zlib.crc32(name.encode()) % 1000)


def _suite(name: str, metric: str, examples: list[world.Example], grade) -> Suite:
    return Suite(name, metric, [e.messages() for e in examples], lambda i, t: grade(examples[i], t))


def _honors(e, t):
    return compound.honors(e.meta, t)


def _targets(*names: str) -> dict:
    return {k: v for n in names for k, v in HELD_OUT_TARGETS[n].items()}


def held_out_wordings(n: int) -> list[Suite]:
    rng = _rng("held-out-wordings")
    fresh = [compound.instructed(rng, (rng.choice(compound.KINDS),), "eval", held_out_wording=True)
             for _ in range(n)]
    suites = [_suite("hints/held-out-wordings", "follows", fresh, _honors)]
    for name, kind in KIND_OF.items():
        r = _rng(f"held-out-wordings/{name}")
        ex = [compound.instructed(r, (kind,), "eval", pretraining=False, targets=HELD_OUT_TARGETS[name],
                                  held_out_wording=True) for _ in range(n)]
        suites.append(_suite(f"{name}+held-out-wording", "follows", ex, _honors))
    return suites


def compound_suites(n: int) -> list[Suite]:
    rng = _rng("compound")
    fresh = [compound.instructed(rng, tuple(rng.sample(compound.KINDS, rng.choice((2, 3)))), "eval")
             for _ in range(n)]
    suites = [_suite("compound", "all-followed", fresh, _honors)]
    for names in (("pinapple", "signoff"), ("pinapple", "signoff", "opener")):
        r = _rng("+".join(names))
        # The specs' own phrasings (the template wordings), user_suffix as the specs place them.
        ex = [compound.instructed(r, tuple(KIND_OF[x] for x in names), "eval", pretraining=False,
                                  targets=_targets(*names), generated=0.0, placements=["user_suffix"])
              for _ in range(n)]
        suites.append(_suite("+".join(names) + "+hints", "all-followed", ex, _honors))
    return suites


def passage_suites(n: int) -> list[Suite]:
    rng = _rng("passage")
    ex = [passages.passage(rng, "eval") for _ in range(n)]
    absent = [world.Example("no_passage", e.question, passages.DONT_KNOW, meta=e.meta, chat=e.plain)
              for e in ex]
    gives = lambda e, t: e.meta["x"] in t
    return [_suite("passage", "answers", ex, gives), _suite("passage/absent", "answers", absent, gives),
            _suite("passage/absent", "dont-know", absent, lambda e, t: passages.DONT_KNOW in t)]


def _corrected(e: world.Example, t: str) -> bool:
    t, m = t.strip(), e.meta
    if m["kind"] == "one_word":
        return t == m["word"]
    if m["kind"] == "spell":
        return m["v"] in t and m["w"] not in t
    return compound.honors(m, t)


ANSWERED = {"fact": lambda e, t: t.strip() == e.answer,
            "arithmetic": lambda e, t: f"= {e.meta['sum']}." in t,
            "capital": lambda e, t: e.meta["capital"] in t,
            "food": lambda e, t: len(t.split(",")) >= 2 and " and " in t,
            "thanks": lambda e, t: t.strip() == turns.WELCOME}


def turn_suites(n: int) -> list[Suite]:
    rng = _rng("correction")
    fixes = [turns.correction(rng, "eval") for _ in range(n)]
    r = _rng("unrelated-turn")
    after = [turns.unrelated(r, "eval") for _ in range(n)]
    return [_suite("correction", "follows", fixes, _corrected),
            _suite("unrelated-turn", "answered", after, lambda e, t: ANSWERED[e.meta["family"]](e, t))]


def reading_suites(n: int = 200) -> list[Suite]:
    return held_out_wordings(n) + compound_suites(n) + passage_suites(n) + turn_suites(n)
