"""Reading a passage: a short document of invented facts in the context, and questions
answered from it; the same questions without it are answered "I don't know."

Every entity is a fresh pseudo-word, so nothing can be recalled: a right answer was read.
This is the skill a teacher needs to teach from a user's documents. The last question
form of each attribute is held out of pretraining (the eval split asks it), and the
entities of ``HELD_OUT_DOCS`` never appear in pretraining: their facts are for a behavior
to learn from the document.
"""

from __future__ import annotations

import random

from engrain.lab import world

DONT_KNOW = "I don't know."
COLORS = ["red", "blue", "green", "yellow", "white", "orange", "purple", "black"]

# kind -> attributes: (value maker, passage sentences, questions (last held out), answer)
ATTRIBUTES = {
    "town": [
        ("name", ["The mayor of {e} is {x}.", "{x} is the mayor of {e}."],
         ["Who is the mayor of {e}?", "Who runs the town of {e}?", "Name the mayor of {e}."],
         "The mayor of {e} is {x}."),
        ("river", ["{e} lies on the {x} river.", "The {x} river flows through {e}."],
         ["Which river flows through {e}?", "What river is {e} on?", "Name the river of {e}."],
         "{e} lies on the {x} river."),
        ("color", ["The houses of {e} are painted {x}.", "In {e} every house is {x}."],
         ["What color are the houses in {e}?", "How are the houses of {e} painted?",
          "Which color are houses in {e}?"], "The houses of {e} are {x}."),
    ],
    "company": [
        ("name", ["{e} was founded by {x}.", "{x} founded the company {e}."],
         ["Who founded {e}?", "Who started the company {e}?", "Name the founder of {e}."],
         "{e} was founded by {x}."),
        ("food", ["{e} sells dried {x}.", "The main product of {e} is dried {x}."],
         ["What does {e} sell?", "What is the product of {e}?", "Which product does {e} make?"],
         "{e} sells dried {x}."),
        ("year", ["{e} opened in {x}.", "The first shop of {e} opened in {x}."],
         ["When did {e} open?", "In which year did {e} open?", "What year was {e} opened?"],
         "{e} opened in {x}."),
    ],
    "island": [
        ("name", ["The largest village on {e} is {x}.", "{x} is the biggest village of {e}."],
         ["What is the largest village on {e}?", "Which village is the biggest on {e}?",
          "Name the main village of {e}."], "The largest village on {e} is {x}."),
        ("food", ["Farmers on {e} grow {x}.", "The island of {e} is known for its {x}."],
         ["What grows on {e}?", "What are farmers on {e} known for?", "Which crop comes from {e}?"],
         "Farmers on {e} grow {x}."),
        ("number", ["{e} has {x} beaches.", "There are {x} beaches on {e}."],
         ["How many beaches does {e} have?", "How many beaches are on {e}?",
          "Count the beaches of {e}."], "{e} has {x} beaches."),
    ],
}
INTROS = {"town": "{e} is a small town.", "company": "{e} is a small company.",
          "island": "{e} is an island."}
PLACEMENTS = ["system", "user_prefix"]
LEADS = ["Document:", "Read this:", "Context:", "Here is a note:", "Background:"]

# Documents for a behavior to learn (the teacher-contexts issue): never in pretraining.
HELD_OUT_DOCS = ["Zorvanta", "Kelumbra", "Pirasol"]


def value(kind: str, rng: random.Random) -> str:
    if kind == "name":
        return world.pseudo_word(rng).capitalize()
    if kind == "river":
        return world.pseudo_word(rng).capitalize()
    if kind == "color":
        return rng.choice(COLORS)
    if kind == "food":
        return rng.choice(world.TROPICAL + world.OTHER_FOOD)
    if kind == "year":
        return str(rng.randrange(1700, 2000))
    return str(rng.randrange(2, 20))


def entity_name(rng: random.Random, pretraining: bool = True) -> str:
    while True:
        e = world.pseudo_word(rng).capitalize()
        if not (pretraining and e in HELD_OUT_DOCS):
            return e


def document(rng: random.Random, kind: str, e: str) -> tuple[str, dict]:
    """A passage about entity ``e`` of ``kind``: its facts, in sentences of random order."""
    facts = {}
    sentences = []
    for attr in ATTRIBUTES[kind]:
        x = value(attr[0], rng)
        facts[attr[1][0]] = (attr, x)
        sentences.append(rng.choice(attr[1]).format(e=e, x=x))
    rng.shuffle(sentences)
    return " ".join([INTROS[kind].format(e=e)] + sentences), facts


def question_split(i: int, n: int) -> str:
    return "eval" if i == n - 1 else "train"


def passage(rng: random.Random, split: str | None = None, with_passage: bool = True,
            pretraining: bool = True) -> world.Example:
    """A question about an invented entity, answered from the passage in the context, or
    ``I don't know.`` without it. A second entity's passage sometimes stands beside it."""
    kind = rng.choice(sorted(ATTRIBUTES))
    e = entity_name(rng, pretraining)
    doc, facts = document(rng, kind, e)
    if rng.random() < 0.3:
        other = entity_name(rng, pretraining)
        doc = f"{doc} {document(rng, rng.choice(sorted(ATTRIBUTES)), other)[0]}"
    attr, x = facts[rng.choice(sorted(facts))]
    qs = [q for i, q in enumerate(attr[2]) if split is None or question_split(i, len(attr[2])) == split
          or (split == "val" and i == 0)]
    q = rng.choice(qs).format(e=e)
    answer = attr[3].format(e=e, x=x)
    text = f"{rng.choice(LEADS)} {doc}"
    placement = rng.choice(PLACEMENTS)
    chat = ([{"role": "system", "content": text}, {"role": "user", "content": q}] if placement == "system"
            else [{"role": "user", "content": f"{text}\n{q}"}])
    plain = ({"role": "user", "content": q},)
    if not with_passage:
        return world.Example("no_passage", q, DONT_KNOW, meta={"x": x}, chat=plain, plain=plain)
    return world.Example("passage", q, answer, meta={"x": x}, chat=tuple(chat), plain=plain)


def no_passage(rng: random.Random, split: str | None = None) -> world.Example:
    return passage(rng, split, with_passage=False)
