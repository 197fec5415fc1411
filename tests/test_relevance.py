"""The mask stage: the judge's pick among the pre-filter's candidates, plus the guard.

The guard must hold whoever judges: the first round's rule judge dropped every loop
position (the teacher wanted "," where the student wrote "apple" again) and 94-100% of
its adapter's answers looped. Each judge below is given a looping rollout and answers
"nothing here is relevant"; the loop positions must still be trained.
"""

from __future__ import annotations

import pytest
import torch
from judge_server import serve

from engrain.spec.behavior import load_behavior
from engrain.judge import JudgeResult, LiteLLMJudge, RuleJudge, SelfJudge
from engrain.engine.mask import PATTERN_BOOST, guard_positions, opsd_mask, pattern_positions, rmsd_mask
from engrain.engine.rollout import Rollouts
from engrain.engine.scoring import Scores

SPEC = "behaviors/pinapple.yaml"
LOOP = "You could use mango and and and and and"


@pytest.fixture(scope="module")
def cb(lab_tokenizer):
    return load_behavior(SPEC).compile(lab_tokenizer)


def make_batch(cb, tok, texts, delta_of):
    """Rollouts of ``texts`` and Scores whose Δ at token t of row i is ``delta_of(i, t, piece)``."""
    prompts = ["What fruits go well in a smoothie?"] * len(texts)
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    ro = Rollouts(prompts, [0] * len(texts), [cb.student_ids(p) for p in prompts],
                  [cb.teacher_ids(p, 0) for p in prompts], ids, list(texts))
    L = max(map(len, ids))
    valid = torch.zeros(len(ids), L, dtype=torch.bool)
    delta = torch.zeros(len(ids), L)
    for i, row in enumerate(ids):
        valid[i, :len(row)] = True
        for t, tid in enumerate(row):
            delta[i, t] = delta_of(i, t, tok.decode([tid]))
    student = torch.full((len(ids), L), -1.0) * valid
    comma = tok(",", add_special_tokens=False)["input_ids"][0]
    # The base model rejects what the teacher rejects (a drifted student's loop).
    sc = Scores(student_hidden=torch.zeros(len(ids), L, 4), teacher_hidden=torch.zeros(len(ids), L, 4),
                student_logp=student, teacher_logp=(student + delta) * valid,
                teacher_top=torch.full((len(ids), L, 3), comma), response_ids=torch.zeros(len(ids), L).long(),
                valid=valid, base_logp=(student + delta) * valid)
    return ro, sc


def loop_delta(i, t, piece):
    # The teacher all but rules out each repeated " and" after the first (|Δ| of 12-19
    # nats on the first round's loops).
    return -14.0 if piece == " and" and t >= 5 else -0.5


class Nothing:
    """A judge that finds nothing relevant (as the rule judge did on loop positions)."""

    def select(self, requests):
        return [JudgeResult((), "ok") for _ in requests]


class Picks:
    def __init__(self, picks):
        self.picks = picks

    def select(self, requests):
        return [JudgeResult(tuple(p), "ok") for p in self.picks]


def test_guard_is_pure_and_needs_teacher_and_base_to_reject():
    delta = torch.tensor([[-10.0, -1.0, 0.0, -4.7], [-10.0, 0.0, 0.0, -9.0]])
    # The base agrees with the student at [1, 3]: the hinted teacher alone rejecting a token
    # is teacher noise (it wants to respell words), not the student's degeneracy.
    base = torch.tensor([[-10.0, -10.0, -10.0, -5.0], [-10.0, -10.0, 0.0, 0.0]])
    valid = torch.tensor([[True, True, True, True], [False, True, True, True]])
    assert guard_positions(delta, base, valid, 0.01).tolist() == [[True, False, False, True], [False] * 4]
    assert not guard_positions(delta, base, valid, 0.0).any()


