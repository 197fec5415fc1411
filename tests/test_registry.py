"""Parts are added by registering one object: a loss, a regression suite, a sampler, each
then usable from a spec with nothing else edited."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from engrain.registry import LOSSES, SAMPLERS, SUITES, Registry, Sampler
from engrain.spec.suites import Item, Suite, SuiteSource, declared_suite, grader, split_items

ROOT = Path(__file__).resolve().parents[1]


def test_registry_refuses_duplicates_and_names_the_known_parts():
    reg = Registry("widget")
    reg.register("a", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", 2)
    reg.register("a", 3, replace=True)
    assert reg.get("a") == 3 and "a" in reg and reg.names() == ("a",)
    with pytest.raises(KeyError, match="unknown widget 'b'; registered: a"):
        reg.get("b")


def test_graders_on_hand_made_answers():
    it = Item("What is 2 + 3?", "5")
    assert grader("exact", None, False)(it, " 5\n") and not grader("exact", None, False)(it, "it is 5")
    assert grader("contains", None, False)(it, "it is 5.")
    assert not grader("contains", None, False)(Item("q", "Paris"), "paris")
    assert grader("contains", None, True)(Item("q", "Paris"), "paris")
    assert grader("regex", r"\b5\b", False)(Item("q", None), "= 5.")
    assert not grader("regex", r"\b5\b", False)(Item("q", None), "= 56.")
    assert grader("regex", None, False)(Item("q", r"^\d+$"), "42")       # the item's own pattern wins


def test_declared_suite_splits_stably_and_keeps_small_suites_whole():
    items = [Item(f"question {i}", str(i)) for i in range(40)]
    splits = split_items(items)
    assert splits["val"] and splits["eval"]
    assert not {i.prompt for i in splits["val"]} & {i.prompt for i in splits["eval"]}
    assert sorted(i.prompt for i in splits["val"] + splits["eval"]) == sorted(i.prompt for i in items)
    assert split_items(items) == splits
    few = items[:5]
    assert split_items(few) == {"val": few, "eval": few}
    suite = declared_suite("mine", items, "exact").build(3, "eval")
    assert suite.name == "mine" and len(suite.messages) == 3
    assert suite.grade(0, splits["eval"][0].expect) and not suite.grade(0, "nope")
    cycled = declared_suite("few", few, "exact").build(12, "eval")      # 5 prompts, 12 answers
    assert [m[0]["content"] for m in cycled.messages] == [few[i % 5].prompt for i in range(12)]
    assert cycled.grade(7, few[2].expect)


def _spec(tmp_path, tiny_dir, **changes) -> Path:
    spec = yaml.safe_load((ROOT / "behaviors/pinapple.yaml").read_text())
    spec["model"] = str(tiny_dir)
    spec.pop("anchor")
    spec["train"].update({"steps": 2, "batch_size": 2, "max_new_tokens": 6, "eval_every": 2})
    for key, value in changes.items():
        section, field = key.split("__")
        spec.setdefault(section, {})[field] = value
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


class CountingSampler:
    """A sampler backend that delegates to transformers and counts its batches."""
    calls = 0

    def __init__(self, model, tokenizer, batch_size=64):
        from engrain.engine.rollout import HFSampler
        self.inner = HFSampler(model, tokenizer, batch_size)

    def sample(self, prompt_ids, max_new_tokens, temperature, share=None):
        CountingSampler.calls += 1
        return self.inner.sample(prompt_ids, max_new_tokens, temperature, share)


def test_a_loss_a_suite_and_a_sampler_each_registered_by_one_object(tmp_path, tiny_dir):
    from engrain.fit import fit
    from engrain.registry import Loss
    from engrain.store.db import Store

    used = []

    def half_fkl(train):
        from engrain.engine.losses import per_position_fkl
        used.append("loss")
        return lambda s, t: 0.5 * per_position_fkl(s, t)

    def always(n, split):
        used.append(f"suite:{split}")
        return Suite("acme/always", "accuracy", [[{"role": "user", "content": f"q{i}"}] for i in range(n)],
                     lambda i, text: True)

    LOSSES.register("half_fkl", Loss("forward KL, halved", half_fkl))
    SUITES.register("acme/always", SuiteSource("accuracy", always, lambda: ["q0", "q1"]))
    SAMPLERS.register("counting", Sampler("counts its batches", CountingSampler))
    try:
        spec = _spec(tmp_path, tiny_dir, train__loss="half_fkl", train__sampler="counting",
                     regression__suites=["acme/always"], train__method="opsd")
        result = fit(spec, out_dir=tmp_path / "adapters", store=tmp_path / "s.duckdb", eval_n=4,
                     progress=False, log=lambda *a: None)
    finally:
        for reg, name in ((LOSSES, "half_fkl"), (SUITES, "acme/always"), (SAMPLERS, "counting")):
            reg.unregister(name)
    assert "loss" in used and "suite:val" in used and "suite:eval" in used
    assert CountingSampler.calls >= 2 + 2          # two rollout steps, evals of base and adapter
    rows = {(r["suite"], r["subject"]) for r in Store(tmp_path / "s.duckdb").evals(result.run_id)}
    assert ("acme/always", "base") in rows and ("acme/always", "adapter") in rows
    assert "acme/always" in {r.suite for r in result.verdict.rows}
    assert torch.isfinite(torch.tensor([s["loss"] for s in Store(tmp_path / "s.duckdb").steps(result.run_id)])).all()


def test_a_plugin_declared_as_an_entry_point_is_loaded_once(monkeypatch):
    import engrain.registry as registry
    loads = []

    class EntryPoint:
        def load(self):
            loads.append(1)
            SAMPLERS.register("from-plugin", Sampler("from a plugin", CountingSampler), replace=True)

    monkeypatch.setattr(registry, "entry_points", lambda group: [EntryPoint()] if group == "engrain.parts" else [])
    monkeypatch.setattr(registry, "_loaded", False)
    try:
        assert "from-plugin" in SAMPLERS.names() and "hf" in SAMPLERS.names()
        SAMPLERS.get("hf")
        assert loads == [1]
    finally:
        SAMPLERS.unregister("from-plugin")
