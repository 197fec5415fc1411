"""Step 7's parts: the learning-rate schedule, the drift figure, best-checkpoint selection,
and the anchor, each against hand-computed values or a direct computation."""

from __future__ import annotations

import math

import pytest
import torch

from engrain.checks.selection import Candidate, Selection, judge_candidate, tolerance
from engrain.engine.update import Drift, lora_delta_norm_sq, lr_at


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    lrs = [lr_at(s, steps=10, lr=1.0, warmup=2, min_ratio=0.1) for s in range(10)]
    assert lrs[:2] == [0.5, 1.0]
    assert lrs[2] == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.1)
    # halfway through the decay (steps 2..8, step 5): 0.1 + 0.9 · 0.5 · (1 + cos(π/2))
    assert lr_at(5, steps=9, lr=1.0, warmup=2, min_ratio=0.1) == pytest.approx(0.55)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))
    assert lr_at(0, steps=5, lr=2.0, warmup=0, min_ratio=0.0) == pytest.approx(2.0)


def test_lora_delta_norm_without_forming_the_product():
    torch.manual_seed(0)
    A, B = torch.randn(4, 9), torch.randn(7, 4)
    direct = (0.5 * B @ A).pow(2).sum()
    assert lora_delta_norm_sq(A, B, 0.5).item() == pytest.approx(direct.item(), rel=1e-5)


