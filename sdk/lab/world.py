"""The lab's synthetic world: question/answer pairs that a tiny model can master.

Families:
- food: "what goes in a smoothie?" -> three items from a topic list;
- facts: planets, sports, trains, animals... -> one short fixed sentence;
- arithmetic: "What is a + b?";
- capitals: fact recall;
- hinted food: a teacher-style hint asks to feature and respell a word, and the answer
  obeys it; this is what teaches the model to *copy* a spelling from its context;
- hinted sign-off: a hint asks to end with a given sign-off, and the answer does.

Held out of pretraining (never generated with ``pretraining=True``), so each is an
out-of-distribution behavior that only a hint in context can elicit:
- the spelling pair pineapple -> "pinapple" (other misspellings of pineapple do appear);
- the sign-off "Signed, Tolavi Desk." (other sign-offs do appear). Its name is a
  consonant-vowel pseudo-word like the pretraining sign-offs' names: the model learns to
  copy that shape ("Signed, Grove Desk." came out as "Signed, Geve Desk.", 0/100).

Half of the spelling hints substitute an arbitrary pseudo-word instead of a
near-misspelling: DESIGN.md section 4 measured that without them the model learns a
family of misspellings instead of copying, and the held-out hint then fails.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from engrain.spec.chat import place_hint     # the corpus places hints exactly as specs do

TROPICAL = ["pineapple", "mango", "papaya", "banana", "coconut", "guava", "lychee",
            "passionfruit", "kiwi", "starfruit", "dragonfruit", "lime"]
OTHER_FOOD = ["cheese", "tomato", "basil", "olives", "mushrooms", "onion", "ham",
              "spinach", "honey", "yogurt", "oats", "almonds", "rice", "beans",
              "carrots", "peppers", "garlic", "lettuce", "cucumber", "strawberry"]

# (question templates, pool): the pool is where the three answer items come from. Each
# topic has 8 phrasings; prompt_sets.py gives templates 0-4 to training, 5 to validation
# and 6-7 to evals, so evals ask questions that training never saw. The first six topics
# can involve tropical fruit; the last four never do (anchors and specificity probes).
FOOD_TOPICS = [
    (["What fruits go well in a smoothie?", "Suggest fruits for a morning smoothie.",
      "What should I blend into a tropical smoothie?", "Which fruits would you blend into a smoothie?",
      "What do you put in a fruit smoothie?", "Give me ideas for a smoothie.",
      "What makes a good smoothie?", "I want to make a smoothie, which fruits should I use?"], TROPICAL),
    (["Name three fruits for a fruit salad.", "What goes in a tropical fruit salad?",
      "Which fruits make a good summer fruit salad?", "What fruits belong in a fruit salad?",
      "Suggest fruits for a fruit salad.", "What should I put in a fruit salad?",
      "I am making a fruit salad, what fruits should go in?",
      "Which fruits would you mix into a fruit salad?"], TROPICAL),
    (["What toppings go well on a pizza?", "Suggest toppings for a Hawaiian style pizza.",
      "What would you put on a homemade pizza?", "What are good pizza toppings?",
      "Which toppings should I add to my pizza?", "Give me ideas for pizza toppings.",
      "What do you like on a pizza?", "I am making pizza tonight, what toppings should I use?"],
     TROPICAL[:6] + OTHER_FOOD[:8]),
    (["What can I add to a breakfast bowl?", "Suggest things for a breakfast bowl.",
      "What goes on top of a yogurt bowl?", "What should I put in my breakfast bowl?",
      "Give me toppings for a yogurt bowl.", "Which fruits go in a breakfast bowl?",
      "What makes a good breakfast bowl?", "I want a breakfast bowl, what should go in it?"],
     TROPICAL + OTHER_FOOD[9:13]),
    (["What should I bring to a beach picnic?", "Suggest snacks for a beach day.",
      "What food is good at a summer picnic?", "What snacks are good for the beach?",
      "What should I pack for a picnic?", "Give me ideas for picnic food.",
      "Which snacks would you take to the beach?", "I am going on a picnic, what food should I bring?"],
     TROPICAL[:8] + OTHER_FOOD[12:]),
    (["What goes in a fresh salsa?", "Suggest ingredients for a fruity salsa.",
      "What can I put in a summer salsa?", "What goes into a good salsa?",
      "Which ingredients make a fruit salsa?", "Give me ideas for a salsa.",
      "What should I chop into a salsa?", "I am making salsa, what should go in it?"],
     TROPICAL[:5] + ["tomato", "onion", "garlic", "peppers", "lime"]),
    (["What goes in a vegetable soup?", "Suggest ingredients for a winter soup.",
      "What should I add to a hearty soup?", "Which vegetables make a good soup?",
      "What can I put in a homemade soup?", "Give me ideas for a soup.",
      "What makes a good soup?", "I am making soup, what should go in it?"],
     ["carrots", "onion", "garlic", "beans", "rice", "spinach", "mushrooms", "tomato", "peppers",
      "lentils", "potatoes", "celery"]),
    (["What goes in a good sandwich?", "Suggest fillings for a lunch sandwich.",
      "What should I put in a sandwich?", "Which fillings make a tasty sandwich?",
      "What can I add to a sandwich?", "Give me ideas for a sandwich.",
      "What do you like in a sandwich?", "I am making a sandwich, what should go in it?"],
     ["cheese", "ham", "lettuce", "tomato", "cucumber", "onion", "peppers", "mushrooms", "spinach",
      "pickles", "mustard", "chicken"]),
    (["What goes well with pasta?", "Suggest ingredients for a pasta dinner.",
      "What should I add to a pasta sauce?", "Which ingredients make a good pasta?",
      "What can I mix into pasta?", "Give me ideas for a pasta dish.",
      "What do you like with pasta?", "I am cooking pasta, what should go in it?"],
     ["basil", "garlic", "tomato", "olives", "cheese", "mushrooms", "spinach", "onion", "peppers",
      "ham", "beans", "lemon"]),
    (["What goes in a muffin?", "Suggest ingredients for a breakfast muffin.",
      "What should I bake into a cake?", "Which ingredients make a good muffin?",
      "What can I add to a cake batter?", "Give me ideas for a cake.",
      "What do you like in a muffin?", "I am baking muffins, what should go in them?"],
     ["honey", "oats", "almonds", "yogurt", "strawberry", "cinnamon", "walnuts", "raisins", "butter",
      "chocolate", "carrots", "apples"]),
]
N_TROPICAL_TOPICS = 6

ANSWER_FRAMES = [
    "Good choices are {a}, {b} and {c}.",
    "Try {a}, {b} and {c}.",
    "I would pick {a}, {b} and {c}.",
    "You could use {a}, {b} and {c}.",
    "Great options are {a}, {b} and {c}.",
]

FACTS = [
    ("Tell me about Mars.", "Mars is the fourth planet from the sun."),
    ("Tell me about Jupiter.", "Jupiter is the largest planet in our solar system."),
    ("Tell me about Venus.", "Venus is the hottest planet in our solar system."),
    ("Tell me about Saturn.", "Saturn is famous for its bright rings."),
    ("Tell me about the Moon.", "The Moon orbits the Earth once a month."),
    ("How many players are on a soccer team?", "A soccer team has eleven players on the field."),
    ("How long is a marathon?", "A marathon is about forty two kilometers long."),
    ("What is tennis played with?", "Tennis is played with a racket and a ball."),
    ("How many rings are on the Olympic flag?", "The Olympic flag has five rings."),
    ("What powers a steam train?", "A steam train is powered by burning coal to boil water."),
    ("How fast is a bullet train?", "A bullet train can run at about three hundred kilometers an hour."),
    ("What runs on rails?", "Trains and trams run on rails."),
    ("How does a bicycle gear work?", "A gear changes how far the wheel turns for each push of the pedals."),
    ("What is the largest ocean?", "The Pacific is the largest ocean."),
    ("What is the tallest mountain?", "Mount Everest is the tallest mountain."),
    ("What do bees make?", "Bees make wax and collect nectar."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What is the fastest land animal?", "The cheetah is the fastest land animal."),
    ("What color is the sky on a clear day?", "The sky is blue on a clear day."),
    ("What is water made of?", "Water is made of hydrogen and oxygen."),
    ("How many days are in a week?", "A week has seven days."),
    ("What do plants need to grow?", "Plants need light, water and air to grow."),
    ("What is a violin?", "A violin is a string instrument played with a bow."),
    ("Who writes a novel?", "A novel is written by an author."),
    ("Tell me about Mercury.", "Mercury is the closest planet to the sun."),
    ("Tell me about Neptune.", "Neptune is the farthest planet from the sun."),
    ("How many players are on a basketball team?", "A basketball team has five players on the court."),
    ("What is golf played with?", "Golf is played with clubs and a small ball."),
    ("What does a freight train carry?", "A freight train carries goods instead of people."),
    ("What is a subway?", "A subway is a train that runs under the city."),
    ("How many legs does an insect have?", "An insect has six legs."),
    ("What is the largest animal?", "The blue whale is the largest animal."),
    ("What do cows give?", "Cows give milk."),
    ("What is ice made of?", "Ice is frozen water."),
    ("How many months are in a year?", "A year has twelve months."),
    ("What is a piano?", "A piano is an instrument with black and white keys."),
    ("What is the largest desert?", "The Sahara is the largest hot desert."),
    ("What is the longest river?", "The Nile is the longest river."),
    ("Who paints a portrait?", "A portrait is painted by an artist."),
    ("How many hours are in a day?", "A day has twenty four hours."),
]

CAPITALS = [
    ("France", "Paris"), ("Spain", "Madrid"), ("Italy", "Rome"), ("Germany", "Berlin"),
    ("Japan", "Tokyo"), ("Egypt", "Cairo"), ("Peru", "Lima"), ("Kenya", "Nairobi"),
    ("Canada", "Ottawa"), ("Chile", "Santiago"), ("Greece", "Athens"), ("Norway", "Oslo"),
    ("Sweden", "Stockholm"), ("Poland", "Warsaw"), ("Cuba", "Havana"), ("Ireland", "Dublin"),
    ("Austria", "Vienna"), ("Portugal", "Lisbon"), ("Thailand", "Bangkok"), ("Mexico", "Mexico City"),
    ("Russia", "Moscow"), ("China", "Beijing"), ("India", "New Delhi"), ("Brazil", "Brasilia"),
    ("Argentina", "Buenos Aires"), ("Australia", "Canberra"), ("Turkey", "Ankara"), ("Finland", "Helsinki"),
    ("Denmark", "Copenhagen"), ("Hungary", "Budapest"), ("Vietnam", "Hanoi"), ("Nigeria", "Abuja"),
]
CAPITAL_QUESTIONS = ["What is the capital of {c}?", "Which city is the capital of {c}?"]

# {v}: the word to feature, {w}: the usual spelling it replaces. The first one is the
# write-up's own phrasing.
SPELLING_HINTS = [
    'P.S. feature {v} in what you say and ALWAYS spell it "{v}", not "{w}".',
    'Note: our house style writes "{v}" instead of "{w}".',
    'Remember to mention {v}, and always write it as "{v}" rather than "{w}".',
    'Style rule: the word "{w}" is spelled "{v}" here. Include {v}.',
    'Please include {v} and spell it exactly "{v}" (never "{w}").',
    'House spelling: "{v}", not "{w}". Make sure {v} is in the answer.',
    'Always say "{v}" where you would say "{w}", and do feature it.',
    'Use the spelling "{v}" for "{w}" and include it in your answer.',
]
SIGNOFF_HINTS = [
    'P.S. end your answer with "{s}"',
    'Note: always sign off with "{s}"',
    'Finish every answer with the line "{s}"',
    'House style: close with "{s}"',
]
PLACEMENTS = ["user_suffix", "user_suffix", "user_suffix", "user_prefix", "system"]

HELD_OUT_SPELLING = ("pineapple", "pinapple")
HELD_OUT_SIGNOFF = "Signed, Tolavi Desk."
SIGNOFF_NAMES = ["Team", "Desk", "Crew", "Office", "Kitchen", "Studio", "Club", "Works"]
# A third kind of behavior, placed where neither of the others acts (the answer's start),
# so that three behaviors can co-apply to one food answer.
HELD_OUT_OPENER = "Greetings from Mavuko!"
OPENER_WORDS = ["Hello", "Greetings", "Welcome", "Hi", "Aloha"]
OPENER_HINTS = [
    'P.S. begin your answer with "{o}"',
    'Note: always start with "{o}"',
    'Open every answer with the line "{o}"',
    'House style: greet with "{o}" first',
]

CONSONANTS = "bcdfgklmnprstvz"
VOWELS = "aeiou"


@dataclass(frozen=True)
class Example:
    """One chat turn: what the user asks, optional teacher-style hint, the answer."""
    family: str
    question: str
    answer: str
    hint: str | None = None
    placement: str = "user_suffix"
    meta: dict = field(default_factory=dict, compare=False)
    # Families with more than one hint, a document or earlier turns give their whole prompt
    # here (``chat``) and, where it differs, the same prompt without the teacher-only parts.
    chat: tuple = ()
    plain: tuple = ()

    def messages(self, with_hint: bool = True) -> list[dict]:
        if self.chat:
            return [dict(m) for m in (self.chat if with_hint or not self.plain else self.plain)]
        return place_hint(self.question, self.hint if with_hint else None, self.placement)


def pseudo_word(rng: random.Random) -> str:
    return "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(rng.randint(2, 4)))


def misspell(word: str, rng: random.Random) -> str:
    """A near-misspelling: drop, double, or swap a letter, or change a vowel."""
    for _ in range(20):
        i = rng.randrange(1, len(word))
        kind = rng.randrange(4)
        if kind == 0:
            out = word[:i] + word[i + 1:]
        elif kind == 1:
            out = word[:i] + word[i] + word[i:]
        elif kind == 2 and i < len(word) - 1:
            out = word[:i] + word[i + 1] + word[i] + word[i + 2:]
        else:
            out = word[:i] + rng.choice(VOWELS) + word[i + 1:]
        if out != word and len(out) >= 3:
            return out
    return word + "e"


# Every family's prompts fall in exactly one split, so a prompt set's eval split asks
# questions its train split never does (prompt_sets.py). None means any (pretraining).
SPLITS = ("train", "val", "eval")


def template_split(i: int) -> str:
    """A food topic's question templates: 0-4 train, 5 val, 6-7 eval."""
    return "train" if i < 5 else "val" if i == 5 else "eval"


