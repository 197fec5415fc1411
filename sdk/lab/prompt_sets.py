"""Built-in prompt sets drawn from the lab world, named ``lab/<set>`` in specs.

Each set has disjoint ``train`` and ``eval`` splits (different seeds and, where the
world allows, different questions), so evals never score prompts the adapter trained on.
"""

from __future__ import annotations

import random

from . import world

SPLIT_SEEDS = {"train": 1001, "eval": 2002}


def _food(rng: random.Random) -> str:
    return world.food_question(rng)[0]


def _tropical(rng: random.Random) -> str:
    # The topics whose pool contains pineapple: where the spelling behavior can show.
    questions, _ = rng.choice([t for t in world.FOOD_TOPICS if "pineapple" in t[1]])
    return rng.choice(questions)


def _facts(rng: random.Random) -> str:
    return rng.choice(world.FACTS)[0]


def _arithmetic(rng: random.Random) -> str:
    return world.arithmetic(rng).question


def _capitals(rng: random.Random) -> str:
    return world.capital(rng).question


BUILTIN = {"lab/food": _food, "lab/tropical": _tropical, "lab/facts": _facts,
           "lab/arithmetic": _arithmetic, "lab/capitals": _capitals}


def builtin_prompts(name: str, n: int = 200, split: str = "train") -> list[str]:
    """``n`` prompts from the built-in set ``name`` (a key of ``BUILTIN``)."""
    if name not in BUILTIN:
        raise KeyError(f"unknown built-in prompt set {name!r}; known: {', '.join(sorted(BUILTIN))}")
    rng = random.Random(SPLIT_SEEDS[split] + sorted(BUILTIN).index(name))
    return [BUILTIN[name](rng) for _ in range(n)]
