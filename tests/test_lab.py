"""The lab: the builder runs, and the committed model has its in-context skill."""

from __future__ import annotations

import pytest

from engrain.lab import model_path

HAVE_LAB = (model_path() / "config.json").exists()
needs_lab = pytest.mark.skipif(not HAVE_LAB, reason="the lab model is not built (cl lab build)")


def test_builder_writes_a_loadable_hf_folder(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engrain.lab.build import build
    meta = build(tmp_path / "m", preset="tiny", seed=1, log=lambda *a: None)
    tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                   add_generation_prompt=True).endswith("<|assistant|>\n")
    assert model.config.vocab_size == len(tok)
    assert meta["command"].startswith("python -m engrain.lab.build")
    assert meta["mix"] == "base" and "--mix" not in meta["command"]


def test_builder_continues_a_model_on_the_reading_mix_and_records_it(tmp_path):
    from engrain.lab.build import build
    build(tmp_path / "m", preset="tiny", seed=1, log=lambda *a: None)
    meta = build(tmp_path / "m2", preset="tiny", seed=1, steps=3, corpus_size=200, init=tmp_path / "m",
                 mix="reading", log=lambda *a: None)
    assert meta["mix"] == "reading" and "--mix reading" in meta["command"] and "--init" in meta["command"]
    assert meta["init_build"]["mix"] == "base"


def test_spaced_tokenizer_spells_a_word_the_same_after_a_quote_and_after_a_space(tmp_path):
    from engrain.lab.build import build
    from engrain.lab.tokenizer import train_tokenizer
    texts = ['Say "moteco" rather than "mango". Try moteco, lime and moteco.'] * 40
    spaced, prefix = (train_tokenizer(texts, vocab_size=300, scheme=s) for s in ("spaced", "prefix"))
    def pieces(tok, s):
        return [tok.decode([i]) for i in tok(s, add_special_tokens=False)["input_ids"]]
    assert pieces(spaced, '"moteco"')[1:-1] == pieces(spaced, " moteco")[1:] == ["moteco"]
    assert pieces(prefix, '"moteco"')[1:-1] != pieces(prefix, " moteco")  # the reason for "spaced"
    text = 'a  b\n"c" d.'
    assert spaced.decode(spaced(text, add_special_tokens=False)["input_ids"]) == text
    meta = build(tmp_path / "m", preset="tiny", seed=1, steps=2, corpus_size=200, tokenizer_scheme="spaced",
                 log=lambda *a: None)
    assert meta["tokenizer"] == "spaced" and "--tokenizer spaced" in meta["command"]


@needs_lab
def test_committed_lab_model_is_small_and_records_its_build():
    import json
    size = sum(f.stat().st_size for f in model_path().iterdir())
    assert size <= 15 * 2**20
    meta = json.loads((model_path() / "build.json").read_text())
    assert "seed" in meta and "command" in meta


@needs_lab
def test_lab_model_follows_hints_but_never_shows_held_out_behaviors_without_them():
    from engrain.checks.evals import run_suites
    from engrain.lab.suites import scorecard_suites
    from engrain.engine.models import load_plain

    model, tok = load_plain("lab")
    r = {(x.suite, x.metric): x.value for x in run_suites(model, tok, scorecard_suites(60), seed=0)}
    assert r[("pinapple", "exists")] == 0.0
    assert r[("signoff", "exists")] == 0.0
    # On the eval split's questions (phrasings no behavior trains on), n=200: 0.73, 0.71, 0.64
    assert r[("pinapple+hint", "exists")] >= 0.5
    assert r[("signoff+hint", "exists")] >= 0.5
    assert r[("lab/hints", "follows")] >= 0.5
    assert r[("lab/arithmetic", "accuracy")] >= 0.95 and r[("lab/capitals", "accuracy")] >= 0.95
    assert r[("specificity", "clean")] >= 0.95

