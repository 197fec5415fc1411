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
