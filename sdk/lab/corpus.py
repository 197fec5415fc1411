"""The pretraining mix: every family of the lab world, in the shares the model learns from.

The first six families are the original lab's (food, single hints in the template
wordings, facts, arithmetic, capitals); the rest teach reading: hints in generated
wordings, several hints at once, a passage, a correction in a later turn.
"""

from __future__ import annotations

import random

from engrain.lab import compound, passages, turns, world

MIXES = {
    # The committed model's (build.json "mix"): what `cl lab build` reproduces by default.
    "base": [(world.food, 0.22), (world.hinted_food, 0.30), (world.hinted_signoff, 0.10),
             (world.fact, 0.12), (world.arithmetic, 0.14), (world.capital, 0.12)],
    # Every family: the base mix's plus reading (benchmarks/RESULTS.md section 17 measured a
    # 2.1M model continued on it for 2400 steps: it does not yet read).
    "reading": [(world.food, 0.09), (world.hinted_food, 0.12), (world.hinted_signoff, 0.05),
                (world.hinted_opener, 0.04), (compound.worded, 0.12), (compound.compound, 0.15),
                (passages.passage, 0.09), (passages.no_passage, 0.03),
                (turns.correction, 0.08), (turns.unrelated, 0.03),
                (world.fact, 0.06), (world.arithmetic, 0.08), (world.capital, 0.06)],
}
DEFAULT_MIX = "base"


def pretraining_corpus(n: int, seed: int, mix: str = DEFAULT_MIX) -> list[world.Example]:
    """``n`` examples of ``mix``, deterministic in ``seed``; no held-out behavior, wording
    frame, question form or document appears (the families' generators keep them out)."""
    rng = random.Random(seed)
    makers, weights = zip(*MIXES[mix])
    return [rng.choices(makers, weights)[0](rng) for _ in range(n)]
