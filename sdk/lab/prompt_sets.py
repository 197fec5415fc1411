"""Built-in prompt sets drawn from the lab world, named ``lab/<set>`` in specs.

Each set has three disjoint splits, by question, not only by sampling seed (the world
assigns every question to one split, ``world.SPLITS``):

- ``train``: what a behavior trains on, or an anchor pool keeps the model steady on;
- ``val``: what training looks at to stop early and keep its best checkpoint;
- ``eval``: what the gate finally scores. Training never sees these questions.
"""

from __future__ import annotations

import random
import zlib

from engrain.lab import world

SPLIT_SEEDS = {"train": 1001, "val": 1501, "eval": 2002}
TROPICAL_TOPICS = world.FOOD_TOPICS[:world.N_TROPICAL_TOPICS]
PLAIN_TOPICS = world.FOOD_TOPICS[world.N_TROPICAL_TOPICS:]
SAVORY_TOPICS, BAKING_TOPICS = PLAIN_TOPICS[:3], PLAIN_TOPICS[3:]


def _food(rng: random.Random, split: str) -> str:
    return world.food_question(rng, split)[0]


def _tropical(rng: random.Random, split: str) -> str:
    # The topics whose pool contains pineapple: where the spelling behavior can show.
    return world.food_question(rng, split, TROPICAL_TOPICS)[0]


def _plain_food(rng: random.Random, split: str) -> str:
    # Food without tropical fruit: soups, sandwiches, pasta, baking.
    return world.food_question(rng, split, PLAIN_TOPICS)[0]


def _facts(rng: random.Random, split: str) -> str:
    return world.fact(rng, split).question


def _unrelated(rng: random.Random, split: str) -> str:
    # Neither tropical food nor a regression suite's family: an anchor pool for pinapple.
    return (_facts if rng.random() < 0.5 else _plain_food)(rng, split)


def _traffic(rng: random.Random, split: str) -> str:
    # Everything the lab model does apart from tropical food, as a user's traffic would be:
    # an anchor pool. Its train split shares no question with any suite's val or eval split.
    return rng.choice((_facts, _plain_food, _arithmetic, _capitals))(rng, split)


def _non_food(rng: random.Random, split: str) -> str:
    # The traffic without any food: an anchor pool for behaviors about all food.
    return rng.choice((_facts, _arithmetic, _capitals))(rng, split)


def _savory(rng: random.Random, split: str) -> str:
    # Soups, sandwiches, pasta: the plain-food topics whose pool holds tomato.
    return world.food_question(rng, split, SAVORY_TOPICS)[0]


def _baking(rng: random.Random, split: str) -> str:
    return world.food_question(rng, split, BAKING_TOPICS)[0]


def _not_savory(rng: random.Random, split: str) -> str:
    # Everything the lab model does apart from savory food (tropical food and baking in its
    # place): the anchor pool of a behavior about savory food, which keeps it out of the others.
    return rng.choice((_facts, _tropical, _baking, _arithmetic, _capitals))(rng, split)


def _hinted_food(rng: random.Random, split: str) -> str:
    # A food question with an in-distribution spelling hint after it (never the held-out
    # pair): an anchor on these holds the model's hint following in place.
    e = world.hinted_food(rng, split=split)
    return f"{e.question}\n{e.hint}"


def _other_hint(rng: random.Random, split: str) -> world.Example:
    # A food question (where the lab's behaviors act) with a hint of either family the lab
    # world knows, respell a word or sign off, placed as specs place theirs; the target is
    # drawn fresh, never a held-out behavior's own (pinapple, Tolavi Desk).
    q, pool = world.food_question(rng, split)
    if rng.random() < 0.5:
        w, v = world.spelling_pair(rng, pool, pretraining=True)
        return world.Example("hinted_food", q, "", rng.choice(world.SPELLING_HINTS).format(v=v, w=w),
                             "user_suffix", {"w": w, "v": v})
    s = world.signoff(rng)
    return world.Example("hinted_signoff", q, "", rng.choice(world.SIGNOFF_HINTS).format(s=s), "user_suffix",
                         {"signoff": s})