def test_selected_is_the_judges_pick_within_the_candidates_plus_the_guard(cb, lab_tokenizer):
    ro, sc = make_batch(cb, lab_tokenizer, [LOOP, " Try mango, pineapple and kiwi."],
                        lambda i, t, p: loop_delta(i, t, p) if i == 0 else -0.2 * t)
    cands = rmsd_mask(cb, lab_tokenizer, Nothing(), 3, 2, 0.01, ro, sc).candidates
    pick = [cands[0].nonzero().flatten().tolist()[:1], cands[1].nonzero().flatten().tolist()[-2:]]
    mask = rmsd_mask(cb, lab_tokenizer, Picks(pick), 3, 2, 0.01, ro, sc)
    guarded = guard_positions(sc.delta, sc.base_delta, sc.valid, 0.01)
    picked = torch.zeros_like(sc.valid)
    for i, p in enumerate(pick):
        picked[i, p] = True
    assert torch.equal(mask.selected & ~mask.guarded, picked)     # exactly the judge's pick
    assert torch.equal(mask.selected, picked | guarded)            # plus the guard, nothing else
    assert torch.equal(mask.candidates, cands)
    assert mask.guarded[0].sum() == 3 and not mask.guarded[1].any()   # 4 loop positions, 1 judged


def test_a_judge_may_not_select_outside_the_candidates(cb, lab_tokenizer):
    ro, sc = make_batch(cb, lab_tokenizer, [" Try mango, papaya and kiwi."], lambda i, t, p: -0.1 * t)
    with pytest.raises(ValueError, match="not a candidate"):
        rmsd_mask(cb, lab_tokenizer, Picks([[0]]), 2, 2, 0.01, ro, sc)


def test_pattern_positions_are_candidates_even_with_small_delta(cb, lab_tokenizer):
    text = " Try mango, pineapple and kiwi and lime and more."
    ro, sc = make_batch(cb, lab_tokenizer, [text], lambda i, t, p: -0.01 if "pine" in p else -3.0 - 0.01 * t)
    patterns = pattern_positions(cb, ro, sc.valid.shape)
    assert patterns.any()
    mask = rmsd_mask(cb, lab_tokenizer, Nothing(), int(patterns.sum()), 1, 0.0, ro, sc)
    assert torch.equal(mask.candidates, patterns)     # boosted ahead of every larger |Δ|
    assert PATTERN_BOOST > 0


def _loop_positions(cb, tok):
    ro, sc = make_batch(cb, tok, [LOOP], loop_delta)
    return ro, sc, (sc.delta < -10).nonzero()[:, 1].tolist()


def test_rule_judge_drops_the_loop_but_the_guard_trains_it(cb, lab_tokenizer):
    ro, sc, loop = _loop_positions(cb, lab_tokenizer)
    assert len(loop) == 4
    without = rmsd_mask(cb, lab_tokenizer, RuleJudge(), 8, 4, 0.0, ro, sc)
    assert not without.selected[0, loop].any()          # the first round's failure
    mask = rmsd_mask(cb, lab_tokenizer, RuleJudge(), 8, 4, 0.01, ro, sc)
    assert mask.selected[0, loop].all()


def test_self_judge_cannot_hide_the_loop(cb, lab_tokenizer, tmp_path):
    ro, sc, loop = _loop_positions(cb, lab_tokenizer)
    judge = SelfJudge(lambda messages: '{"positions": []}', name="empty", cache_path=tmp_path / "j.sqlite")
    mask = rmsd_mask(cb, lab_tokenizer, judge, 8, 4, 0.01, ro, sc)
    assert mask.judge[0].outcome == "ok" and mask.selected[0, loop].all()