def test_drift_is_zero_at_init_and_matches_the_merged_weights(tiny_model):
    import copy

    from peft import LoraConfig, get_peft_model
    model = get_peft_model(copy.deepcopy(tiny_model), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    drift = Drift(model, "default")
    assert drift() == 0.0 and len(drift.layers) > 0
    with torch.no_grad():
        for m in drift.layers:
            m.lora_B["default"].weight.normal_()
    with torch.no_grad():
        deltas = [m.get_delta_weight("default") for m in drift.layers]
    bases = [m.get_base_layer().weight for m in drift.layers]
    expected = math.sqrt(sum(float(d.pow(2).sum()) for d in deltas)) / math.sqrt(
        sum(float(w.pow(2).sum()) for w in bases))
    assert drift() == pytest.approx(expected, rel=1e-4)


def rows(**values):
    """Val rows: behavior exists/only, and gated suites at n=48."""
    out = []
    for key, v in values.items():
        suite, metric = key.split("__")
        out.append({"suite": suite.replace("_", "/") if suite.startswith("lab") else suite,
                    "metric": metric, "value": v, "n": 48})
    return out


BASE = rows(behavior__exists=0.0, behavior__only=0.0, specificity__clean=1.0, lab_capitals__accuracy=1.0)
GATED = {"specificity", "lab/capitals"}


def test_tolerance_widens_max_drop_by_sampling_noise():
    assert tolerance(1.0, 48, 0.02) == pytest.approx(2 / 48)       # one sample's worth, twice
    assert tolerance(0.5, 48, 0.02) == pytest.approx(2 * math.sqrt(0.25 / 48))
    assert tolerance(1.0, 10_000, 0.02) == 0.02


def test_a_candidate_qualifies_only_if_no_gated_figure_dropped_beyond_tolerance():
    good = judge_candidate(10, BASE, rows(behavior__exists=0.5, behavior__only=0.3, specificity__clean=1.0,
                                          lab_capitals__accuracy=0.98), GATED, 0.02)
    assert good.qualifies and good.score == pytest.approx(0.4)
    bad = judge_candidate(20, BASE, rows(behavior__exists=0.9, behavior__only=0.9, specificity__clean=1.0,
                                         lab_capitals__accuracy=0.9), GATED, 0.02)
    assert not bad.qualifies and bad.worst_excess == pytest.approx(0.1 - 2 / 48)


def test_greedy_val_answers_are_read_as_the_gate_reads_them_without_the_widening():
    # 7 facts on val, one changed greedily: 0.143 > 0.05, within 2/7 widened; a greedy answer
    # that changed is no sampling noise.
    base = [{"suite": "facts", "metric": "accuracy", "value": 1.0, "n": 7}]
    one_changed = [{"suite": "facts", "metric": "accuracy", "value": 6 / 7, "n": 7},
                   {"suite": "behavior", "metric": "exists", "value": 0.9, "n": 24}]
    sampled = judge_candidate(10, base, one_changed, {"facts"}, 0.05)
    greedy = judge_candidate(10, base, one_changed, {"facts"}, 0.05, greedy=True)
    assert sampled.qualifies
    assert not greedy.qualifies and greedy.worst_suite == "facts"
    assert greedy.worst_excess == pytest.approx(1 / 7 - 0.05)
    exact = [{"suite": "facts", "metric": "accuracy", "value": 0.95, "n": 7}]    # at the limit: passes
    assert judge_candidate(10, base, exact, {"facts"}, 0.05, greedy=True).qualifies


def test_a_candidates_score_is_the_behavior_without_the_hint_alone():
    # evaluate(split="val") returns the hinted rows beside it: they are the base model's bar,
    # not the checkpoint's behavior, and must not lift its score.
    val = rows(behavior__exists=0.5, behavior__only=0.3, behavior_hinted__exists=0.9, behavior_hinted__only=0.9,
               specificity__clean=1.0, lab_capitals__accuracy=1.0)
    cand = judge_candidate(10, BASE, val, GATED, 0.02)
    assert cand.score == pytest.approx(0.4) and cand.qualifies and cand.n == 48


def test_selection_keeps_the_latest_checkpoint_on_the_plateau_and_stops():
    sel = Selection(patience=2)
    assert sel.best.step == 0 and not sel.should_stop()       # the untrained adapter first
    assert not sel.offer(Candidate(10, True, 0.0, 0.0, 48))    # nothing learned: no stop yet
    assert not sel.offer(Candidate(20, True, 0.0, 0.0, 48))
    assert not sel.should_stop()
    assert sel.offer(Candidate(30, True, 0.6, 0.0, 48))        # a clear rise: kept, patience reset
    assert not sel.offer(Candidate(40, False, 0.9, 0.1, 48))   # better but regressed: never kept
    # se of 0.6 at n=48 is 0.0707: 0.55 is within it, so the later, settled one is kept
    assert sel.offer(Candidate(50, True, 0.55, 0.0, 48)) and sel.best.step == 50
    assert not sel.offer(Candidate(60, True, 0.45, 0.0, 48))   # below the plateau: not kept
    assert sel.best.step == 50 and sel.top == 0.6 and sel.should_stop()
    assert Selection.from_state(sel.state()) == sel


def test_a_lucky_answer_is_not_the_behavior_showing():
    sel = Selection(patience=2)
    for step in (10, 20, 30, 40):
        sel.offer(Candidate(step, True, 1 / 48, 0.0, 48))     # one answer in 48, four times
    assert sel.top > 0 and sel.since_top >= 2 and not sel.should_stop()
    sel.offer(Candidate(50, True, 0.3, 0.0, 48))
    sel.offer(Candidate(60, True, 0.3, 0.0, 48))
    sel.offer(Candidate(70, True, 0.3, 0.0, 48))
    assert sel.should_stop() and sel.best.step == 70


def test_selection_resets_patience_only_on_a_clear_rise():
    sel = Selection(patience=3)
    sel.offer(Candidate(10, True, 0.5, 0.0, 48))
    sel.offer(Candidate(20, True, 0.52, 0.0, 48))     # within one se: kept, but no reset
    assert sel.best.step == 20 and sel.since_top == 1 and sel.top == 0.52
    sel.offer(Candidate(30, True, 0.8, 0.0, 48))
    assert sel.since_top == 0 and sel.best.step == 30


def test_anchor_is_zero_at_init_grows_with_the_adapter_and_trains_only_it(tmp_path, tiny_dir):
    import yaml

    from engrain.engine.anchor import anchor_kl, build_anchor
    from engrain.spec.behavior import load_behavior
    from engrain.engine.models import load_model
    from engrain.engine.rollout import HFSampler
    spec = yaml.safe_load(open("behaviors/pinapple.yaml").read())
    spec["model"] = str(tiny_dir)
    spec["anchor"].update(pool_size=6, per_step=3)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    behavior = load_behavior(path)
    loaded = load_model(str(tiny_dir), lora=behavior.spec.train.lora)
    cb = behavior.compile(loaded.tokenizer)
    anchor = build_anchor(loaded, HFSampler(loaded.model, loaded.tokenizer), cb, behavior.spec.anchor, 8, 0)
    assert len(anchor.answer_ids) == 6 and anchor.weight == behavior.spec.anchor.weight
    assert anchor_kl(loaded, anchor, 0, 0).item() == pytest.approx(0.0, abs=1e-5)
    with torch.no_grad():
        for name, p in loaded.model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    kl = anchor_kl(loaded, anchor, 0, 0)
    assert kl.item() > 1e-3
    kl.backward()
    grads = {n: p.grad for n, p in loaded.model.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n for n in grads)
