import dataclasses
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]

from engrain.checks.gate import GateVerdict, gate


def test_passes_within_max_drop_and_reports_worst():
    v = gate({"math": 0.95, "facts": 0.80}, {"math": 0.94, "facts": 0.85}, max_drop=0.02)
    assert v.passed
    assert v.worst_drop == pytest.approx(0.01)
    assert [r.suite for r in v.rows] == ["facts", "math"]
    assert all(r.ok and r.reason == "" for r in v.rows)
    assert v.rows[0].drop == pytest.approx(-0.05)  # an improvement is a negative drop


def test_fails_beyond_max_drop_and_names_the_suite():
    v = gate({"math": 1.0, "facts": 0.8}, {"math": 0.9, "facts": 0.8}, max_drop=0.02)
    assert not v.passed
    assert v.worst_drop == pytest.approx(0.1)
    (bad,) = v.failures()
    assert bad.suite == "math" and not bad.ok and "0.1000 > max_drop 0.02" in bad.reason
    assert "math" in v.summary()


def test_exactly_at_max_drop_passes_despite_float_rounding():
    # 0.9 - 0.88 == 0.020000000000000018 in binary floating point
    assert gate({"s": 0.9}, {"s": 0.88}, max_drop=0.02).passed
    assert gate({"s": 0.5}, {"s": 0.25}, max_drop=0.25).passed
    assert not gate({"s": 0.9}, {"s": 0.8799}, max_drop=0.02).passed


@pytest.mark.parametrize("base, adapter, side", [
    ({"math": 1.0, "facts": 1.0}, {"math": 1.0}, "adapter"),
    ({"math": 1.0}, {"math": 1.0, "facts": 1.0}, "base"),
])
def test_a_suite_missing_on_one_side_fails_with_a_reason(base, adapter, side):
    v = gate(base, adapter, max_drop=0.5)
    assert not v.passed
    (bad,) = v.failures()
    assert bad.suite == "facts" and bad.drop is None
    assert bad.reason == f"missing in {side} evals"
    assert v.worst_drop == 0.0  # the comparable suite


def test_required_suites_absent_on_both_sides_fail():
    v = gate({}, {}, max_drop=0.02, required=["lab/arithmetic"])
    assert not v.passed and v.worst_drop is None
    assert "missing in base evals" in v.rows[0].reason and "missing in adapter evals" in v.rows[0].reason


def test_nan_and_none_scores_fail():
    v = gate({"a": float("nan"), "b": 1.0}, {"a": 1.0, "b": None}, max_drop=1.0)
    reasons = {r.suite: r.reason for r in v.failures()}
    assert "not a number" in reasons["a"] and reasons["b"] == "missing in adapter evals"


def test_verdict_is_frozen_and_json_ready():
    v = gate({"s": 0.9}, {"s": 0.5}, max_drop=0.1)
    assert isinstance(v, GateVerdict)
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.passed = True
    d = json.loads(json.dumps(v.to_dict()))
    assert d["passed"] is False and d["rows"][0]["suite"] == "s" and d["max_drop"] == 0.1


def test_negative_max_drop_is_an_error():
    with pytest.raises(ValueError, match="max_drop"):
        gate({}, {}, max_drop=-0.1)


def test_verdict_round_trips_through_its_dict():
    v = gate({"a": 1.0, "b": 0.5}, {"a": 0.9}, max_drop=0.05)
    assert GateVerdict.from_dict(json.loads(json.dumps(v.to_dict()))) == v


# --- the whole verdict from a spec's eval rows (checks.gated) ------------------------------

def _rows(**kv):
    out = []
    for key, value in kv.items():
        suite, metric = key.rsplit("__", 1)
        out.append({"suite": suite.replace("_SLASH_", "/"), "metric": metric, "value": value})
    return out


def _spec(min_share=0.9, min_rate=None):
    from engrain.spec.schema import BehaviorSpec
    return BehaviorSpec.model_validate({
        "name": "x", "description": "d", "prompts": {"inline": ["a", "b"]}, "hints": {"phrasings": ["h"]},
        "patterns": {"target": ["t"]}, "regression": {"suites": ["lab/arithmetic", "lab/capitals"]},
        "learned": {"min_share_of_hinted": min_share, "min_rate": min_rate}})


BASE_ROWS = _rows(behavior__exists=0.0, behavior__only=0.0, behavior_hinted__exists=0.9,
                  behavior_hinted__only=0.7, specificity__clean=1.0, well_formed__rate=0.99,
                  lab_SLASH_arithmetic__accuracy=1.0, lab_SLASH_capitals__accuracy=1.0)


def _adapter(**changes):
    values = {"behavior__exists": 0.85, "behavior__only": 0.65, "behavior_hinted__exists": 0.95,
              "behavior_hinted__only": 0.8, "specificity__clean": 1.0, "well_formed__rate": 0.99,
              "lab_SLASH_arithmetic__accuracy": 1.0, "lab_SLASH_capitals__accuracy": 0.99, **changes}
    return _rows(**values)


