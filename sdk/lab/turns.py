"""Corrections in a later turn: a first answer, then a user turn that corrects it, and the
next answer follows the correction; after an unrelated next turn nothing carries over.

Learning from users' conversations reads the next turn as hindsight; this family is what
lets the lab model read it. Corrections never use a held-out behavior's target.
"""

from __future__ import annotations

import random

from engrain.lab import compound, world

ONE_WORD = ["Answer in one word.", "Just one word, please.", "Too long: one word only.",
            "Please reply with a single word.", "One word is enough."]
THANKS = ["Thanks!", "Thank you.", "Great, thanks.", "Perfect, thank you!"]
WELCOME = "You are welcome."
KINDS = ("spell", "signoff", "opener", "one_word")


def _first(rng: random.Random, split: str | None) -> tuple[str, list[str], str, list[str]]:
    q, pool = world.food_question(rng, split)
    items = rng.sample(pool, 3)
    return q, pool, world.food_answer(items, rng), items


def correction(rng: random.Random, split: str | None = None, kind: str | None = None,
               pretraining: bool = True, held_out_wording: bool = False,
               targets: dict | None = None) -> world.Example:
    """[question, first answer, a correction] -> the first answer, corrected."""
    kind = kind or rng.choice(KINDS)
    q, pool, a1, items = _first(rng, split)
    if kind == "one_word":
        fix, a2, meta = rng.choice(ONE_WORD), f"{items[0].capitalize()}.", {"word": items[0].capitalize()}
    else:
        t = dict(targets or {})
        if kind == "spell":
            w = t.get("w") or rng.choice(items)
            if w not in items:   # a fixed target: make the first answer name the word it respells
                items[rng.randrange(3)] = w
                a1 = world.food_answer(items, rng)
            while "v" not in t:
                v = world.pseudo_word(rng) if rng.random() < 0.5 else world.misspell(w, rng)
                if v != w and not (pretraining and (w, v) == world.HELD_OUT_SPELLING):
                    t["v"] = v
            t["w"] = w
            fix = compound.wording("spell", rng, 0.6, held_out_wording, v=t["v"], w=w)
            a2 = a1.replace(w, t["v"])
        elif kind == "signoff":
            t.setdefault("s", world.signoff(rng, pretraining))
            fix = compound.wording("signoff", rng, 0.6, held_out_wording, s=t["s"])
            a2 = f"{a1} {t['s']}"
        else:
            t.setdefault("o", world.opener(rng, pretraining))
            fix = compound.wording("opener", rng, 0.6, held_out_wording, o=t["o"])
            a2 = f"{t['o']} {a1}"
        meta = t
    chat = ({"role": "user", "content": q}, {"role": "assistant", "content": a1},
            {"role": "user", "content": fix})
    return world.Example("correction", q, a2, meta=dict(meta, kind=kind, first=a1), chat=chat)


def unrelated(rng: random.Random, split: str | None = None) -> world.Example:
    """[question, answer, an unrelated turn] -> answered as if nothing had been said before."""
    q, pool, a1, items = _first(rng, split)
    if rng.random() < 0.25:
        nxt = world.Example("thanks", rng.choice(THANKS), WELCOME)
    else:
        nxt = rng.choice((world.fact, world.arithmetic, world.capital, world.food))(rng, split)
    chat = ({"role": "user", "content": q}, {"role": "assistant", "content": a1},
            {"role": "user", "content": nxt.question})
    return world.Example("unrelated_turn", nxt.question, nxt.answer, meta=dict(nxt.meta, family=nxt.family),
                         chat=chat)