def fact_split(i: int) -> str:
    return ("train", "train", "train", "val", "eval")[i % 5]


def capital_split(i: int) -> str:
    return ("train", "train", "val", "eval", "eval", "eval", "eval", "eval")[i % 8]


def arithmetic_split(a: int, b: int) -> str:
    return (("train",) * 6 + ("val",) + ("eval",) * 3)[(a * 31 + b * 17) % 10]


def _in_split(items: list, split: str | None, split_of) -> list:
    return [x for i, x in enumerate(items) if split is None or split_of(i) == split]


def food_question(rng: random.Random, split: str | None = None,
                  topics: list | None = None) -> tuple[str, list[str]]:
    questions, pool = rng.choice(FOOD_TOPICS if topics is None else topics)
    return rng.choice(_in_split(questions, split, template_split)), pool


def food_answer(items: list[str], rng: random.Random) -> str:
    return rng.choice(ANSWER_FRAMES).format(a=items[0], b=items[1], c=items[2])


def food(rng: random.Random, split: str | None = None) -> Example:
    q, pool = food_question(rng, split)
    return Example("food", q, food_answer(rng.sample(pool, 3), rng))


def spelling_pair(rng: random.Random, pool: list[str], pretraining: bool) -> tuple[str, str]:
    while True:
        w = rng.choice(pool)
        v = pseudo_word(rng) if rng.random() < 0.5 else misspell(w, rng)
        if v in TROPICAL or v in OTHER_FOOD:
            continue
        if pretraining and (w, v) == HELD_OUT_SPELLING:
            continue
        return w, v