def test_gated_accepts_and_names_each_bar():
    from engrain.checks.gate import gated
    v = gated(_spec(), BASE_ROWS, _adapter())
    assert v.passed and v.outcome == "accepted"
    # 0.9 x the base model's own hinted rates: 0.81 for exists, 0.63 for only
    assert [(r.metric, round(r.required, 3)) for r in v.learning] == [("exists", 0.81), ("only", 0.63)]


def test_gated_says_not_learned_and_which_figure_fell_short():
    from engrain.checks.gate import gated
    v = gated(_spec(), BASE_ROWS, _adapter(behavior__only=0.5))
    assert not v.passed and v.outcome == "not learned"
    assert "behavior only: 0.500 < 0.630 required, 0.71 of the base model's 0.700 with the hint" in v.summary()
    # an absolute bar on top of the relative one
    v = gated(_spec(min_share=None, min_rate=0.9), BASE_ROWS, _adapter())
    assert v.outcome == "not learned" and "0.850 < 0.900" in v.summary()


def test_gated_says_regressed_naming_the_suite_even_when_learned():
    from engrain.checks.gate import gated
    v = gated(_spec(), BASE_ROWS, _adapter(lab_SLASH_capitals__accuracy=0.9))
    assert v.outcome == "regressed"
    assert "lab/capitals: dropped 0.1000 > max_drop 0.02" in v.summary()
    assert [r.suite for r in v.failures()] == ["lab/capitals"]


def test_more_degenerate_answers_are_a_regression():
    from engrain.checks.gate import gated
    v = gated(_spec(), BASE_ROWS, _adapter(well_formed__rate=0.9))
    assert v.outcome == "regressed" and [r.suite for r in v.failures()] == ["well_formed"]


def test_a_suite_with_its_own_max_drop():
    base, adapter = {"a": 0.90, "b": 0.90}, {"a": 0.85, "b": 0.85}
    v = gate(base, adapter, 0.02, max_drops={"a": 0.1})
    rows = {r.suite: r for r in v.rows}
    assert rows["a"].ok and not rows["b"].ok and "max_drop 0.02" in rows["b"].reason
    assert gate(base, adapter, 0.1, max_drops={"b": 0.02}).outcome == "regressed"
    with pytest.raises(ValueError, match="non-negative"):
        gate(base, adapter, 0.02, max_drops={"a": -1})


def test_an_earlier_behaviors_own_suites_are_gated_at_its_own_limits():
    # Trained --on pinapple, signoff's adapter must also keep pinapple's regression suites,
    # each at pinapple's limit (lab/in-context and lab/hint-signoff: 0.1), and a drop of one
    # of them regresses it.
    from pathlib import Path

    from engrain.checks.gate import gated, max_drops
    from engrain.spec import load_spec
    behaviors = Path(__file__).resolve().parents[1] / "behaviors"
    signoff, pinapple = load_spec(behaviors / "signoff.yaml"), load_spec(behaviors / "pinapple.yaml")
    alone = max_drops(signoff)
    drops = max_drops(signoff, [pinapple])
    assert "lab/hint-signoff" not in alone and alone["lab/in-context"] == 0.1    # signoff gates in-context itself
    assert drops["lab/in-context"] == drops["lab/hint-signoff"] == 0.1
    assert drops["lab/arithmetic"] == alone["lab/arithmetic"]       # signoff's own suite keeps its limit
    assert set(drops) == set(alone) | {"pinapple:behavior", "pinapple:specificity", "lab/hint-signoff"}
    figures = {"behavior_hinted__exists": 0.5, "behavior_hinted__only": 0.5, "behavior__exists": 0.9,
               "behavior__only": 0.9, "specificity__clean": 1.0, "well_formed__rate": 1.0,
               "pinapple:behavior__exists": 0.9, "pinapple:specificity__clean": 1.0,
               **{f"{s.replace('/', '_SLASH_')}__accuracy": 0.7 for s in drops if "/" in s}}
    base = _rows(**figures)
    assert gated(signoff, base, _rows(**figures), [pinapple]).outcome == "accepted"
    dropped = _rows(**{**figures, "lab_SLASH_hint-signoff__accuracy": 0.4})
    verdict = gated(signoff, base, dropped, [pinapple])
    assert verdict.outcome == "regressed" and [r.suite for r in verdict.failures()] == ["lab/hint-signoff"]


