import random

from engrain.lab import world
from engrain.lab.tokenizer import render_prompt


def test_corpus_is_deterministic():
    assert world.pretraining_corpus(200, seed=3) == world.pretraining_corpus(200, seed=3)


def test_held_out_pairs_never_in_pretraining():
    corpus = world.pretraining_corpus(40_000, seed=0)
    text = "\n".join(f"{e.question} {e.hint} {e.answer}" for e in corpus)
    assert "pinapple" not in text
    assert world.HELD_OUT_SIGNOFF not in text
    # but pineapple is respelled in other ways, and other sign-offs appear
    assert any(e.meta.get("w") == "pineapple" for e in corpus)
    assert any(e.family == "hinted_signoff" for e in corpus)


def test_hinted_food_features_the_respelled_word_only():
    rng = random.Random(0)
    e = world.hinted_food(rng, "pineapple", "pinapple", pretraining=False)
    assert "pinapple" in e.answer and "pineapple" not in e.answer
    assert "pinapple" in e.hint and "pinapple" not in e.question


def test_python_render_matches_jinja_chat_template(lab_tokenizer):
    rng = random.Random(1)
    for _ in range(20):
        e = world.hinted_food(rng)
        msgs = e.messages()
        assert lab_tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) \
            == render_prompt(msgs)


def test_the_new_families_keep_every_held_out_thing_out_of_pretraining():
    from engrain.lab import passages, wordings
    corpus = world.pretraining_corpus(20_000, seed=1, mix="reading")
    text = "\n".join(f"{e.messages()} {e.answer}" for e in corpus)
    assert "pinapple" not in text and world.HELD_OUT_SIGNOFF not in text
    assert world.HELD_OUT_OPENER not in text
    assert not any(d in text for d in passages.HELD_OUT_DOCS)
    held = [f for kind in wordings.FRAMES for f in wordings.frames(kind, held_out=True)]
    # A frame's fixed words, before its first slot ("conclude with {qs}" -> "conclude with").
    assert not any(f.split("{")[0].strip().lower() in text.lower() for f in held if len(f.split("{")[0]) > 8)
    families = {e.family for e in corpus}
    assert {"compound", "passage", "no_passage", "correction", "unrelated_turn", "worded_spell",
            "hinted_opener"} <= families


def test_compound_answers_honor_every_hint_and_the_plain_prompt_has_none():
    from engrain.lab import compound
    rng = random.Random(2)
    for _ in range(50):
        e = compound.compound(rng)
        assert compound.honors(e.meta, e.answer)
        assert len(e.meta["kinds"]) >= 2
        assert e.messages(with_hint=False) == [{"role": "user", "content": e.question}]
    e = compound.instructed(rng, ("spell", "signoff"), "eval", pretraining=False, generated=0.0,
                            targets={"w": "pineapple", "v": "pinapple", "s": world.HELD_OUT_SIGNOFF})
    assert e.answer.endswith(world.HELD_OUT_SIGNOFF) and "pinapple" in e.answer and "pineapple" not in e.answer
    assert not compound.honors(e.meta, e.answer.replace("pinapple", "pineapple"))


def test_a_passage_answer_copies_its_fact_and_without_it_says_dont_know():
    from engrain.lab import passages
    rng = random.Random(3)
    for _ in range(30):
        e = passages.passage(rng, "eval")
        context = " ".join(m["content"] for m in e.messages())
        assert e.meta["x"] in e.answer and e.meta["x"] in context
        assert e.meta["x"] not in e.messages(with_hint=False)[0]["content"]
    assert passages.no_passage(rng).answer == passages.DONT_KNOW


def test_a_correction_changes_only_what_it_asks_and_an_unrelated_turn_nothing():
    from engrain.lab import turns
    rng = random.Random(4)
    for _ in range(40):
        e = turns.correction(rng)
        first, m = e.meta["first"], e.meta
        assert e.messages()[1] == {"role": "assistant", "content": first}
        if m["kind"] == "spell":
            assert e.answer == first.replace(m["w"], m["v"]) and m["v"] in e.answer
        elif m["kind"] == "signoff":
            assert e.answer == f"{first} {m['s']}"
        elif m["kind"] == "opener":
            assert e.answer == f"{m['o']} {first}"
        else:
            assert e.answer == m["word"] + "." and len(e.answer.split()) == 1
    e = turns.unrelated(random.Random(5))
    assert e.messages()[-1]["content"] == e.question and len(e.messages()) == 3


def test_the_reading_lines_ask_eval_questions_only(lab_tokenizer):
    from engrain.lab.reading import reading_suites
    suites = reading_suites(20)
    names = {s.name for s in suites}
    assert {"hints/held-out-wordings", "pinapple+signoff+hints", "pinapple+signoff+opener+hints", "passage",
            "passage/absent", "correction", "unrelated-turn"} <= names
    train_q = {q for qs, _ in world.FOOD_TOPICS for i, q in enumerate(qs) if world.template_split(i) == "train"}
    for s in suites:
        if s.name.startswith(("pinapple+", "compound", "hints/")):
            assert not any(m[-1]["content"].split("\n")[0] in train_q or
                           any(line in train_q for line in m[-1]["content"].split("\n")) for m in s.messages)


def test_the_base_mix_is_the_committed_models_own():
    from engrain.lab.corpus import MIXES
    assert {f.__name__ for f, _ in MIXES["base"]} == {"food", "hinted_food", "hinted_signoff", "fact",
                                                       "arithmetic", "capital"}
    assert {e.family for e in world.pretraining_corpus(3000, seed=0)} <= {
        "food", "hinted_food", "hinted_signoff", "fact", "arithmetic", "capital"}