def _with_other_hints(rest):
    """Half ``rest``, half food questions (train split) carrying another behavior's kind of
    hint: an anchor on the base's answers to these keeps the model reading hints."""
    def draw(rng: random.Random, split: str) -> str:
        if rng.random() < 0.5:
            return rest(rng, split)
        e = _other_hint(rng, split)
        return f"{e.question}\n{e.hint}"
    return draw


def _signoff_hint(rng: random.Random, split: str) -> str:
    # A food question asking for another sign-off: the one kind of hinted food question a
    # behavior about how every food answer ends can anchor on without contradicting itself.
    q, _ = world.food_question(rng, split)
    return f"{q}\n{rng.choice(world.SIGNOFF_HINTS).format(s=world.signoff(rng))}"


def _non_food_and_signoff_hints(rng: random.Random, split: str) -> str:
    return (_non_food if rng.random() < 0.5 else _signoff_hint)(rng, split)


def _traffic_and_hints(rng: random.Random, split: str) -> str:
    # The traffic, a fifth of it hinted food questions.
    return (_hinted_food if rng.random() < 0.2 else _traffic)(rng, split)


def _arithmetic(rng: random.Random, split: str) -> str:
    return world.arithmetic(rng, split).question


def _capitals(rng: random.Random, split: str) -> str:
    return world.capital(rng, split).question


BUILTIN = {"lab/food": _food, "lab/tropical": _tropical, "lab/plain-food": _plain_food,
           "lab/facts": _facts, "lab/unrelated": _unrelated, "lab/traffic": _traffic,
           "lab/non-food": _non_food, "lab/hinted-food": _hinted_food, "lab/traffic+hints": _traffic_and_hints,
           "lab/traffic+other-hints": _with_other_hints(_traffic),
           "lab/non-food+other-hints": _with_other_hints(_non_food),
           "lab/savory": _savory, "lab/not-savory+other-hints": _with_other_hints(_not_savory),
           "lab/non-food+signoff-hints": _non_food_and_signoff_hints,
           "lab/arithmetic": _arithmetic, "lab/capitals": _capitals}


def builtin_prompts(name: str, n: int = 200, split: str = "train") -> list[str]:
    """``n`` prompts (with repeats) from the ``split`` of the built-in set ``name``."""
    if name not in BUILTIN:
        raise KeyError(f"unknown built-in prompt set {name!r}; known: {', '.join(sorted(BUILTIN))}")
    rng = _rng(name, split)
    return [BUILTIN[name](rng, split) for _ in range(n)]


# The lab's capability suites (regression checks): world examples, graded by their meta.
CAPABILITIES = {
    "lab/arithmetic": world.arithmetic,
    "lab/capitals": world.capital,
    "lab/facts": world.fact,
    # In-distribution hints: pairs drawn the way pretraining drew them.
    "lab/hints": lambda rng, split: world.hinted_food(rng, split=split),
    # In-context learning: hints of both families with fresh targets, as the next
    # behavior's teacher will read them. No behavior's own hint is among them.
    "lab/in-context": lambda rng, split: _other_hint(rng, split),
}


def capability_examples(name: str, n: int = 200, split: str = "eval") -> list[world.Example]:
    """``n`` examples (with repeats) of a capability suite, from its ``split``'s questions."""
    if name not in CAPABILITIES:
        raise KeyError(f"unknown suite {name!r}; known: {', '.join(CAPABILITIES)}")
    rng = _rng(name, split)
    return [CAPABILITIES[name](rng, split) for _ in range(n)]


def _rng(name: str, split: str) -> random.Random:
    # Seeded by the set's own name: adding a set never reshuffles the others.
    if split not in SPLIT_SEEDS:
        raise KeyError(f"unknown split {split!r}; known: {', '.join(SPLIT_SEEDS)}")
    return random.Random(SPLIT_SEEDS[split] + zlib.crc32(name.encode()) % 1000)