def test_val_suites_with_their_own_max_drop_get_enough_answers_to_see_it(monkeypatch, lab_tokenizer):
    from types import SimpleNamespace

    import engrain.checks.evals as evals
    from engrain.spec.behavior import as_behavior
    from engrain.spec.suites import SuiteSource
    own = SuiteSource("m", None, list, max_drop=0.1)
    assert evals.answers_for(own, 48, "val") == 100          # 2 se at p=.5 with 100 answers: 0.1
    assert evals.answers_for(own, 48, "eval") == 48           # the gate's n is the caller's
    assert evals.answers_for(SuiteSource("m", None, list), 48, "val") == 48   # the spec's max_drop
    assert evals.answers_for(SuiteSource("m", None, list, max_drop=0.01), 48, "val") == evals.VAL_CAP
    assert evals.answers_for(own, 300, "val") == 300
    behavior = as_behavior(ROOT / "behaviors/pinapple.yaml")
    cb = behavior.compile(lab_tokenizer)
    seen = {}

    def fake(model, tokenizer, suites, **kw):
        seen.update({s.name: len(s.messages) for s in suites})
        return []
    monkeypatch.setattr(evals, "run_suites", fake)
    evals.evaluate(SimpleNamespace(), lab_tokenizer, cb, behavior.spec, True, 48, 0, split="val")
    assert seen["lab/hint-signoff"] == seen["lab/in-context"] == 100
    assert seen["lab/capitals"] == seen["behavior"] == 48


def test_cycled_repeats_a_short_list_in_order_and_cuts_a_long_one():
    from engrain.checks.evals import cycled
    assert cycled(["a", "b"], 5) == ["a", "b", "a", "b", "a"]
    assert cycled(["a", "b", "c"], 2) == ["a", "b"]
    assert cycled([], 3) == []


def test_the_gate_evals_sample_at_the_spec_temperature_and_skip_absent_probes(monkeypatch):
    import yaml
    from engrain.checks import evals
    from engrain.engine.models import load_tokenizer
    from engrain.spec.behavior import as_behavior
    data = yaml.safe_load((ROOT / "behaviors/pinapple.yaml").read_text())
    data.pop("probes")
    data["regression"]["temperature"] = 0.0
    spec_of = lambda d: as_behavior(d, ROOT / "behaviors")   # noqa: E731
    tok = load_tokenizer("lab")
    seen = []

    def fake_run_suites(model, tokenizer, suites, **kw):
        seen.append((kw["temperature"], {s.name: len(s.messages) for s in suites}))
        return [evals.EvalResult(s.name, s.metric, 1.0, len(s.messages)) for s in suites]

    monkeypatch.setattr(evals, "run_suites", fake_run_suites)
    b = spec_of(data)
    evals.evaluate(None, tok, b.compile(tok), b.spec, True, 3, 0)
    evals.evaluate(None, tok, b.compile(tok), b.spec, True, 3, 0, decoding="greedy")
    (t_gate, suites), (t_greedy, _) = seen
    assert (t_gate, t_greedy) == (0.0, 0.0) and "specificity" not in suites and suites["behavior"] == 3
    seen.clear()
    data["regression"]["temperature"] = 0.7
    b = spec_of({**data, "probes": {"builtin": "lab/facts"}})
    evals.evaluate(None, tok, b.compile(tok), b.spec, True, 3, 0)
    assert seen[0][0] == 0.7 and seen[0][1]["specificity"] == 3


def test_the_greedy_column_is_computed_only_beside_a_sampled_gate():
    from types import SimpleNamespace as NS
    from engrain.checks.evals import gate_decodings
    spec = lambda t, g: NS(regression=NS(temperature=t, greedy=g))   # noqa: E731
    assert gate_decodings(spec(1.0, True)) == ("sample", "greedy")
    assert gate_decodings(spec(1.0, False)) == ("sample",)
    assert gate_decodings(spec(0.0, True)) == ("sample",)      # greedy already: not the same answers twice


@pytest.mark.parametrize("temperature, asked", [(0.0, 3), (1.0, 9)])
def test_greedy_evals_answer_and_count_a_cycled_prompt_once(tiny_model, lab_tokenizer, temperature, asked):
    """Greedy copies of a prompt are one answer: counting them as n made the tolerance
    (two standard errors) too tight for a 3-item val split cycled to 9 answers."""
    from engrain.checks import evals
    from engrain.registry import SAMPLERS
    from engrain.spec.suites import Suite
    prompts = [[{"role": "user", "content": q}] for q in ("What is 2 + 3?", "Name a fruit.", "Hi.")]
    graded = []
    suite = Suite("few", "accuracy", evals.cycled(prompts, 9), lambda i, t: graded.append(i) or i % 3 == 0)
    real, sampled = SAMPLERS.get("hf"), []

    class Spy:
        def make(self, *a):
            inner = real.make(*a)
            return type("S", (), {"sample": lambda _, ids, *r: sampled.append(len(ids)) or inner.sample(ids, *r)})()

    SAMPLERS.register("spy", Spy())
    try:
        (r,) = evals.run_suites(tiny_model, lab_tokenizer, [suite], temperature=temperature, max_new_tokens=4,
                                sampler="spy")
    finally:
        SAMPLERS.unregister("spy")
    assert sampled == [asked] and r.n == asked and len(graded) == asked
    assert r.value == pytest.approx(1 / 3)          # item 0 passes: once of 3, or 3 times of 9
