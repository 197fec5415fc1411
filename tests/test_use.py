"""Trying adapters: ``engrain.load`` / ``engrain.generate`` and ``cl generate`` / ``cl chat``.
Real (four-step) fits of the tiny model, two behaviors and one trained ``--on`` the other."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

import engrain
from engrain.cli.main import cli
from engrain.engine.models import load_model
from engrain.use import UseError, describe, generate, load

ROOT = Path(__file__).resolve().parents[1]


def spec_dict(tiny_dir: Path, example: str, name: str) -> dict:
    """A lab example on the tiny model that the gate always accepts (see test_continual)."""
    spec = yaml.safe_load((ROOT / f"behaviors/{example}.yaml").read_text())
    spec.update(name=name, model=str(tiny_dir), learned={"min_share_of_hinted": None, "min_rate": None})
    spec.pop("anchor")
    spec["regression"] = {"suites": [], "max_drop": 1.0}
    spec["train"].update({"steps": 2, "batch_size": 2, "max_new_tokens": 6, "eval_every": 2})
    return spec


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_dir):
    """Adapters folder with pin (alone), sig (alone) and sig2 (trained --on pin)."""
    tmp = tmp_path_factory.mktemp("use")
    kw = dict(out_dir=tmp / "adapters", store=tmp / "s.duckdb", eval_n=4)
    pin = engrain.fit(spec_dict(tiny_dir, "pinapple", "pin"), **kw)
    sig = engrain.fit(spec_dict(tiny_dir, "signoff", "sig"), **kw)
    sig2 = engrain.fit(spec_dict(tiny_dir, "signoff", "sig2"), on=[pin.run_id], lineage="merge", **kw)
    assert {pin.outcome, sig.outcome, sig2.outcome} == {"accepted"}
    return {"dir": tmp, "pin": pin.adapter_path, "sig": sig.adapter_path, "sig2": sig2.adapter_path,
            "pin_id": pin.run_id, "model": str(tiny_dir)}


def logits(model, ids=torch.tensor([[5, 6, 7, 8, 9]])):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_load_defaults_to_the_adapters_base_and_refuses_another(runs):
    loaded = load(adapters=[runs["pin"]])
    assert loaded.source == runs["model"] and loaded.behaviors == ("pin",)
    with pytest.raises(UseError, match="trained on model"):
        load("lab", adapters=[runs["pin"]])
    # a run id (unique prefix) names the same adapter
    assert describe(runs["pin_id"][:8], runs["dir"] / "adapters").path == runs["pin"].resolve()


def test_two_behaviors_trained_apart_are_refused_unless_ungated(runs):
    with pytest.raises(UseError) as e:
        load(adapters=[runs["pin"], runs["sig"]])
    message = str(e.value)
    assert "\n" not in message
    assert "0.96 -> 0.42" in message and "--on" in message and "--ungated" in message
    both = load(adapters=[runs["pin"], runs["sig"]], ungated=True)
    assert sorted(both.model.active_adapters) == ["pin-0", "sig-1"]
    # both active in every LoRA layer, not just named (a four-step fit may keep the untrained
    # adapter, so the logits cannot tell)
    layers = [m for m in both.model.modules() if hasattr(m, "lora_A")]
    assert layers and all(sorted(m.active_adapters) == ["pin-0", "sig-1"] for m in layers)


def test_an_adapter_trained_on_another_comes_with_its_lineage(runs):
    loaded = load(adapters=[runs["sig2"]])
    assert loaded.merged == (runs["pin"].resolve(),) and loaded.behaviors == ("sig2",)
    assert loaded.adapters[0].carries == ("pin", "sig2")       # what the one record says it carries
    # exactly what its fit trained and gated: the base with pin merged, sig2 on top
    engine = load_model(runs["model"], adapter=runs["sig2"], on=[runs["pin"]], device="cpu")
    assert torch.allclose(logits(loaded.model), logits(engine.model.eval()), atol=1e-5)
    # asking for pin too is no composition: pin is in sig2's lineage, applied once
    again = load(adapters=[runs["pin"], runs["sig2"]])
    assert again.behaviors == ("sig2",) and torch.allclose(logits(again.model), logits(loaded.model))


def test_generate_is_seeded_and_base_switches_the_adapters_off(runs):
    loaded = load(adapters=[runs["pin"]])
    prompts = ["What fruits go in a smoothie?", "Name a planet."]
    a = generate(loaded, prompts, max_new_tokens=8, seed=3)
    assert len(a) == 2 and a == generate(loaded, prompts, max_new_tokens=8, seed=3)
    plain = load(runs["model"])
    assert generate(loaded, prompts, greedy=True, base=True, max_new_tokens=8) == \
        generate(plain, prompts, greedy=True, max_new_tokens=8)


def test_naming_a_behavior_without_a_library_or_store_says_what_to_do(runs, tmp_path):
    with pytest.raises(engrain.LibraryError, match="no adapter of behavior 'nobody'"):
        load(behaviors=["nobody"], store=tmp_path / "empty.duckdb")


def test_a_behavior_name_loads_its_current_adapter(runs):
    # pin and sig2 were each their behavior's first accepted fit, so each is current
    store = runs["dir"] / "s.duckdb"
    loaded = load(behaviors=["sig2"], store=store)
    assert loaded.behaviors == ("sig2",) and loaded.merged == (runs["pin"].resolve(),)
    with pytest.raises(UseError):                       # trained apart: refused by name too
        load(behaviors=["pin", "sig"], store=store)
    out = invoke(["generate", "--behavior", "pin", "--store", str(store), "--greedy", "--base",
                  "--max-new-tokens", "4", "hello"])
    assert out.exit_code == 0 and "[pin]" in out.output and "[base]" in out.output


def invoke(args, **kw):
    return CliRunner().invoke(cli, args, catch_exceptions=False, **kw)


def test_cl_generate_one_prompt_a_file_and_the_refusal(runs, tmp_path):
    one = invoke(["generate", "--adapter", str(runs["pin"]), "--greedy", "--max-new-tokens", "6", "--base",
                  "What fruits go in a smoothie?"])
    assert one.exit_code == 0, one.output
    assert one.stdout.startswith("[pin] ") and "\n[base] " in one.stdout
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "Name a planet."}\n{"prompt": "What is 2+2?"}\n')
    out = tmp_path / "a.jsonl"
    done = invoke(["generate", "-f", str(prompts), "-o", str(out), "--adapter", str(runs["sig2"]),
                   "--max-new-tokens", "6"])
    assert done.exit_code == 0, done.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["Name a planet.", "What is 2+2?"] and all("answer" in r for r in rows)
    refused = invoke(["generate", "hi", "--adapter", str(runs["pin"]), "--adapter", str(runs["sig"])])
    assert refused.exit_code == 1 and "no gate checked them together" in refused.output
    assert "Traceback" not in refused.output


def test_cl_chat_keeps_the_history_resets_and_quits(runs, monkeypatch):
    import engrain.use
    seen = []
    real = engrain.use.generate

    def spy(loaded, prompts, **kw):
        seen.append([m["content"] for m in prompts[0]])
        return real(loaded, prompts, **kw)
    monkeypatch.setattr(engrain.use, "generate", spy)
    done = invoke(["chat", "--adapter", str(runs["pin"]), "--max-new-tokens", "4"],
                  input="hello\nand then?\n/reset\nagain\n/quit\nnever read\n")
    assert done.exit_code == 0, done.output
    assert done.stdout.count("model> ") == 3 and "(conversation forgotten)" in done.stdout
    assert [s[0] for s in seen] == ["hello", "hello", "again"] and len(seen[1]) == 3 and seen[2] == ["again"]
    # end of input ends the session too
    assert invoke(["chat", "--adapter", str(runs["pin"])], input="").exit_code == 0


def test_the_lineage_is_merged_into_the_base_not_left_out(runs):
    # The four-step pin fit may keep its untrained adapter (B = 0), which merges as nothing:
    # give pin's adapter weights that move the model, for this test only.
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    from engrain.engine.models import merge_adapters
    weights = runs["pin"] / "adapter_model.safetensors"
    saved = weights.read_bytes()
    torch.manual_seed(1)
    save_file({k: v + 0.05 * torch.randn_like(v) for k, v in load_file(str(weights)).items()}, str(weights))
    try:
        loaded = load(adapters=[runs["sig2"]])
        engine = load_model(runs["model"], adapter=runs["sig2"], on=[runs["pin"]], device="cpu")
        assert torch.allclose(logits(loaded.model), logits(engine.model.eval()), atol=1e-5)
        bare = merge_adapters(AutoModelForCausalLM.from_pretrained(runs["model"]), [runs["sig2"]]).eval()
        assert not torch.allclose(logits(loaded.model), logits(bare), atol=1e-4)    # pin shows
    finally:
        weights.write_bytes(saved)
