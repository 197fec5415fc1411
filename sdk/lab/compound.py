"""Instructions in any wording, and several at once: the lab's compound-hint family.

One prompt can carry two or three hints of different kinds (respell a word, sign off,
open with a greeting), each in its own wording and place; the answer honors all of them.
A teacher for several behaviors at once is this model reading several hints.
"""

from __future__ import annotations

import random

from engrain.lab import wordings, world

KINDS = ("spell", "signoff", "opener")
TEMPLATES = {"spell": world.SPELLING_HINTS, "signoff": world.SIGNOFF_HINTS, "opener": world.OPENER_HINTS}


def place_hints(question: str, hints: list[tuple[str, str]]) -> list[dict]:
    """Chat messages for ``question`` with each ``(hint, placement)`` where it says: system
    hints in one system message, prefixes before the question, suffixes after it."""
    system = [h for h, p in hints if p == "system"]
    before = [h for h, p in hints if p == "user_prefix"]
    after = [h for h, p in hints if p not in ("system", "user_prefix")]
    msgs = [{"role": "system", "content": "\n".join(system)}] if system else []
    return msgs + [{"role": "user", "content": "\n".join(before + [question] + after)}]


def wording(kind: str, rng: random.Random, generated: float, held_out: bool, **targets: str) -> str:
    """A template wording (as the specs' phrasings) or, with probability ``generated``, a
    generated one; ``held_out`` asks for frames pretraining never saw."""
    if held_out or rng.random() < generated:
        return wordings.hint(kind, rng, held_out, **targets)
    return rng.choice(TEMPLATES[kind]).format(**targets)


def draw_targets(kinds, pool: list[str], rng: random.Random, pretraining: bool) -> dict:
    t = {}
    if "spell" in kinds:
        t["w"], t["v"] = world.spelling_pair(rng, pool, pretraining)
    if "signoff" in kinds:
        t["s"] = world.signoff(rng, pretraining)
    if "opener" in kinds:
        t["o"] = world.opener(rng, pretraining)
    return t


def answer_with(items: list[str], rng: random.Random, targets: dict) -> str:
    """A food answer over ``items`` that obeys every target: ``v`` in place of ``w``
    (featured), ``o`` first, ``s`` last."""
    if "v" in targets:
        items = [x for x in items if x != targets["w"]][:2]
        items.insert(rng.randrange(3), targets["v"])
    text = world.food_answer(items, rng)
    if "o" in targets:
        text = f"{targets['o']} {text}"
    if "s" in targets:
        text = f"{text} {targets['s']}"
    return text


def instructed(rng: random.Random, kinds: tuple[str, ...], split: str | None = None,
               pretraining: bool = True, targets: dict | None = None, generated: float = 0.6,
               held_out_wording: bool = False, placements: list[str] | None = None) -> world.Example:
    """A food question with one hint per kind in ``kinds`` (any order and placement) and an
    answer that honors them all. ``targets`` fixes them (e.g. the held-out behaviors')."""
    q, pool = world.food_question(rng, split)
    targets = targets or draw_targets(kinds, pool, rng, pretraining)
    if "w" in targets and targets["w"] not in pool:
        q, pool = world.food_question(rng, split, [t for t in world.FOOD_TOPICS if targets["w"] in t[1]])
    kinds = list(kinds)
    rng.shuffle(kinds)
    keys = {"spell": ("v", "w"), "signoff": ("s",), "opener": ("o",)}
    hints = [(wording(k, rng, generated, held_out_wording, **{x: targets[x] for x in keys[k]}),
              rng.choice(placements or wordings.PLACEMENTS)) for k in kinds]
    others = [x for x in pool if x != targets.get("w")]
    items = rng.sample(others, 3)
    family = "compound" if len(kinds) > 1 else f"worded_{kinds[0]}"
    return world.Example(family, q, answer_with(items, rng, targets), meta=dict(targets, kinds=tuple(kinds)),
                         chat=tuple(place_hints(q, hints)), plain=({"role": "user", "content": q},))


def compound(rng: random.Random, split: str | None = None) -> world.Example:
    """Pretraining: two or three kinds at once, fresh targets."""
    kinds = tuple(rng.sample(KINDS, rng.choice((2, 2, 3))))
    return instructed(rng, kinds, split)


def worded(rng: random.Random, split: str | None = None) -> world.Example:
    """Pretraining: one hint in a generated wording."""
    return instructed(rng, (rng.choice(KINDS),), split, generated=1.0)


def honors(targets: dict, text: str) -> bool:
    """Whether ``text`` obeys every target (the graders of this family)."""
    t = text.strip()
    return (("v" not in targets or targets["v"] in t)
            and ("s" not in targets or t.endswith(targets["s"]))
            and ("o" not in targets or t.startswith(targets["o"])))