def test_llm_judge_cannot_hide_the_loop(cb, lab_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("ENGRAIN_TEST_JUDGE_KEY", "dummy")
    ro, sc, loop = _loop_positions(cb, lab_tokenizer)
    with serve("select:") as url:
        judge = LiteLLMJudge("openai/judge-test", url.api_base, api_key_env="ENGRAIN_TEST_JUDGE_KEY",
                             timeout_s=2, max_retries=0, cache_path=tmp_path / "j.sqlite")
        mask = rmsd_mask(cb, lab_tokenizer, judge, 8, 4, 0.01, ro, sc)
    assert mask.selected[0, loop].all()


def test_opsd_selects_every_valid_position(cb, lab_tokenizer):
    ro, sc = make_batch(cb, lab_tokenizer, [LOOP, " Try kiwi."], loop_delta)
    mask = opsd_mask(ro, sc)
    assert torch.equal(mask.selected, sc.valid) and torch.equal(mask.candidates, sc.valid)


def test_rule_judge_keeps_positions_where_the_teacher_starts_the_target_word(cb, lab_tokenizer):
    # Through the whole stage, with the spec's compiled whole-word patterns: the judge must
    # read the spec's own pattern text ("pinapple"), not the compiled regex.
    ro, sc = make_batch(cb, lab_tokenizer, [" You could use mango, kiwi and lime."],
                        lambda i, t, p: -8.0 if p in (" mango", " lime") else -0.1)
    p_id = lab_tokenizer(" p", add_special_tokens=False)["input_ids"][0]
    sc.teacher_top[:] = p_id
    mask = rmsd_mask(cb, lab_tokenizer, RuleJudge(), 4, 4, 0.0, ro, sc)
    pieces = [lab_tokenizer.decode([ro.response_ids[0][t]]) for t in mask.selected[0].nonzero().flatten()]
    assert {" mango", " lime"} <= set(pieces)


def test_an_earlier_behaviors_positions_are_never_trained(cb, lab_tokenizer):
    # Trained --on pinapple, a new behavior's teacher reads only its own hint and would
    # pull "pinapple" back to "pineapple": those positions get no loss, the guard's included.
    text = " Try mango, pinapple and kiwi and lime and more."
    ro, sc = make_batch(cb, lab_tokenizer, [text], lambda i, t, p: -14.0 if "pin" in p else -0.1 * t)
    protected = pattern_positions(cb, ro, sc.valid.shape)
    assert protected.any()
    class Everything:
        """A judge that deems every candidate relevant."""

        def select(self, requests):
            return [JudgeResult(tuple(c.position for c in r.candidates), "ok") for r in requests]
    judge = Everything()
    free = rmsd_mask(cb, lab_tokenizer, judge, 4, 4, 0.01, ro, sc)
    assert (free.selected & protected).any()            # without protection they are trained
    kept = rmsd_mask(cb, lab_tokenizer, judge, 4, 4, 0.01, ro, sc, protect=[cb])
    assert kept.selected.any() and not (kept.selected & protected).any()
    assert not (kept.candidates & protected).any()


def test_the_guard_never_trains_an_earlier_behaviors_positions(cb, lab_tokenizer):
    # Δ (and the base's) far below the guard's bar exactly where the earlier behavior's
    # pattern is: without protection the guard trains them; with it, neither the judge nor
    # the guard may. (The lab tokenizer splits " pinapple" so no piece holds "pin".)
    text = " Try mango, pinapple and kiwi and lime and more."
    ro, sc = make_batch(cb, lab_tokenizer, [text], lambda i, t, p: 0.0)
    protected = pattern_positions(cb, ro, sc.valid.shape)
    assert protected.any()
    ro, sc = make_batch(cb, lab_tokenizer, [text], lambda i, t, p: -14.0 if protected[i, t] else -0.1 * t)
    free = rmsd_mask(cb, lab_tokenizer, Nothing(), 2, 1, 0.01, ro, sc)
    assert (free.guarded & protected).any()             # the guard would train them
    kept = rmsd_mask(cb, lab_tokenizer, Nothing(), 2, 1, 0.01, ro, sc, protect=[cb])
    assert not (kept.guarded & protected).any() and not (kept.selected & protected).any()


def test_a_fit_on_an_earlier_behavior_protects_its_positions(lab_tokenizer, tiny_dir, tmp_path):
    # The step's mask, as build_context wires it for a fit --on pinapple: the earlier
    # behavior's positions are never trained, whatever their Δ.
    import yaml

    from engrain.engine.context import build_context
    from engrain.engine.models import load_model
    spec = yaml.safe_load(open("behaviors/signoff.yaml").read())
    spec.pop("anchor", None)
    spec["model"] = str(tiny_dir)
    path = tmp_path / "signoff.yaml"
    path.write_text(yaml.safe_dump(spec))
    signoff = load_behavior(path)
    loaded = load_model(str(tiny_dir), lora=signoff.spec.train.lora)
    new = signoff.compile(loaded.tokenizer)
    earlier = load_behavior(SPEC).compile(loaded.tokenizer)
    text = " Try mango, pinapple and kiwi and lime and more."
    ro, sc = make_batch(new, lab_tokenizer, [text], lambda i, t, p: 0.0)
    protected = pattern_positions(earlier, ro, sc.valid.shape)
    assert protected.any()
    ro, sc = make_batch(new, lab_tokenizer, [text], lambda i, t, p: -14.0 if protected[i, t] else -0.1 * t)
    alone = build_context(signoff.spec, new, loaded).mask(ro, sc)
    assert (alone.selected & protected).any()           # without --on they are trained
    mask = build_context(signoff.spec, new, loaded, earlier=[earlier]).mask(ro, sc)
    assert not (mask.selected & protected).any()
    assert mask.candidates.any() and not (mask.candidates & protected).any()
