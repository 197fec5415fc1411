import dataclasses
import json

import pytest

from engrain.gate import GateVerdict, gate


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
