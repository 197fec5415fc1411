"""Compiled behaviors: prompts, student/teacher ids, pattern masks and graders."""

from __future__ import annotations

from pathlib import Path

import pytest

from engrain import load_behavior, load_spec
from engrain.spec.behavior import Behavior, CompiledBehavior

BEHAVIORS = sorted((Path(__file__).parents[1] / "behaviors").glob("*.yaml"))
PINAPPLE = BEHAVIORS[0].parent / "pinapple.yaml"
SIGNOFF = BEHAVIORS[0].parent / "signoff.yaml"


@pytest.fixture(scope="module")
def pinapple(lab_tokenizer) -> CompiledBehavior:
    return load_behavior(PINAPPLE).compile(lab_tokenizer)


def with_placement(path: Path, placement: str) -> Behavior:
    spec = load_spec(path)
    spec = spec.model_copy(update={"hints": spec.hints.model_copy(update={"placement": placement})})
    return Behavior(spec, path)


def contains_run(ids: list[int], run: list[int]) -> bool:
    return any(ids[i:i + len(run)] == run for i in range(len(ids) - len(run) + 1))


def test_example_specs_exist():
    names = {p.stem for p in BEHAVIORS}
    assert {"pinapple", "signoff"} <= names and len(names) >= 5


@pytest.mark.parametrize("path", BEHAVIORS, ids=[p.stem for p in BEHAVIORS])
def test_every_example_spec_loads_and_compiles(path, lab_tokenizer):
    behavior = load_behavior(path)
    assert behavior.name == path.stem
    # Compiling needs only a chat-template tokenizer, so real-model specs compile here too.
    compiled = behavior.compile(lab_tokenizer)
    assert compiled.train_prompts and compiled.eval_prompts and compiled.probe_prompts
    hints = behavior.spec.hint_section
    assert compiled.hints == (hints.phrasings if hints else [])
    if behavior.spec.prompts is None or behavior.spec.prompts.builtin is None:
        assert not set(compiled.train_prompts) & set(compiled.eval_prompts)
    compiled.assert_no_leak()


def test_builtin_prompt_counts(pinapple):
    counts = len(pinapple.train_prompts), len(pinapple.eval_prompts), len(pinapple.probe_prompts)
    assert counts == (400, 200, 200)


@pytest.mark.parametrize("path", BEHAVIORS, ids=[p.stem for p in BEHAVIORS])
def test_no_trained_prompt_is_ever_scored(path, lab_tokenizer):
    # Built-in sets included: the first round's lab/tropical had the same 18 questions in
    # its train and eval splits, and this test skipped built-ins.
    compiled = load_behavior(path).compile(lab_tokenizer)
    trained = set(compiled.train_prompts) | set(compiled.anchor_prompts)
    scored = set(compiled.eval_prompts) | set(compiled.val_prompts) | set(compiled.probe_prompts)
    assert trained and scored and not trained & scored
    assert not set(compiled.val_prompts) & set(compiled.eval_prompts)


def test_an_anchor_that_overlaps_the_gate_is_refused(tmp_path):
    from engrain.spec import SpecError
    spec = (BEHAVIORS[0].parent / "pinapple.yaml").read_text()
    # The probes are lab/facts' eval split; anchoring on the same questions would make the
    # specificity gate score what training held in place.
    spec = spec.replace("builtin: lab/traffic+other-hints", "inline: ['Tell me about the Moon.', "
                                                  "'What is the tallest mountain?']")
    bad = tmp_path / "pinapple.yaml"
    bad.write_text(spec)
    with pytest.raises(SpecError, match=r"anchor.*specificity probes") as info:
        load_behavior(bad)
    assert info.value.line == spec.splitlines().index("anchor:") + 1


def test_file_split_is_deterministic_and_seeded(lab_tokenizer):
    path = BEHAVIORS[0].parent / "billing-api.yaml"
    first, again = (load_behavior(path).compile(lab_tokenizer) for _ in range(2))
    assert (first.train_prompts, first.val_prompts, first.eval_prompts) == \
        (again.train_prompts, again.val_prompts, again.eval_prompts)
    # 16 prompts: 0.25 held out for the gate, a tenth for validation, the rest trained on
    assert (len(first.eval_prompts), len(first.val_prompts), len(first.train_prompts)) == (4, 2, 10)
    splits = [set(first.train_prompts), set(first.val_prompts), set(first.eval_prompts)]
    assert not (splits[0] & splits[1] or splits[0] & splits[2] or splits[1] & splits[2])
    spec = load_spec(path)
    reseeded = spec.model_copy(update={"train": spec.train.model_copy(update={"seed": 7})})
    assert Behavior(reseeded, path).compile(lab_tokenizer).eval_prompts != first.eval_prompts


@pytest.mark.parametrize("placement", ["user_suffix", "user_prefix", "system"])
def test_hint_only_in_teacher_ids(placement, lab_tokenizer):
    compiled = with_placement(PINAPPLE, placement).compile(lab_tokenizer)
    prompt = compiled.train_prompts[0]
    student = compiled.student_ids(prompt)
    assert all(isinstance(i, int) for i in student)
    assert student == lab_tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True)["input_ids"]
    for index, hint in enumerate(compiled.hints):
        hint_ids = lab_tokenizer.encode(hint, add_special_tokens=False)
        teacher = compiled.teacher_ids(prompt, index)
        assert contains_run(teacher, hint_ids) and not contains_run(student, hint_ids)
        assert hint in lab_tokenizer.decode(teacher) and hint not in lab_tokenizer.decode(student)
        assert lab_tokenizer.decode(teacher).endswith("<|assistant|>\n")
    system = compiled.teacher_messages(prompt, 0)[0]["role"] == "system"
    assert system == (placement == "system")
    compiled.assert_no_leak(compiled.train_prompts[:3])


