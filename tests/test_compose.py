"""Several behaviors into one adapter: claims (pure), the mask kept off other behaviors'
claims, the composed run end to end on the tiny model, and the joint gate."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from engrain.engine.claims import claim_mask, claimed_spans, claimed_tokens, edit_distance, rule_of

ROOT = Path(__file__).parents[1]


def spec_patterns(name):
    s = yaml.safe_load((ROOT / f"behaviors/{name}.yaml").read_text())
    return rule_of(s["patterns"]["target"], s["patterns"]["forbidden"])


def claimed(text, name):
    return [text[a:b] for a, b in claimed_spans(text, spec_patterns(name))]


def test_edit_distance_against_hand_computed_values():
    assert edit_distance("pinapple", "pineapple") == 1
    assert edit_distance("polavi", "tolavi") == 1
    assert edit_distance("", "abc") == 3 and edit_distance("abc", "abc") == 0
    assert edit_distance("kitten", "sitting") == 3


def test_rules_read_the_words_and_anchors_of_the_specs_patterns():
    pin, sig, opener = spec_patterns("pinapple"), spec_patterns("signoff"), spec_patterns("opener")
    assert pin.words == ("pinapple", "pineapple") and not pin.at_end and not pin.at_start
    assert {"signed", "tolavi", "desk"} <= set(sig.words) and sig.at_end and "w" not in sig.words
    assert opener.at_start and "mavuko" in opener.words


def test_a_behavior_claims_its_imperfect_attempts_and_nothing_of_the_others():
    text = "Greetings from Mavuko! Try pinaple, mango and kiwi. Signed, polavi Crew."
    assert claimed(text, "pinapple") == ["pinaple"]
    assert claimed(text, "signoff") == ["Signed, polavi Crew."]           # the whole end, a garbled name too
    assert claimed(text, "opener") == ["Greetings from Mavuko!"]
    # Mid-answer "Thanks" is no sign-off, and a plain answer is nobody's.
    assert claimed("Thanks to you, try mango, kiwi and lime.", "signoff") == []
    assert claimed("Try mango, kiwi and lime.", "pinapple") == []
    # A word run on past the behavior's own is still its attempt; a shorter piece of it is not.
    assert claimed("Try mango and lime. Signedololol.", "signoff") == ["Signedololol."]
    assert claimed("Try pinapples and lime.", "pinapple") == ["pinapples"]
    assert claimed("Try pins and lime.", "pinapple") == []


def test_claimed_tokens_overlap_rule():
    assert claimed_tokens([(0, 3), (3, 6), (6, 9)], [(4, 5)]) == [False, True, False]
    assert claimed_tokens([(0, 3), (3, 6)], []) == [False, False]
    assert claimed_tokens([(0, 3), (3, 6)], [(0, 6)]) == [True, True]


def compiled(name, tokenizer, tiny_dir=None):
    from engrain.spec.behavior import as_behavior
    s = yaml.safe_load((ROOT / f"behaviors/{name}.yaml").read_text())
    if tiny_dir:
        s["model"] = str(tiny_dir)
    return as_behavior(s, ROOT).compile(tokenizer)


def test_the_mask_never_picks_a_position_another_behavior_claims(lab_tokenizer):
    # Real lab tokenization: the sign-off's tokens, its garbled name included, are claimed.
    from engrain.engine.claims import others_claims
    from engrain.engine.mask import rmsd_mask
    from engrain.engine.rollout import Rollouts
    from engrain.engine.scoring import Scores
    from engrain.judge.rule import RuleJudge
    pin, sig = compiled("pinapple", lab_tokenizer), compiled("signoff", lab_tokenizer)
    text = "Try pinapple, mango and kiwi. Signed, polavi Desk."
    ids = lab_tokenizer(text, add_special_tokens=False)["input_ids"]
    ro = Rollouts([""], [0], [[1]], [[1]], [ids], [text])
    L = len(ids)
    # Teacher and base all but rule out every sampled token: unmasked, the guard would train
    # every position, the sign-off's too.
    sc = Scores(torch.zeros(1, L, 4), torch.zeros(1, L, 4), torch.full((1, L), -1.0), torch.full((1, L), -30.0),
                torch.zeros(1, L, 3, dtype=torch.long), torch.tensor([ids]), torch.ones(1, L, dtype=torch.bool),
                base_logp=torch.full((1, L), -30.0))
    rules = {"pinapple": spec_patterns("pinapple"), "signoff": spec_patterns("signoff")}
    exclude = others_claims(pin, rules, "pinapple")
    theirs = exclude(ro, (1, L))
    assert theirs.any() and not theirs[0, 0]
    m = rmsd_mask(pin, lab_tokenizer, RuleJudge(), L, L, 0.01, ro, sc, exclude=exclude)
    assert m.candidates.any() and not (m.selected & theirs).any() and not (m.candidates & theirs).any()
    free = rmsd_mask(pin, lab_tokenizer, RuleJudge(), L, L, 0.01, ro, sc)
    assert (free.selected & theirs).any()      # the test can tell: without the claims they are trained
    # The sign-off's own mask may train its own positions.
    assert claim_mask(sig, rules["signoff"], [ids], (1, L)).equal(theirs)


def write(tmp, tiny_dir, name, **over):
    s = yaml.safe_load((ROOT / f"behaviors/{name}.yaml").read_text())
    s.update(model=str(tiny_dir), learned={"min_share_of_hinted": None, "min_rate": None})
    s.pop("anchor")
    s["regression"] = {"suites": [], "max_drop": 1.0}
    s["train"].update({"steps": 2, "batch_size": 2, "max_new_tokens": 6, "eval_every": 1, **over})
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(s))
    return path


@pytest.mark.timeout(600)
def test_compose_trains_one_adapter_each_behavior_from_its_own_teacher(tmp_path, tiny_dir, monkeypatch):
    import engrain.engine.step as step_mod
    from engrain.composition import compose
    from engrain.store import Store
    seen = []
    real = step_mod.distill_step

    def spy(ctx, step):
        out = real(ctx, step)
        teacher = [ctx.tokenizer.decode(ids) for ids in out.rollouts.teacher_prompt_ids]
        seen.append((ctx.behavior.name, teacher))
        return out
    monkeypatch.setattr(step_mod, "distill_step", spy)
    specs = [write(tmp_path, tiny_dir, "pinapple"), write(tmp_path, tiny_dir, "signoff")]
    r = compose(specs, design="claims", out_dir=tmp_path / "a", store=tmp_path / "s.duckdb", eval_n=4)
    # Steps take the behaviors in turn; each teacher reads its own hint only.
    assert [b for b, _ in seen] == ["pinapple", "signoff"] * 2
    for name, teachers in seen:
        for t in teachers:
            assert ("pinapple" in t) == (name == "pinapple") and ("Tolavi" in t) == (name == "signoff")
    assert r.behaviors == ("pinapple", "signoff") and r.steps_run == 4
    db = Store(tmp_path / "s.duckdb")
    assert len(db.runs()) == 1 and len(db.steps(r.run_id)) == 4
    # Every step's row says which behavior it trained; its rollouts and judge calls are stored.
    assert [row["extra"]["behavior"] for row in db.steps(r.run_id)] == ["pinapple", "signoff"] * 2
    assert db.rollout_steps(r.run_id) == [0, 1, 2, 3]
    assert sorted({row["step"] for row in db.judge_calls(r.run_id)}) == [0, 1, 2, 3]
    suites = {row["suite"] for row in r.adapter}
    assert {"pinapple:behavior", "signoff:behavior", "pinapple:specificity", "signoff:specificity"} <= suites
    assert r.outcome == "accepted" and (r.adapter_path / "adapter_config.json").exists()
    # One adapter that carries both: it loads by its run id and answers, under one name.
    from engrain.use import describe, load
    described = describe(r.run_id[:8], tmp_path / "a")
    assert (described.behavior, described.carries, described.accepted, described.run_dir) == (
        "pinapple+signoff", ("pinapple", "signoff"), True, r.run_dir.resolve())
    loaded = load(adapters=[r.run_id[:8]], out_dir=tmp_path / "a")
    assert loaded.behaviors == ("pinapple+signoff",)
    # The library lists what it carries, each behavior with its rate, and serves it under one name.
    import json

    from click.testing import CliRunner

    from engrain.cli.main import cli
    listed = json.loads(CliRunner().invoke(cli, ["adapters", "--json", "--store", str(tmp_path / "s.duckdb")]).output)
    assert [(e["behavior"], e["carries"], e["current"]) for e in listed] == [
        ("pinapple+signoff", ["pinapple", "signoff"], True)]
    rates = {row["suite"]: row["value"] for row in r.adapter if row["metric"] == "only" and row["decoding"] == "sample"}
    assert listed[0]["rates"] == [rates["pinapple:behavior"], rates["signoff:behavior"]]
    table = CliRunner().invoke(cli, ["adapters", "--store", str(tmp_path / "s.duckdb")]).output
    assert f"pinapple {rates['pinapple:behavior']:.3f}, signoff" in " ".join(table.split())
    served = CliRunner().invoke(cli, ["serve", "--print", "--store", str(tmp_path / "s.duckdb")])
    assert served.exit_code == 0, served.output
    assert "--lora-modules pinapple+signoff=" in served.output and "warning" not in served.output


def _carrier(tmp, tiny_dir, name: str, seed: int) -> Path:
    """An adapter folder moved off zero (a trained adapter's stand-in: LoRA B = 0 would teach nothing)."""
    from engrain.engine.models import load_model
    from engrain.spec.schema import Lora
    loaded = load_model(str(tiny_dir), lora=Lora())
    torch.manual_seed(seed)
    with torch.no_grad():
        for n, p in loaded.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    folder = tmp / f"carrier-{name}"
    loaded.model.save_pretrained(folder)
    return folder


@pytest.mark.timeout(600)
def test_consolidate_teaches_each_behavior_from_the_adapter_that_carries_it_without_its_hint(
        tmp_path, tiny_dir, monkeypatch):
    import engrain.engine.step as step_mod
    from engrain.composition import ComposeError, compose
    from engrain.engine.teacher import CarriedTeacher
    seen = []
    real = step_mod.distill_step

    def spy(ctx, step):
        out = real(ctx, step)
        seen.append((ctx.behavior.name, ctx.teacher, out.rollouts, out.delta))
        return out
    monkeypatch.setattr(step_mod, "distill_step", spy)
    specs = [write(tmp_path, tiny_dir, "pinapple"), write(tmp_path, tiny_dir, "signoff")]
    carriers = [_carrier(tmp_path, tiny_dir, "pinapple", 1), _carrier(tmp_path, tiny_dir, "signoff", 2)]
    r = compose(specs, design="consolidate", teachers=[str(c) for c in carriers], out_dir=tmp_path / "a",
                store=tmp_path / "s.duckdb", eval_n=4)
    assert [b for b, *_ in seen] == ["pinapple", "signoff"] * 2 and r.steps_run == 4
    for name, teacher, ro, delta in seen:
        assert isinstance(teacher, CarriedTeacher) and teacher.folder == str(carriers[name == "signoff"])
        # The teacher reads exactly the student's prompt (no hint), through its adapter: a step
        # of the untrained student already disagrees with it (a hintless base teacher would not).
        assert ro.teacher_prompt_ids == ro.student_prompt_ids
    assert float(seen[0][3].abs().sum()) > 0
    # The student adapter alone is saved: the carried ones stay out of it.
    import json
    assert json.loads((r.run_dir / "run.json").read_text())["teachers"] == [str(c) for c in carriers]
    assert not any("carried" in p.name for p in r.adapter_path.iterdir())
    with pytest.raises(ComposeError, match="one teacher adapter per behavior"):
        compose(specs, design="consolidate", teachers=[str(carriers[0])], out_dir=tmp_path / "b")
    with pytest.raises(ComposeError, match="neither an adapter folder nor a run"):
        compose(specs, design="consolidate", teachers=[str(tmp_path), str(carriers[1])], out_dir=tmp_path / "b")
    with pytest.raises(ComposeError, match="for design consolidate"):
        compose(specs, design="claims", teachers=[str(c) for c in carriers], out_dir=tmp_path / "b")


def _teachers_kept_a_step(monkeypatch):
    """The tiny model learns nothing in a step or two: call each teacher fit's kept step 1, so
    that the consolidation goes on to use it. Returns what each teacher fit was given: (spec
    name, its suites, seed)."""
    import dataclasses

    import engrain.fit as fit_mod
    real, fits = fit_mod.fit, []

    def spy(spec, **kw):
        fits.append((spec.name, spec.regression.names, kw["seed"]))
        return dataclasses.replace(real(spec, **kw), best_step=1)
    monkeypatch.setattr(fit_mod, "fit", spy)
    return fits


@pytest.mark.timeout(600)
def test_consolidate_without_teachers_fits_each_behavior_alone_first_under_its_own_teacher_name(
        tmp_path, tiny_dir, monkeypatch):
    import engrain.fit as fit_mod
    from engrain.composition import ComposeError
    from engrain.consolidation import compose
    from engrain.store import Store
    specs = [write(tmp_path, tiny_dir, "pinapple"), write(tmp_path, tiny_dir, "signoff")]
    for p in specs:     # a hint-following suite (left out of a teacher's gate) and a capability (kept)
        s = yaml.safe_load(p.read_text())
        s["regression"] = {"suites": ["lab/arithmetic", "lab/in-context"], "max_drop": 1.0, "eval_n": 4}
        p.write_text(yaml.safe_dump(s))
    fits = _teachers_kept_a_step(monkeypatch)
    r = compose(specs, design="consolidate", seed=3, out_dir=tmp_path / "a", store=tmp_path / "s.duckdb", eval_n=4)
    assert fits == [("pinapple-teacher", ["lab/arithmetic"], 3), ("signoff-teacher", ["lab/arithmetic"], 3)]
    import json
    teachers = json.loads((r.run_dir / "run.json").read_text())["teachers"]
    assert [Path(t).parts[-3] for t in teachers] == ["pinapple-teacher", "signoff-teacher"]
    assert {row["behavior"] for row in Store(tmp_path / "s.duckdb").runs()} == {"pinapple-teacher", "signoff-teacher",
                                                                             "pinapple+signoff"}
    # A behavior not learned alone has nothing to teach: refused, naming it.
    from types import SimpleNamespace
    monkeypatch.setattr(fit_mod, "fit", lambda spec, **kw: SimpleNamespace(
        run_id="r1", best_step=0, adapter_path=tmp_path, verdict=SimpleNamespace(
            outcome="not learned", summary=lambda: "not learned: behavior exists 0.0")))
    with pytest.raises(ComposeError, match="pinapple was not learned alone"):
        compose(specs, design="consolidate", out_dir=tmp_path / "b")


def test_the_joint_gate_names_a_lost_behavior():
    from engrain.checks.joint import joint_gated
    from engrain.spec.behavior import as_behavior
    specs = [as_behavior(ROOT / f"behaviors/{n}.yaml").spec for n in ("pinapple", "signoff")]
    rows = lambda pin, sig: [   # noqa: E731
        {"suite": "pinapple:behavior", "metric": m, "value": pin} for m in ("exists", "only")] + [
        {"suite": "signoff:behavior", "metric": m, "value": sig} for m in ("exists", "only")] + [
        {"suite": f"{n}:behavior_hinted", "metric": m, "value": 0.8} for n in ("pinapple", "signoff")
        for m in ("exists", "only")] + [
        {"suite": s, "metric": "x", "value": 1.0} for s in ("pinapple:specificity", "signoff:specificity",
                                                           "well_formed", "lab/arithmetic", "lab/capitals",
                                                           "lab/in-context", "lab/hint-signoff",
                                                           "lab/hint-pinapple")]
    base = rows(0.0, 0.0)
    ok = joint_gated(specs, base, rows(0.9, 0.9))
    assert ok.outcome == "accepted", ok.summary()
    lost = joint_gated(specs, base, rows(0.9, 0.1))
    assert lost.outcome == "regressed" and lost.lost == ("signoff",)
    assert lost.summary().startswith("regressed: lost signoff")
    assert joint_gated(specs, base, rows(0.0, 0.0)).outcome == "not learned"


def test_cl_compose_refuses_a_composition_that_lost_a_behavior_exit_3(tmp_path, tiny_dir, monkeypatch):
    from click.testing import CliRunner

    from engrain.cli.main import cli
    import engrain.composition as comp

    def canned(model, tokenizer, cbs, train, adapter_on, n, seed, split="eval", decoding="sample"):
        # The adapter carries pinapple (0.9 > 0.9 x 0.5) and not the sign-off (0.0).
        rows = []
        for cb in cbs:
            rate = (0.9 if cb.name == "pinapple" else 0.0) if adapter_on else 0.0
            rows += [{"suite": f"{cb.name}:behavior", "metric": m, "value": rate, "n": 4} for m in ("exists", "only")]
            rows += [{"suite": f"{cb.name}:behavior_hinted", "metric": m, "value": 0.5, "n": 4} for m in ("exists", "only")]
            rows += [{"suite": f"{cb.name}:specificity", "metric": "clean", "value": 1.0, "n": 4}]
        rows += [{"suite": "well_formed", "metric": "rate", "value": 1.0, "n": 4}]
        return [{**r, "split": split, "decoding": decoding} for r in rows]
    monkeypatch.setattr(comp, "joint_evaluate", canned)
    pin = write(tmp_path, tiny_dir, "pinapple")
    sig = write(tmp_path, tiny_dir, "signoff")
    for p in (pin, sig):
        s = yaml.safe_load(p.read_text())
        s["learned"] = {"min_share_of_hinted": 0.9, "min_rate": None}
        p.write_text(yaml.safe_dump(s))
    res = CliRunner().invoke(cli, ["compose", str(pin), str(sig), "--design", "claims",
                                   "--out-dir", str(tmp_path / "a"),
                                   "--store", str(tmp_path / "s.duckdb"), "--eval-n", "4", "--no-progress"])
    assert res.exit_code == 3, res.output
    assert "lost signoff" in res.output
    run_id = next(p.name for p in (tmp_path / "a" / "pinapple+signoff").iterdir())
    again = CliRunner().invoke(cli, ["eval", run_id[:8], "--out-dir", str(tmp_path / "a"),
                                     "--store", str(tmp_path / "s.duckdb"), "-n", "4"])
    assert again.exit_code == 3, again.output          # cl eval agrees with the fit
    assert "lost signoff" in again.output


@pytest.mark.timeout(600)
def test_fit_on_a_composed_run_consolidates_every_behavior_from_the_adapter_that_carries_it(
        tmp_path, tiny_dir, monkeypatch):
    import json

    import engrain.composition as comp
    from engrain.fit import fit
    specs = [write(tmp_path, tiny_dir, "pinapple", steps=1), write(tmp_path, tiny_dir, "signoff", steps=1)]
    first = comp.compose(specs, design="claims", out_dir=tmp_path / "a", store=tmp_path / "s.duckdb", eval_n=4)
    assert first.outcome == "accepted"
    loaded_from, teachers_loaded = [], []
    real, real_teacher = comp.load_adapter_weights, comp.CarriedTeacher
    monkeypatch.setattr(comp, "load_adapter_weights", lambda folder, model: loaded_from.append(Path(folder))
                        or real(folder, model))
    monkeypatch.setattr(comp, "CarriedTeacher", lambda model, folder, name: teachers_loaded.append(Path(folder))
                        or real_teacher(model, folder, name))
    fitted = _teachers_kept_a_step(monkeypatch)
    third = fit(write(tmp_path, tiny_dir, "opener", steps=1), on=[first.run_id[:8]], out_dir=tmp_path / "a",
                store=tmp_path / "s.duckdb", eval_n=4)
    assert [name for name, *_ in fitted] == ["opener-teacher"]      # the new behavior alone first
    assert loaded_from[0] == first.adapter_path.resolve()          # started from the lineage's adapter
    saved = json.loads((third.run_dir / "run.json").read_text())
    assert saved["behaviors"] == ["pinapple", "signoff", "opener"] and saved["keep"] == ["pinapple", "signoff"]
    assert saved["design"] == "consolidate"
    # The earlier behaviors taught by the lineage's adapter (loaded once), the new one by its own fit.
    assert saved["teachers"][:2] == [str(first.adapter_path.resolve())] * 2
    assert Path(saved["teachers"][2]).parts[-3] == "opener-teacher"
    assert teachers_loaded == [first.adapter_path.resolve(), Path(saved["teachers"][2])]
    suites = {r["suite"] for r in third.adapter}
    assert {"pinapple:behavior", "signoff:behavior", "opener:behavior"} <= suites
    gated = {r.suite for r in third.verdict.rows}
    assert {"pinapple:kept", "signoff:kept"} <= gated


def test_a_lineage_behavior_that_dropped_is_named_lost():
    from engrain.checks.joint import joint_gated
    from engrain.spec.behavior import as_behavior
    specs = [as_behavior(ROOT / f"behaviors/{n}.yaml").spec for n in ("pinapple", "opener")]
    for s in specs:
        s.regression.suites.clear()
    def rows(pin, op):
        out = [{"suite": f"{n}:{k}", "metric": m, "value": v} for n, v in (("pinapple", pin), ("opener", op))
               for k in ("behavior",) for m in ("exists", "only")]
        out += [{"suite": f"{n}:behavior_hinted", "metric": m, "value": 0.8} for n in ("pinapple", "opener")
                for m in ("exists", "only")]
        return out + [{"suite": s, "metric": "x", "value": 1.0} for s in ("pinapple:specificity", "opener:specificity",
                                                                         "well_formed")]
    v = joint_gated(specs, rows(0, 0), rows(0.75, 0.9), keep=["pinapple"], start=rows(0.9, 0.0))
    assert v.outcome == "regressed" and v.lost == ("pinapple",), v.summary()
    ok = joint_gated(specs, rows(0, 0), rows(0.88, 0.9), keep=["pinapple"], start=rows(0.9, 0.0))
    assert ok.outcome == "accepted", ok.summary()


def test_the_anchor_leaves_free_the_end_a_sign_off_needs_and_the_start_an_opener_needs():
    from engrain.engine.anchor import free_positions
    valid = torch.tensor([[True, True, True, False], [True, False, False, False], [True, True, True, True]])
    every, none = torch.tensor([True, True, True]), torch.tensor([False, False, False])
    assert free_positions(valid, none, every).tolist() == [[True, True, False, False], [True, False, False, False],
                                                          [True, True, True, False]]
    assert free_positions(valid, every, none).tolist() == [[False, True, True, False], [True, False, False, False],
                                                          [False, True, True, True]]
    assert free_positions(valid, none, none).equal(valid)
    # Only the rows marked (the behavior's own domain) are freed.
    assert free_positions(valid, none, torch.tensor([False, False, True])).tolist() == [
        [True, True, True, False], [True, False, False, False], [True, True, True, False]]


def test_a_sign_offs_anchor_frees_the_end_on_food_questions_only(lab_tokenizer, tiny_dir):
    from engrain.engine.anchor import build_anchor
    from engrain.engine.models import load_model
    from engrain.spec.behavior import as_behavior
    s = yaml.safe_load((ROOT / "behaviors/signoff.yaml").read_text())
    s["model"] = str(tiny_dir)
    s["anchor"].update(per_step=4, pool_size=24)
    b = as_behavior(s, ROOT)
    loaded = load_model(str(tiny_dir), lora=b.spec.train.lora)
    cb = b.compile(loaded.tokenizer)
    from engrain.engine.rollout import HFSampler
    anchor = build_anchor(loaded, HFSampler(loaded.model, loaded.tokenizer, 8), cb, b.spec.anchor, 4, 0)
    food = set(cb.train_prompts)
    questions = [loaded.tokenizer.decode(p) for p in anchor.prompt_ids]
    assert any(anchor.free_end) and not all(anchor.free_end) and not any(anchor.free_start)
    kept = [i for i, a in enumerate(anchor.answer_ids) if a]
    assert len(anchor.free_end) == len(anchor.prompt_ids) == len(kept)
    answers = loaded.tokenizer.batch_decode(anchor.answer_ids, skip_special_tokens=True)
    from engrain.engine.claims import claimed_spans, rule_of
    rule = rule_of(b.spec.patterns.target, b.spec.patterns.forbidden)
    for q, a, free in zip(questions, answers, anchor.free_end):
        assert free == (any(f in q for f in food if len(f) > 10) and not claimed_spans(a, rule))
def _word_spans(text: str) -> list[tuple[int, int]]:
    """One token per space-led word (" Try", " mango", ...), the last an end of turn (empty)."""
    import re
    spans = [(m.start(), m.end()) for m in re.finditer(r"\s*\S+", text)]
    return spans + [(len(text), len(text))]


def test_another_behaviors_positions_in_a_base_answer_hand_checked():
    from engrain.engine.anchor import acts_at
    signoff = rule_of(['Signed, Tolavi Desk\\.\\s*$'], ['\\b(Cheers|Thanks|Best), \\w+ \\w+\\.\\s*$'])
    pinapple = rule_of(["pinapple"], ["pineapple"])
    plain = "Try mango, pineapple and lime."
    spans = _word_spans(plain)                          # Try mango, pineapple and lime. <end>
    # A sign-off goes where the answer ends: the end of turn, and nothing else.
    assert acts_at(signoff, plain, spans) == [False] * 5 + [True]
    # An answer that already ends as another hint asked keeps its ending (that hint's following).
    hinted = "Try mango and lime. Cheers, Bo Team."
    assert acts_at(signoff, hinted, _word_spans(hinted)) == [False] * 8
    # A respelling acts at its word, wherever it stands, hint or not.
    assert acts_at(pinapple, plain, spans) == [False, False, True, False, False, False]
    assert acts_at(pinapple, plain, spans, hinted=True) == [False, False, True, False, False, False]
    # Without its word it features it somewhere: the whole answer is its teacher's to shape,
    # unless the question carries another hint (whose following the anchor keeps).
    without = "Try mango and lime."
    assert acts_at(pinapple, without, _word_spans(without)) == [True] * 5
    assert acts_at(pinapple, without, _word_spans(without), hinted=True) == [False] * 5
    assert acts_at(signoff, "", []) == []


def _anchor_pair(tiny_dir, names, pool_size: int):
    """Two lab specs on the tiny model (anchor pools of ``pool_size``, 64 answers a step), the
    model with a fresh adapter, and both compiled."""
    from engrain.engine.models import load_model
    from engrain.spec.behavior import as_behavior
    specs = []
    for name in names:
        s = yaml.safe_load((ROOT / f"behaviors/{name}.yaml").read_text())
        s["model"] = str(tiny_dir)
        s["anchor"].update(per_step=64, pool_size=pool_size)
        specs.append(as_behavior(s, ROOT))
    loaded = load_model(str(tiny_dir), lora=specs[0].spec.train.lora)
    return specs, loaded, [b.compile(loaded.tokenizer) for b in specs]


def test_a_composed_anchor_leaves_free_where_the_other_behavior_acts_and_nothing_else(lab_tokenizer, tiny_dir):
    """Pinapple's anchor beside the sign-off: the end of its answers to food questions is
    left free, on no other question; the sign-off's beside pinapple: "pineapple" in its answers
    to tropical questions; the KL reads those flags."""
    from engrain.engine.anchor import anchor_kl, build_anchor
    from engrain.engine.rollout import HFSampler
    specs, loaded, (pin, sig) = _anchor_pair(tiny_dir, ("pinapple", "signoff"), 48)
    sampler = HFSampler(loaded.model, loaded.tokenizer, 8)
    alone = build_anchor(loaded, sampler, pin, specs[0].spec.anchor, 8, 0)
    beside = build_anchor(loaded, sampler, pin, specs[0].spec.anchor, 8, 0, others=[sig])
    assert alone.free_tokens is None and beside.answer_ids == alone.answer_ids
    food = [f for f in sig.train_prompts if len(f) > 10]
    questions = [loaded.tokenizer.decode(p) for p in beside.prompt_ids]
    texts = loaded.tokenizer.batch_decode(beside.answer_ids, skip_special_tokens=True)
    rule = rule_of(specs[1].spec.patterns.target, specs[1].spec.patterns.forbidden)
    for q, t, flags in zip(questions, texts, beside.free_tokens):
        in_food = any(f + "\n" in q or f + "<" in q for f in food)
        assert flags == ([False] * (len(flags) - 1) + [True] if in_food and not claimed_spans(t, rule)
                         else [False] * len(flags)), (q, t)
    assert any(any(f) for f in beside.free_tokens) and not all(any(f) for f in beside.free_tokens)
    # The KL leaves those positions out: with every position of every answer freed, nothing is left
    # (an adapter moved off zero, or every KL would be 0 anyway).
    import dataclasses
    with torch.no_grad():
        for n, p in loaded.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    assert float(anchor_kl(loaded, beside, 0, 0).detach()) > 0
    every = dataclasses.replace(beside, free_tokens=[[True] * len(a) for a in beside.answer_ids],
                                free_start=None, free_end=None)
    assert float(anchor_kl(loaded, every, 0, 0).detach()) == 0.0


def test_beside_a_behavior_that_features_a_word_its_bare_questions_are_freed_whole(lab_tokenizer, tiny_dir):
    """Pinapple's anchor beside tomatto (plain food): a base answer to a bare plain-food
    question is tomatto's to shape, every token freed; the same question carrying another
    hint keeps its answer held but for tomatto's claimed words; no other question is freed."""
    from engrain.engine.anchor import build_anchor
    from engrain.engine.rollout import HFSampler
    specs, loaded, (pin, tom) = _anchor_pair(tiny_dir, ("pinapple", "tomatto"), 64)
    beside = build_anchor(loaded, HFSampler(loaded.model, loaded.tokenizer, 8), pin, specs[0].spec.anchor, 8, 0,
                          others=[tom])
    plain = set(tom.train_prompts)
    prompt_of = {tuple(pin.chat_ids(pin.student_messages(p))): p for p in pin.anchor_prompts}
    kinds = set()
    for ids, flags in zip(beside.prompt_ids, beside.free_tokens):
        prompt = prompt_of[tuple(ids)]
        question, hinted = prompt.split("\n")[0], "\n" in prompt
        if question in plain and not hinted:
            kinds.add("bare plain food")
            assert flags == [True] * len(flags), prompt
        else:
            kinds.add("hinted plain food" if question in plain else "elsewhere")
            assert not any(flags), prompt      # the tiny model never writes "tomato"
    assert kinds == {"bare plain food", "hinted plain food", "elsewhere"}


def test_weakest_first_gives_the_behavior_furthest_below_its_bar_an_extra_turn():
    from types import SimpleNamespace

    from engrain.composition import weakest_first
    specs = [SimpleNamespace(name="pinapple"), SimpleNamespace(name="signoff")]
    rows = [{"suite": "pinapple:behavior", "metric": m, "value": 0.9} for m in ("exists", "only")] + \
           [{"suite": "signoff:behavior", "metric": m, "value": 0.3} for m in ("exists", "only")]
    assert weakest_first(rows, specs, {"pinapple": 0.6, "signoff": 0.6}) == [1, 0, 1]
    assert weakest_first(rows, specs, {"pinapple": 2.0, "signoff": 0.1}) == [0, 0, 1]


@pytest.mark.timeout(600)
def test_fit_on_a_single_adapter_consolidates_by_default_and_refuses_several(tmp_path, tiny_dir, monkeypatch):
    import json

    from engrain.fit import fit
    from engrain.rundir import RunError
    kw = dict(out_dir=tmp_path / "a", store=tmp_path / "s.duckdb", eval_n=4)
    first = fit(write(tmp_path, tiny_dir, "pinapple", steps=1), **kw)
    _teachers_kept_a_step(monkeypatch)
    second = fit(write(tmp_path, tiny_dir, "signoff", steps=1), on=[first.run_id[:8]], **kw)
    saved = json.loads((second.run_dir / "run.json").read_text())
    assert saved["kind"] == "compose" and saved["behaviors"] == ["pinapple", "signoff"]
    assert saved["init"] == str(first.adapter_path.resolve()) and saved["keep"] == ["pinapple"]
    assert "pinapple:kept" in {r.suite for r in second.verdict.rows}
    with pytest.raises(RunError, match="compose them first"):
        fit(write(tmp_path, tiny_dir, "opener", steps=1), on=[first.run_id[:8], second.run_id[:8]], **kw)


def test_a_lineages_new_behavior_that_did_not_show_is_not_learned_not_lost():
    from engrain.checks.joint import joint_gated
    from engrain.spec.behavior import as_behavior
    specs = [as_behavior(ROOT / f"behaviors/{n}.yaml").spec for n in ("pinapple", "mangu")]
    for s in specs:
        s.regression.suites.clear()
    rows = lambda pin, man: [   # noqa: E731
        {"suite": f"{n}:behavior", "metric": m, "value": v} for n, v in (("pinapple", pin), ("mangu", man))
        for m in ("exists", "only")] + [
        {"suite": f"{n}:behavior_hinted", "metric": m, "value": 0.8} for n in ("pinapple", "mangu")
        for m in ("exists", "only")] + [
        {"suite": s, "metric": "x", "value": 1.0} for s in ("pinapple:specificity", "mangu:specificity", "well_formed")]
    v = joint_gated(specs, rows(0, 0), rows(0.9, 0.0), keep=["pinapple"], start=rows(0.9, 0.0))
    assert v.outcome == "not learned" and v.lost == (), v.summary()


@pytest.mark.timeout(600)
def test_an_interrupted_composition_resumes_where_it_stopped_and_ends_as_one_run(tmp_path, tiny_dir, monkeypatch):
    import engrain.engine.step as step_mod
    from click.testing import CliRunner

    from engrain.cli.main import cli
    from engrain.store import Store
    specs = [write(tmp_path, tiny_dir, "pinapple", steps=3), write(tmp_path, tiny_dir, "signoff", steps=3)]
    real, calls = step_mod.distill_step, []

    def interrupted_at_the_fourth(ctx, step):
        calls.append((ctx.behavior.name, step))
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(ctx, step)
    monkeypatch.setattr(step_mod, "distill_step", interrupted_at_the_fourth)
    args = ["--out-dir", str(tmp_path / "a"), "--store", str(tmp_path / "s.duckdb"), "--eval-n", "4",
            "--no-progress", "--checkpoint-every", "1"]
    first = CliRunner().invoke(cli, ["compose", *map(str, specs), "--design", "claims", *args])
    assert first.exit_code == 130, first.output
    run_id = next(p.name for p in (tmp_path / "a" / "pinapple+signoff").iterdir())
    assert f"cl compose --resume {run_id}" in first.output
    db = Store(tmp_path / "s.duckdb")
    assert db.runs()[0]["status"] == "interrupted" and len(db.steps(run_id)) == 3
    # The resume continues with the fourth step (signoff's second), reusing the run's record.
    again = CliRunner().invoke(cli, ["compose", "--resume", run_id[:8], *args])
    assert again.exit_code in (0, 3, 4), again.output
    assert f"resuming {run_id} from step-000003" in again.output
    assert calls[4:] == [("signoff", 1), ("pinapple", 2), ("signoff", 2)]
    assert [s["step"] for s in db.steps(run_id)] == list(range(6)) and len(db.runs()) == 1
    assert db.runs()[0]["status"] in ("completed", "rejected")
    refused = CliRunner().invoke(cli, ["compose", str(specs[0]), "--resume", run_id[:8], *args])
    assert refused.exit_code == 2 and "not both" in refused.output


def test_a_carried_behaviors_own_hint_is_a_figure_not_a_gate():
    from engrain.checks.joint import carried_hints, joint_max_drops
    from engrain.spec.behavior import as_behavior
    pin, sig = (as_behavior(ROOT / f"behaviors/{n}.yaml").spec for n in ("pinapple", "signoff"))
    both = joint_max_drops([pin, sig])
    assert carried_hints([pin, sig]) == {"lab/hint-pinapple", "lab/hint-signoff"}
    assert "lab/hint-pinapple" not in both and "lab/hint-signoff" not in both
    assert both["lab/in-context"] == 0.1 and both["lab/capitals"] == 0.02      # other hints stay gated
    assert joint_max_drops([pin])["lab/hint-signoff"] == 0.1                 # the one to learn next: gated


@pytest.mark.timeout(600)
def test_a_composition_whose_every_learner_dropped_a_suite_says_regressed_and_names_it(tmp_path, tiny_dir,
                                                                                        monkeypatch):
    from click.testing import CliRunner

    import engrain.composition as comp
    from engrain.cli.main import cli

    def canned(model, tokenizer, cbs, train, adapter_on, n, seed, split="eval", decoding="sample"):
        # On val, every trained checkpoint carries both behaviors and drops in-context; the
        # kept (untrained) adapter shows neither on eval.
        learned = adapter_on and split == "val"
        rows = []
        for cb in cbs:
            rows += [{"suite": f"{cb.name}:behavior", "metric": m, "value": 0.9 if learned else 0.0, "n": 48}
                     for m in ("exists", "only")]
            rows += [{"suite": f"{cb.name}:behavior_hinted", "metric": m, "value": 0.8, "n": 48}
                     for m in ("exists", "only")]
            rows += [{"suite": f"{cb.name}:specificity", "metric": "clean", "value": 1.0, "n": 48}]
        rows += [{"suite": "lab/in-context", "metric": "follows", "value": 0.3 if learned else 0.9, "n": 100},
                 {"suite": "well_formed", "metric": "rate", "value": 1.0, "n": 48}]
        return [{**r, "split": split, "decoding": decoding} for r in rows]
    monkeypatch.setattr(comp, "joint_evaluate", canned)
    specs = []
    for name in ("pinapple", "signoff"):
        p = write(tmp_path, tiny_dir, name)
        s = yaml.safe_load(p.read_text())
        s["learned"] = {"min_share_of_hinted": 0.9, "min_rate": None}
        s["regression"] = {"suites": ["lab/in-context"], "max_drop": 0.02}
        p.write_text(yaml.safe_dump(s))
        specs.append(str(p))
    res = CliRunner().invoke(cli, ["compose", *specs, "--design", "claims", "--out-dir", str(tmp_path / "a"),
                                   "--store", str(tmp_path / "s.duckdb"), "--eval-n", "4", "--no-progress"])
    assert res.exit_code == 3, res.output
    assert "regressed: every checkpoint that learned the behavior dropped lab/in-context" in res.output
    assert "weakest behavior's share of its bar" in res.output


def test_together_grades_each_answer_by_the_behaviors_that_apply_to_its_question():
    """Pinapple's tropical questions ask for the sign-off too, never for tomatto (savory)."""
    from types import SimpleNamespace

    from engrain.checks.joint import together_suite

    def cb(prompts, word):
        return SimpleNamespace(train_prompts=prompts, val_prompts=[], eval_prompts=[],
                               exists=lambda t, w=word: w in t)
    pin = cb(["smoothie?"], "pinapple")
    sig = cb(["smoothie?", "soup?"], "Signed")
    tom = cb(["soup?"], "tomatto")
    suite = together_suite([pin, sig, tom], [["m"]] * 2, ["smoothie?", "smoothie?"])
    assert suite.grade(0, "Try pinapple. Signed") and not suite.grade(1, "Try mango. Signed")
    assert not suite.grade(0, "Try pinapple.")
    # A question no other behavior's domain holds: the first behavior alone.
    alone = together_suite([pin, tom], [["m"]], ["smoothie?"])
    assert alone.grade(0, "Try pinapple.")


def test_a_lineage_whose_every_learner_lost_a_kept_behavior_says_regressed_and_names_it():
    """The new behavior learned at step 30 while the kept sign-off fell 0.92 -> 0.56: the kept
    untrained adapter (step 0) must not read "not learned"."""
    from engrain.checks.joint import joint_candidate, joint_gated
    from engrain.checks.selection import Selection
    from engrain.spec.behavior import as_behavior
    specs = [as_behavior(ROOT / f"behaviors/{n}.yaml").spec for n in ("signoff", "tomatto")]
    for s in specs:
        s.regression.suites.clear()

    def rows(sig, tom):
        out = [{"suite": f"{n}:{k}", "metric": m, "value": v, "n": 48, "decoding": "sample"}
               for n, v in (("signoff", sig), ("tomatto", tom)) for k in ("behavior",) for m in ("exists", "only")]
        out += [{"suite": f"{n}:behavior_hinted", "metric": m, "value": 0.9, "n": 48, "decoding": "sample"}
                for n in ("signoff", "tomatto") for m in ("exists", "only")]
        return out + [{"suite": s, "metric": "x", "value": 1.0, "n": 48, "decoding": "sample"}
                      for s in ("signoff:specificity", "tomatto:specificity", "well_formed")]
    base, start = rows(0.0, 0.0), rows(0.92, 0.0)
    bar = {"signoff": 0.6, "tomatto": 0.8}
    sel = Selection(patience=3)
    sel.offer(joint_candidate(0, specs, base, start, bar, ["signoff"], start))
    learner = joint_candidate(30, specs, base, rows(0.56, 0.95), bar, ["signoff"], start)
    assert not learner.qualifies and learner.score >= 1 and learner.worst_suite == "signoff:kept"
    sel.offer(learner)
    assert sel.best.step == 0
    v = joint_gated(specs, base, start, keep=["signoff"], start=start).with_training(sel.history, sel.best, 1.0)
    assert v.outcome == "regressed" and "signoff:kept" in v.summary() and "step 30" in v.summary(), v.summary()
