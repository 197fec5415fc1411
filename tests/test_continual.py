"""Behaviors accumulate: a fit ``--on`` earlier adapters starts from a model that has them,
keeps their checks in its gate, and is refused when it loses one (naming it). Tiny random
models; the figures that matter come from benchmarks/continual.py on the lab model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from engrain.checks.gate import gated, gated_suites
from engrain.fit import fit
from engrain.spec import load_spec
from engrain.spec.figures import lost_behaviors

ROOT = Path(__file__).resolve().parents[1]


def write_spec(tmp: Path, tiny_dir: Path, example: str, name: str, **regression) -> Path:
    """A lab example on the tiny model that the gate always accepts (the tiny model learns
    nothing in four steps: no learning bar, any drop allowed), unless told otherwise."""
    spec = yaml.safe_load((ROOT / f"behaviors/{example}.yaml").read_text())
    spec.update(name=name, model=str(tiny_dir), learned={"min_share_of_hinted": None, "min_rate": None})
    spec.pop("anchor")
    spec["regression"] = {"suites": [], "max_drop": 1.0, **regression}
    spec["train"].update({"steps": 2, "batch_size": 2, "max_new_tokens": 6, "eval_every": 2})
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def run(spec, tmp, **kw):
    if kw.get("on"):
        kw.setdefault("lineage", "merge")       # these tests are the merge lineage's
    return fit(spec, out_dir=tmp / "adapters", store=tmp / "s.duckdb", eval_n=4, progress=False,
               log=kw.pop("log", lambda *a: None), **kw)


def logits(model, ids=torch.tensor([[5, 6, 7, 8, 9]])):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.timeout(600)
def test_a_fit_on_an_earlier_adapter_starts_from_it_and_gates_on_its_checks(tmp_path, tiny_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from engrain.engine.models import load_model

    first = run(write_spec(tmp_path, tiny_dir, "pinapple", "first"), tmp_path)
    assert first.outcome == "accepted"
    # An adapter that moves the model, so "merged in" is visible in the logits.
    from safetensors.torch import load_file, save_file
    weights = {k: v + 0.05 * torch.randn_like(v) for k, v in
               load_file(str(first.adapter_path / "adapter_model.safetensors")).items()}
    save_file(weights, str(first.adapter_path / "adapter_model.safetensors"))

    lines = []
    second = run(write_spec(tmp_path, tiny_dir, "signoff", "second"), tmp_path, on=[first.run_id[:8]],
                 log=lines.append)
    assert second.outcome == "accepted"
    suites = {r.suite for r in second.verdict.rows}
    assert {"first:behavior", "first:specificity", "specificity", "well_formed"} <= suites
    assert any("building on: first" in str(line) for line in lines)
    saved = yaml.safe_load((second.run_dir / "run.json").read_text())
    assert saved["on"] == [str(first.adapter_path.resolve())]       # the lineage
    # `cl eval` rechecks it as it was trained: on the model with the first adapter, gated on its figures.
    from engrain.rundir import recheck
    _, base, _, verdict = recheck(second.run_dir, n=4)
    assert "first:behavior" in {r.suite for r in verdict.rows}
    first_rate = next(r["value"] for r in base if r["suite"] == "first:behavior")
    assert first_rate == next(r["value"] for r in second.base if r["suite"] == "first:behavior"
                              and r["decoding"] == "sample")

    # "Adapter off" is the model with the first adapter in it: exactly base + first.
    loaded = load_model(str(tiny_dir), on=[first.adapter_path])
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), str(first.adapter_path))
    with loaded.model.disable_adapter():
        torch.testing.assert_close(logits(loaded.model), logits(reference), rtol=1e-5, atol=1e-5)
    plain = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert not torch.allclose(logits(plain), logits(reference), atol=1e-4)   # the first adapter shows

    # A third behavior on the second brings the whole lineage: first, then second.
    third = run(write_spec(tmp_path, tiny_dir, "pinapple", "third"), tmp_path, on=[second.adapter_path])
    assert yaml.safe_load((third.run_dir / "run.json").read_text())["on"] == [
        str(first.adapter_path.resolve()), str(second.adapter_path.resolve())]
    assert {"first:behavior", "second:behavior"} <= {r.suite for r in third.verdict.rows}


def test_building_on_a_rejected_run_or_the_same_behavior_is_refused(tmp_path, tiny_dir):
    first = run(write_spec(tmp_path, tiny_dir, "pinapple", "first"), tmp_path)
    rejected = first.run_dir / "adapter.rejected"
    first.adapter_path.rename(rejected)
    with pytest.raises(ValueError, match="no accepted adapter"):
        run(write_spec(tmp_path, tiny_dir, "signoff", "second"), tmp_path, on=[first.run_id])
    rejected.rename(first.adapter_path)
    metrics = first.run_dir / "metrics.json"      # kept with --keep-rejected: an "adapter" folder, refused
    saved = metrics.read_text()
    metrics.write_text(saved.replace('"passed": true', '"passed": false'))
    with pytest.raises(ValueError, match="not accepted by the gate"):
        run(write_spec(tmp_path, tiny_dir, "signoff", "second"), tmp_path, on=[first.adapter_path])
    metrics.write_text(saved)
    with pytest.raises(ValueError, match="already among the adapters"):
        run(write_spec(tmp_path, tiny_dir, "pinapple", "first"), tmp_path, on=[first.run_id])


def rows(**values):
    return [{"suite": s.replace("__", ":"), "metric": "clean" if "specificity" in s else
             "rate" if s == "well_formed" else "exists", "value": v} for s, v in values.items()]


def test_the_gate_refuses_an_adapter_that_lost_an_earlier_behavior_and_names_it():
    spec = load_spec(ROOT / "behaviors/signoff.yaml")
    earlier = [load_spec(ROOT / "behaviors/pinapple.yaml")]
    suites = {s: 0.7 for s in gated_suites(spec, earlier)       # every other gated suite holds
              if ":" not in s and s not in ("specificity", "well_formed")}
    base = rows(behavior_hinted=0.8, specificity=1.0, well_formed=1.0, pinapple__behavior=0.9,
                pinapple__specificity=1.0, **suites)
    kept = rows(behavior=0.9, specificity=1.0, well_formed=1.0, pinapple__behavior=0.86,
                pinapple__specificity=1.0, **suites)
    lost = [dict(r, value=0.3) if r["suite"] == "pinapple:behavior" else r for r in kept]
    for r in base + kept + lost:
        if r["suite"] == "behavior_hinted" or r["suite"] == "behavior":
            r["metric"] = "exists"
    only = lambda rs: rs + [dict(r, metric="only") for r in rs if r["suite"] in ("behavior", "behavior_hinted")]  # noqa: E731
    assert gated(spec, only(base), only(kept), earlier).outcome == "accepted"    # 0.04 <= 0.05
    verdict = gated(spec, only(base), only(lost), earlier)
    assert verdict.outcome == "regressed"
    assert lost_behaviors(r.suite for r in verdict.rows if not r.ok) == ["pinapple"]
    assert "pinapple:behavior" in verdict.summary() or any(
        r.suite == "pinapple:behavior" and not r.ok for r in verdict.rows)
    # Without the earlier behavior, the same rows pass: the check comes from `on` alone.
    assert gated(spec, only(base), only(lost)).outcome == "accepted"


# --- in-context learning in the gate ---------------------------------------------------------

def test_the_in_context_suite_never_holds_a_held_out_behaviors_own_hint():
    from engrain.lab.suites import capability_suite
    suite = capability_suite("lab/in-context", 400, "eval")
    hints = [m[-1]["content"] for m in suite.messages]
    assert not any("pinapple" in h or "Tolavi" in h for h in hints)
    # both families, on food questions, graded on the hint's own target
    assert sum("sign off" in h or "close with" in h or "end your answer" in h or "Finish every" in h
               for h in hints) > 100
    assert sum('spell' in h or "write" in h or "say" in h for h in hints) > 100


def test_in_context_suites_carry_their_own_max_drop(tmp_path):
    spec = yaml.safe_load((ROOT / "behaviors/pinapple.yaml").read_text())
    spec["regression"] = {"suites": ["lab/arithmetic", "lab/in-context", "lab/hint-signoff"], "max_drop": 0.02}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(spec))
    reg = load_spec(path).regression
    assert reg.max_drop_of("lab/arithmetic") == 0.02
    assert reg.max_drop_of("lab/in-context") == reg.max_drop_of("lab/hint-signoff") == 0.1
    base = rows(behavior_hinted=0.8, specificity=1.0, well_formed=1.0,
                **{"lab/arithmetic": 1.0, "lab/in-context": 0.7, "lab/hint-signoff": 0.7})
    after = lambda drop: rows(behavior=0.9, specificity=1.0, well_formed=1.0, **{  # noqa: E731
        "lab/arithmetic": 1.0, "lab/in-context": 0.7, "lab/hint-signoff": 0.7 - drop})
    only = lambda rs: rs + [dict(r, metric="only") for r in rs if r["suite"] in ("behavior", "behavior_hinted")]  # noqa: E731
    assert gated(load_spec(path), only(base), only(after(0.08))).outcome == "accepted"
    refused = gated(load_spec(path), only(base), only(after(0.3)))
    assert refused.outcome == "regressed" and [r.suite for r in refused.rows if not r.ok] == ["lab/hint-signoff"]


def test_cl_fit_on_refuses_an_adapter_that_lost_an_earlier_behavior_naming_it(tmp_path, tiny_dir, monkeypatch):
    # The tiny model learns nothing either way, so the evals are canned: the earlier
    # behavior shows at 0.9 before and at 0.2 after the new adapter; all else holds.
    from click.testing import CliRunner

    from engrain.cli.main import cli
    first = run(write_spec(tmp_path, tiny_dir, "pinapple", "first"), tmp_path)

    def evaluate(model, tokenizer, cb, spec, adapter_on, n, seed, split="eval", decoding="sample", earlier=()):
        values = {("specificity", "clean"): 1.0, ("well_formed", "rate"): 1.0,
                  ("behavior", "exists"): 0.5 if adapter_on else 0.0, ("behavior", "only"): 0.5 if adapter_on else 0.0,
                  ("behavior_hinted", "exists"): 0.5, ("behavior_hinted", "only"): 0.5}
        for e in earlier:
            values |= {(f"{e.name}:behavior", "exists"): 0.2 if adapter_on else 0.9,
                       (f"{e.name}:specificity", "clean"): 1.0}
        return [{"suite": s, "metric": m, "value": v, "n": 40, "split": split, "decoding": decoding}
                for (s, m), v in values.items()]
    monkeypatch.setattr("engrain.fit.evaluate", evaluate)
    spec = write_spec(tmp_path, tiny_dir, "signoff", "second", max_drop=0.02)
    out = CliRunner().invoke(cli, ["fit", str(spec), "--on", first.run_id[:8], "--lineage", "merge", "--out-dir", str(tmp_path / "adapters"),
                                   "--store", str(tmp_path / "s.duckdb"), "--eval-n", "4", "--no-progress"])
    assert out.exit_code == 3, out.output
    assert "lost an earlier behavior: first" in out.output
    assert "first:behavior" in out.output


def test_a_checkpoint_disqualified_by_an_earlier_behavior_names_it():
    # Trained --on pinapple, every checkpoint that learned the new behavior lost pinapple:
    # selection keeps step 0 (so the gate says "not learned"), and the fit names the loss.
    from engrain.checks.selection import Selection, judge_candidate
    base = [{"suite": "pinapple:behavior", "value": 0.9, "n": 48}, {"suite": "lab/arithmetic", "value": 1.0, "n": 48}]
    lost = [{"suite": "pinapple:behavior", "value": 0.0, "n": 48}, {"suite": "lab/arithmetic", "value": 1.0, "n": 48},
            {"suite": "behavior", "metric": "exists", "value": 0.4, "n": 48}]
    cand = judge_candidate(10, base, lost, {"pinapple:behavior", "lab/arithmetic"}, 0.05)
    assert not cand.qualifies and cand.worst_suite == "pinapple:behavior"
    selection = Selection(patience=4)
    selection.offer(cand)
    lost = lambda s: lost_behaviors(c.worst_suite for c in s.history if not c.qualifies)  # noqa: E731
    assert selection.best.step == 0 and lost(selection) == ["pinapple"]
    assert lost(Selection.from_state(selection.state())) == ["pinapple"]


def test_cl_fit_on_exits_3_when_every_checkpoint_lost_an_earlier_behavior(tmp_path, tiny_dir, monkeypatch):
    # On val, every trained checkpoint has lost the earlier behavior, so selection keeps step
    # 0 and the gate alone would say "not learned" (4); the refusal is the loss: exit 3.
    from click.testing import CliRunner

    from engrain.cli.main import cli
    first = run(write_spec(tmp_path, tiny_dir, "pinapple", "first"), tmp_path)

    def evaluate(model, tokenizer, cb, spec, adapter_on, n, seed, split="eval", decoding="sample", earlier=()):
        lost = adapter_on and split == "val"
        values = {("specificity", "clean"): 1.0, ("well_formed", "rate"): 1.0,
                  ("behavior", "exists"): 0.5 if lost else 0.0, ("behavior", "only"): 0.5 if lost else 0.0,
                  ("behavior_hinted", "exists"): 0.5, ("behavior_hinted", "only"): 0.5}
        for e in earlier:
            values |= {(f"{e.name}:behavior", "exists"): 0.0 if lost else 0.9, (f"{e.name}:specificity", "clean"): 1.0}
        return [{"suite": s, "metric": m, "value": v, "n": 40, "split": split, "decoding": decoding}
                for (s, m), v in values.items()]
    monkeypatch.setattr("engrain.fit.evaluate", evaluate)
    spec = write_spec(tmp_path, tiny_dir, "signoff", "second")
    spec.write_text(spec.read_text().replace("min_share_of_hinted: null", "min_share_of_hinted: 0.5"))
    out = CliRunner().invoke(cli, ["fit", str(spec), "--on", first.run_id[:8], "--lineage", "merge", "--out-dir", str(tmp_path / "adapters"),
                                   "--store", str(tmp_path / "s.duckdb"), "--eval-n", "4", "--no-progress"])
    assert out.exit_code == 3, out.output
    # Learned, but every learner lost the earlier behavior: the verdict says regressed and why.
    assert "regressed: lost first" in out.output
    assert "every checkpoint that learned the behavior dropped first:behavior" in out.output
    assert "lost an earlier behavior: first (every checkpoint" in out.output
    # One verdict: the recorded gate carries the loss, and `cl eval` on the run says the same.
    import json
    run_dir = next(p for p in (tmp_path / "adapters" / "second").iterdir() if p.is_dir())
    assert json.loads((run_dir / "metrics.json").read_text())["gate"]["lost"] == ["first"]
    monkeypatch.setattr("engrain.checks.evals.evaluate", evaluate)
    again = CliRunner().invoke(cli, ["eval", run_dir.name[:8], "--out-dir", str(tmp_path / "adapters"),
                                     "--store", str(tmp_path / "s.duckdb"), "-n", "4"])
    assert again.exit_code == 3 and "lost first" in again.output, again.output


# --- the mutation audit of 2026-12-07: what the tests above could not tell apart -------------

def test_only_an_earlier_behaviors_rate_without_the_hint_counts_as_lost():
    # A failed earlier specificity (or any other failed figure) is not a lost behavior.
    assert lost_behaviors(["pinapple:specificity", "sig:behavior", "behavior", "lab/arithmetic"]) == ["sig"]
    assert lost_behaviors(["pinapple:specificity", "specificity", "well_formed"]) == []


def canned_val(first_val_lost: bool):
    """An ``evaluate`` whose val rows at the first trained checkpoint have lost the earlier
    behavior (0.9 -> 0.0) and, at the next, keep it and show the new one better."""
    val_calls = []

    def evaluate(model, tokenizer, cb, spec, adapter_on, n, seed, split="eval", decoding="sample", earlier=()):
        if adapter_on and split == "val":
            val_calls.append(1)
        lost = first_val_lost and adapter_on and split == "val" and len(val_calls) == 1
        new = 0.0 if not adapter_on else 0.3 if lost else 0.6
        values = {("specificity", "clean"): 1.0, ("well_formed", "rate"): 1.0,
                  ("behavior", "exists"): new, ("behavior", "only"): new,
                  ("behavior_hinted", "exists"): 0.5, ("behavior_hinted", "only"): 0.5}
        for e in earlier:
            values |= {(f"{e.name}:behavior", "exists"): 0.0 if lost else 0.9, (f"{e.name}:specificity", "clean"): 1.0}
        return [{"suite": s, "metric": m, "value": v, "n": 40, "split": split, "decoding": decoding}
                for (s, m), v in values.items()]
    return evaluate


def test_a_later_kept_checkpoint_means_no_behavior_was_lost(tmp_path, tiny_dir, monkeypatch):
    # Step 2 lost the earlier behavior on val, step 4 kept it and was kept: nothing was lost.
    first = run(write_spec(tmp_path, tiny_dir, "pinapple", "first"), tmp_path)
    monkeypatch.setattr("engrain.fit.evaluate", canned_val(first_val_lost=True))
    lines, events = [], []
    second = run(write_spec(tmp_path, tiny_dir, "signoff", "second"), tmp_path, on=[first.run_id[:8]],
                 steps=4, log=lines.append, callback=events.append)
    from engrain.events import EvalEvent
    evals = [e for e in events if isinstance(e, EvalEvent)]
    assert [(e.step, e.qualifies) for e in evals] == [(2, False), (4, True)]     # the scenario
    assert evals[0].worst_suite == "first:behavior" and evals[1].is_best
    assert second.best_step == 4
    assert second.lost == ()
    assert not any("lost an earlier behavior" in str(line) for line in lines)


def test_resolve_on_refuses_another_models_adapter_and_an_unfinished_run(tmp_path, tiny_dir):
    from engrain.rundir import RunError, resolve_on
    first = run(write_spec(tmp_path, tiny_dir, "pinapple", "first"), tmp_path)
    out = tmp_path / "adapters"
    on, earlier = resolve_on([first.adapter_path], out, str(tiny_dir))
    assert on == [first.adapter_path.resolve()] and [b.spec.name for b in earlier] == ["first"]
    with pytest.raises(RunError, match="trained on model"):
        resolve_on([first.adapter_path], out, "another-model")
    with pytest.raises(RunError, match="trained on model"):
        resolve_on([first.run_id[:8]], out, "another-model")
    # A fit that crashed after saving its adapter leaves no metrics.json: not accepted.
    metrics = first.run_dir / "metrics.json"
    metrics.rename(tmp_path / "metrics.json")
    with pytest.raises(RunError, match="not accepted by the gate"):
        resolve_on([first.adapter_path], out, str(tiny_dir))
    with pytest.raises(ValueError, match="not accepted by the gate"):
        run(write_spec(tmp_path, tiny_dir, "signoff", "second"), tmp_path, on=[first.run_id[:8]])


def test_cl_eval_rechecks_a_run_on_the_model_that_has_its_lineage(tmp_path, tiny_dir, monkeypatch):
    # The tiny model's rates are 0 either way: what recheck loads is what tells.
    import engrain.engine.models as models
    from engrain.rundir import recheck
    first = run(write_spec(tmp_path, tiny_dir, "pinapple", "first"), tmp_path)
    second = run(write_spec(tmp_path, tiny_dir, "signoff", "second"), tmp_path, on=[first.run_id[:8]])
    seen, real = [], models.load_model
    monkeypatch.setattr(models, "load_model", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    recheck(second.run_dir, n=2)
    assert len(seen) == 1
    assert [Path(p) for p in seen[0].get("on", [])] == [first.adapter_path.resolve()]
    assert Path(seen[0]["adapter"]) == second.adapter_path