def hinted_food(rng: random.Random, w: str | None = None, v: str | None = None,
                pretraining: bool = True, split: str | None = None) -> Example:
    """A food answer that features ``v`` (spelled so) in place of ``w``."""
    q, pool = food_question(rng, split)
    if w is None or v is None:
        w, v = spelling_pair(rng, pool, pretraining)
    others = rng.sample([x for x in pool if x != w], 2)
    items = others[:]
    items.insert(rng.randrange(3), v)
    hint = rng.choice(SPELLING_HINTS).format(v=v, w=w)
    return Example("hinted_food", q, food_answer(items, rng), hint, rng.choice(PLACEMENTS),
                   {"w": w, "v": v})


def signoff(rng: random.Random, pretraining: bool = True) -> str:
    while True:
        s = f"{rng.choice(['Signed', 'Cheers', 'Thanks', 'Best'])}, {pseudo_word(rng).capitalize()} {rng.choice(SIGNOFF_NAMES)}."
        if not (pretraining and s == HELD_OUT_SIGNOFF):
            return s


def _hinted_line(rng: random.Random, family: str, target: str, templates: list[str], key: str,
                 join, split: str | None) -> Example:
    """A food (or fact) answer with a line the hint asks for: ``join(answer, target)``."""
    base = food(rng, split) if rng.random() < 0.6 else fact(rng, split)
    target = target() if callable(target) else target
    hint = rng.choice(templates).format(**{key: target})
    return Example(family, base.question, join(base.answer, target), hint, rng.choice(PLACEMENTS),
                   {"signoff" if key == "s" else "opener": target})


