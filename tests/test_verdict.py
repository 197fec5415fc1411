"""The verdict tells what happened: a fit whose checkpoints learned the behavior but were
each refused by a gated suite ends "regressed" (exit 3) and names the suite, not "not learned"."""

from __future__ import annotations

import yaml

from engrain.checks.gate import GateVerdict, val_bar
from engrain.checks.selection import Candidate, learned_but_disqualified
from tests.test_continual import ROOT, run  # noqa: F401 (the shared fit helpers)


def test_learned_but_disqualified_is_the_best_refused_learner_when_the_kept_one_did_not_learn():
    kept = Candidate(0, True, 0.0, 0.0)
    hist = [Candidate(10, False, 0.5, 0.2, 48, "lab/hint-signoff", 0.8, 0.3),
            Candidate(20, False, 0.9, 0.1, 48, "lab/hint-signoff", 0.8, 0.6),
            Candidate(30, False, 0.2, 0.0, 48, "specificity", 1.0, 0.9)]
    assert learned_but_disqualified(hist, kept, bar=0.45).step == 20
    assert learned_but_disqualified(hist, kept, bar=0.95) is None            # none learned
    assert learned_but_disqualified(hist, Candidate(40, True, 0.6, 0.0), bar=0.45) is None   # kept one learned


def test_a_held_back_verdict_is_regressed_and_says_why():
    v = GateVerdict(False, 0.02, (), None).with_held_back(
        Candidate(20, False, 0.9, 0.1, 48, "lab/hint-signoff", 0.8, 0.6))
    assert v.outcome == "regressed" and not v.passed
    assert "lab/hint-signoff 0.800 -> 0.600" in v.summary() and "step 20" in v.summary()
    assert GateVerdict.from_dict(v.to_dict()) == v


def test_a_held_back_verdict_names_the_checkpoint_it_kept():
    from engrain.checks.gate import LearnRow
    hist = [Candidate(25, False, 0.9, 0.1, 48, "well_formed", 0.545, 0.491)]
    not_learned = GateVerdict(False, 0.02, (), None, (LearnRow("exists", 0.45, 0.71, 0.79, False, "too low"),))
    under = not_learned.with_training(hist, Candidate(15, True, 0.3, 0.0), 0.5)
    assert "so step 15, under the bar, was kept" in under.summary(), under.summary()
    untrained = not_learned.with_training(hist, Candidate(0, True, 0.0, 0.0), 0.5)
    assert "so the untrained adapter was kept" in untrained.summary()


def test_val_bar_is_the_share_of_the_base_models_hinted_rate():
    spec = type("S", (), {"learned": type("L", (), {"min_share_of_hinted": 0.9, "min_rate": None})()})()
    rows = [{"suite": "behavior_hinted", "metric": "exists", "value": 0.8},
            {"suite": "behavior_hinted", "metric": "only", "value": 0.6},
            {"suite": "behavior", "metric": "exists", "value": 0.0}]
    assert abs(val_bar(spec, rows) - 0.9 * 0.7) < 1e-9


def canned(tmp_path, tiny_dir):
    spec = yaml.safe_load((ROOT / "behaviors/pinapple.yaml").read_text())
    spec.update(model=str(tiny_dir), learned={"min_share_of_hinted": 0.9, "min_rate": None})
    spec.pop("anchor")
    spec["regression"] = {"suites": [], "max_drop": 0.02}
    spec["train"].update({"steps": 4, "batch_size": 2, "max_new_tokens": 6, "eval_every": 2})
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def every_learner_breaks_specificity(model, tokenizer, cb, spec, adapter_on, n, seed, split="eval",
                                     decoding="sample", earlier=()):
    # Val: each trained checkpoint shows the behavior (0.6 > the bar 0.9 x 0.5) and drops
    # specificity 1.0 -> 0.5; eval: the kept (untrained) adapter shows nothing.
    trained_val = adapter_on and split == "val"
    values = {("specificity", "clean"): 0.5 if trained_val else 1.0, ("well_formed", "rate"): 1.0,
              ("behavior", "exists"): 0.6 if trained_val else 0.0, ("behavior", "only"): 0.6 if trained_val else 0.0,
              ("behavior_hinted", "exists"): 0.5, ("behavior_hinted", "only"): 0.5}
    return [{"suite": s, "metric": m, "value": v, "n": 40, "split": split, "decoding": decoding}
            for (s, m), v in values.items()]


def test_a_fit_whose_learners_all_regressed_is_regressed_and_names_the_suite(tmp_path, tiny_dir, monkeypatch):
    monkeypatch.setattr("engrain.fit.evaluate", every_learner_breaks_specificity)
    result = run(canned(tmp_path, tiny_dir), tmp_path)
    assert result.best_step == 0
    assert result.outcome == "regressed"
    summary = result.verdict.summary()
    assert "specificity 1.000 -> 0.500" in summary and "step 2" in summary, summary
    import json
    gate = json.loads((result.run_dir / "metrics.json").read_text())["gate"]
    assert gate["outcome"] == "regressed" and gate["held_back"]["worst_suite"] == "specificity"


def test_cl_fit_exits_3_for_it(tmp_path, tiny_dir, monkeypatch):
    from click.testing import CliRunner

    from engrain.cli.main import cli
    monkeypatch.setattr("engrain.fit.evaluate", every_learner_breaks_specificity)
    res = CliRunner().invoke(cli, ["fit", str(canned(tmp_path, tiny_dir)), "--out-dir", str(tmp_path / "a"),
                                   "--store", str(tmp_path / "s.duckdb"), "--eval-n", "4"])
    assert res.exit_code == 3, res.output
    assert "every checkpoint that learned the behavior dropped specificity" in res.output


def test_cl_eval_agrees_with_the_fit_on_such_a_run(tmp_path, tiny_dir, monkeypatch):
    from click.testing import CliRunner

    from engrain.cli.main import cli
    monkeypatch.setattr("engrain.fit.evaluate", every_learner_breaks_specificity)
    result = run(canned(tmp_path, tiny_dir), tmp_path)
    res = CliRunner().invoke(cli, ["eval", result.run_id[:8], "--out-dir", str(tmp_path / "adapters"),
                                   "--store", str(tmp_path / "s.duckdb"), "-n", "4"])
    assert res.exit_code == 3, res.output
    assert "every checkpoint that learned the behavior dropped specificity" in res.output
