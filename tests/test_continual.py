"""Behaviors accumulate: a fit ``--on`` earlier adapters starts from a model that has them,
keeps their checks in its gate, and is refused when it loses one (naming it). Tiny random
models; the figures that matter come from benchmarks/continual.py on the lab model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from engrain.checks.gate import gated, lost_behaviors
from engrain.fit import fit
from engrain.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]


def write_spec(tmp: Path, tiny_dir: Path, example: str, name: str, **regression) -> Path:
    """A lab example on the tiny model that the gate always accepts (the tiny model learns
    nothing in four steps: no learning bar, any drop allowed), unless told otherwise."""
    spec = yaml.safe_load((ROOT / f"behaviors/{example}.yaml").read_text())
    spec.update(name=name, model=str(tiny_dir), learned={"min_share_of_hinted": 0.0})
    spec.pop("anchor")
    spec["regression"] = {"suites": [], "max_drop": 1.0, **regression}
    spec["train"].update({"steps": 2, "batch_size": 2, "max_new_tokens": 6, "eval_every": 2})
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def run(spec, tmp, **kw):
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
    with pytest.raises(ValueError, match="already among the adapters"):
        run(write_spec(tmp_path, tiny_dir, "pinapple", "first"), tmp_path, on=[first.run_id])


def rows(**values):
    return [{"suite": s.replace("__", ":"), "metric": "clean" if "specificity" in s else
             "rate" if s == "well_formed" else "exists", "value": v} for s, v in values.items()]


def test_the_gate_refuses_an_adapter_that_lost_an_earlier_behavior_and_names_it():
    spec = load_spec(ROOT / "behaviors/signoff.yaml")
    earlier = [load_spec(ROOT / "behaviors/pinapple.yaml")]
    base = rows(behavior_hinted=0.8, specificity=1.0, well_formed=1.0, pinapple__behavior=0.9,
                pinapple__specificity=1.0, **{"lab/arithmetic": 1.0, "lab/capitals": 1.0})
    kept = rows(behavior=0.9, specificity=1.0, well_formed=1.0, pinapple__behavior=0.86,
                pinapple__specificity=1.0, **{"lab/arithmetic": 1.0, "lab/capitals": 1.0})
    lost = [dict(r, value=0.3) if r["suite"] == "pinapple:behavior" else r for r in kept]
    for r in base + kept + lost:
        if r["suite"] == "behavior_hinted" or r["suite"] == "behavior":
            r["metric"] = "exists"
    only = lambda rs: rs + [dict(r, metric="only") for r in rs if r["suite"] in ("behavior", "behavior_hinted")]  # noqa: E731
    assert gated(spec, only(base), only(kept), earlier).outcome == "accepted"    # 0.04 <= 0.05
    verdict = gated(spec, only(base), only(lost), earlier)
    assert verdict.outcome == "regressed" and lost_behaviors(verdict) == ["pinapple"]
    assert "pinapple:behavior" in verdict.summary() or any(
        r.suite == "pinapple:behavior" and not r.ok for r in verdict.rows)
    # Without the earlier behavior, the same rows pass: the check comes from `on` alone.
    assert gated(spec, only(base), only(lost)).outcome == "accepted"