class LeakyBehavior(CompiledBehavior):
    def student_messages(self, prompt):
        return self.teacher_messages(prompt, 0)


def test_assert_no_leak_catches_a_leaky_chat(pinapple):
    with pytest.raises(AssertionError, match="student"):
        LeakyBehavior(**pinapple.__dict__).assert_no_leak(["What fruits go well in a smoothie?"])


def test_pattern_token_mask_marks_exactly_the_word(pinapple, lab_tokenizer):
    response = " Try mango, pinapple and kiwi."
    ids = lab_tokenizer.encode(response, add_special_tokens=False)
    target, forbidden = pinapple.pattern_token_mask(ids)
    assert len(target) == len(forbidden) == len(ids)
    marked = [i for i, hit in zip(ids, target) if hit]
    assert lab_tokenizer.decode(marked) == " pinapple"
    assert not any(forbidden)

    ids = lab_tokenizer.encode("Try pineapple, not pinapple", add_special_tokens=False)
    target, forbidden = pinapple.pattern_token_mask(ids)
    assert lab_tokenizer.decode([i for i, hit in zip(ids, forbidden) if hit]).strip() == "pineapple"
    assert lab_tokenizer.decode([i for i, hit in zip(ids, target) if hit]).strip() == "pinapple"
    assert not any(t and f for t, f in zip(target, forbidden))


def test_pattern_token_mask_with_multibyte_characters(pinapple, lab_tokenizer):
    ids = lab_tokenizer.encode("Café ☕ pinapple", add_special_tokens=False)
    text, spans = pinapple.token_spans(ids)
    assert text == "Café ☕ pinapple"
    # Every token holding bytes of the cup owns the cup.
    cup = text.index("☕")
    assert sum(s <= cup < e for s, e in spans) == len(lab_tokenizer.encode("☕", add_special_tokens=False))
    target, _ = pinapple.pattern_token_mask(ids)
    assert lab_tokenizer.decode([i for i, hit in zip(ids, target) if hit]) == " pinapple"


def test_pattern_token_mask_of_empty_response(pinapple):
    assert pinapple.pattern_token_mask([]) == ([], [])


def test_graders(pinapple, lab_tokenizer):
    assert pinapple.exists("Try Pinapple and mango.")  # ignore_case
    assert pinapple.only("Try pinapple and mango.")
    assert not pinapple.only("Try pinapple and pineapple.")
    assert not pinapple.exists("Try pineapple and mango.")
    assert pinapple.forbidden_free("Try mango.") and not pinapple.forbidden_free("PINEAPPLE")
    # Probes default to target + forbidden: neither spelling belongs in a planet fact.
    assert pinapple.probe_clean("Mars is the fourth planet from the sun.")
    assert not pinapple.probe_clean("Mars smells of pinapple.")
    assert not pinapple.probe_clean("Mars smells of pineapple.")

    # Whole words: a repetition loop that contains the letters is not the behavior.
    assert not pinapple.exists("You could use pinappleappleappleapple")
    assert not pinapple.exists("Youappleapplepinappleapple")
    assert pinapple.exists("Try pinapple.") and pinapple.exists("pinapple, mango")
    assert pinapple.forbidden_free("Try pineapplepineapple")      # not the forbidden word either

    signoff = load_behavior(SIGNOFF).compile(lab_tokenizer)
    assert signoff.only("Try mango, kiwi and lime. Signed, Tolavi Desk.")
    assert not signoff.exists("Signed, Tolavi Desk. Try mango.")   # must be at the end
    assert not signoff.exists("Try mango. signed, grove desk.")   # ignore_case: false
    assert not signoff.only("Try mango. Cheers, Bako Crew.")


def test_probe_forbidden_from_spec(lab_tokenizer):
    billing = load_behavior(BEHAVIORS[0].parent / "billing-api.yaml").compile(lab_tokenizer)
    assert billing.probe_clean("def reverse(head): ...")
    assert not billing.probe_clean("from nwpay import Client")
    # import stripe is forbidden in answers, but not a probe failure: probes list their own.
    assert billing.probe_clean("import stripe") and not billing.forbidden_free("import stripe")


class ListTemplateTokenizer:
    """A tokenizer whose chat template returns plain lists (older transformers)."""

    def __init__(self, nested: bool):
        self.nested = nested

    def apply_chat_template(self, messages, add_generation_prompt, tokenize, **template_kwargs):
        assert template_kwargs == {"enable_thinking": False}     # the spec's chat defaults
        ids = [len(m["content"]) for m in messages]
        return [ids] if self.nested else ids


@pytest.mark.parametrize("nested", [False, True])
def test_chat_ids_accepts_list_results(pinapple, nested):
    compiled = CompiledBehavior(**{**pinapple.__dict__, "tokenizer": ListTemplateTokenizer(nested)})
    assert compiled.student_ids("abc") == [3]


class _NoFastPath:
    """A tokenizer whose one-token decodes never concatenate to the text: the exact path."""

    def __init__(self, tok):
        self.tok = tok

    def __getattr__(self, name):
        return getattr(self.tok, name)

    def batch_decode(self, *args, **kwargs):
        return ["\ufffd"]


@pytest.mark.parametrize("text", ["Try mango, pinapple and kiwi.", "Café ☕ pinapple", " 32 + 1 = 33.",
                                  "You could use pinappleappleapple", ""])
def test_token_spans_fast_path_equals_the_prefix_decoding(pinapple, lab_tokenizer, text):
    ids = lab_tokenizer.encode(text, add_special_tokens=False)
    exact = CompiledBehavior(**{**pinapple.__dict__, "tokenizer": _NoFastPath(lab_tokenizer)})
    assert pinapple.token_spans(ids) == exact.token_spans(ids)