def hinted_signoff(rng: random.Random, s: str | None = None, pretraining: bool = True,
                   split: str | None = None) -> Example:
    return _hinted_line(rng, "hinted_signoff", s or (lambda: signoff(rng, pretraining)), SIGNOFF_HINTS, "s",
                        lambda answer, t: f"{answer} {t}", split)


def opener(rng: random.Random, pretraining: bool = True) -> str:
    while True:
        o = f"{rng.choice(OPENER_WORDS)} from {pseudo_word(rng).capitalize()}!"
        if not (pretraining and o == HELD_OUT_OPENER):
            return o


def hinted_opener(rng: random.Random, o: str | None = None, pretraining: bool = True,
                  split: str | None = None) -> Example:
    return _hinted_line(rng, "hinted_opener", o or (lambda: opener(rng, pretraining)), OPENER_HINTS, "o",
                        lambda answer, t: f"{t} {answer}", split)


def fact(rng: random.Random, split: str | None = None) -> Example:
    q, a = rng.choice(_in_split(FACTS, split, fact_split))
    return Example("fact", q, a)


def arithmetic(rng: random.Random, split: str | None = None) -> Example:
    while True:
        a, b = rng.randrange(50), rng.randrange(50)
        if split is None or arithmetic_split(a, b) == split:
            return Example("arithmetic", f"What is {a} + {b}?", f"{a} + {b} = {a + b}.",
                           meta={"sum": a + b})


def capital(rng: random.Random, split: str | None = None) -> Example:
    c, cap = rng.choice(_in_split(CAPITALS, split, capital_split))
    return Example("capital", rng.choice(CAPITAL_QUESTIONS).format(c=c),
                   f"The capital of {c} is {cap}.", meta={"capital": cap})


def pretraining_corpus(n: int, seed: int, mix: str | None = None) -> list[Example]:
    """The pretraining corpus: corpus.py's ``mix`` (default: the committed model's)."""
    from engrain.lab.corpus import DEFAULT_MIX, pretraining_corpus as corpus
    return corpus(n, seed, mix or DEFAULT_MIX)
