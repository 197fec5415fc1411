"""QLoRA on the CPU: the base model in NF4 (bitsandbytes' Linear4bit), the adapter trained
through it. Skipped where bitsandbytes is not installed (pip install 'engrain[qlora]')."""

from __future__ import annotations

import pytest
import torch

bnb = pytest.importorskip("bitsandbytes")

from pathlib import Path  # noqa: E402

import yaml  # noqa: E402

from engrain.engine.context import build_context  # noqa: E402
from engrain.engine.mask import Mask  # noqa: E402
from engrain.engine.models import load_model  # noqa: E402
from engrain.engine.rollout import rollout  # noqa: E402
from engrain.engine.scoring import score  # noqa: E402
from engrain.engine.step import distill_step, sample_batch  # noqa: E402
from engrain.spec.behavior import load_behavior  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

QUESTIONS = ["What is the capital of France?", "What is 3 plus 4?", "Name a food you like.",
             "What is the capital of Japan?"]


def four_bit_layers(model) -> list:
    return [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]


def greedy(loaded, question: str) -> list[int]:
    tok = loaded.tokenizer
    ids = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.no_grad(), loaded.model.disable_adapter():
        out = loaded.model.generate(**ids, max_new_tokens=24, do_sample=False, pad_token_id=tok.pad_token_id)
    return out[0, ids["input_ids"].shape[1]:].tolist()


def test_the_lab_model_in_4_bits_answers_as_in_fp32():
    torch.manual_seed(0)
    q = load_model("lab", qlora=True, device="cpu")
    f = load_model("lab", device="cpu")
    layers = four_bit_layers(q.model)
    # every attention and MLP projection of the 4 layers, and only those: the embeddings
    # and the (tied) LM head stay fp32, which the losses read directly
    assert len(layers) == 4 * 7 and not four_bit_layers(f.model)
    assert all(m.weight.dtype == torch.uint8 and m.compute_dtype == torch.float32 for m in layers)
    assert q.lm_head_weight.dtype == torch.float32
    # no layer may repack itself into bitsandbytes' gradient-less CPU inference layout
    assert not any(m.support_avx512bf16_for_cpu for m in layers)
    assert [greedy(q, x) for x in QUESTIONS] == [greedy(f, x) for x in QUESTIONS]


def qlora_run(tmp_path, tiny_dir):
    """The pinapple spec on the tiny random model in 4 bits, no anchor, as test_step's run."""
    spec = yaml.safe_load((ROOT / "behaviors/pinapple.yaml").read_text())
    spec.pop("anchor")
    spec["model"] = str(tiny_dir)
    spec["train"].update({"steps": 3, "batch_size": 4, "max_new_tokens": 8, "lr": 1e-3, "warmup_steps": 0,
                          "qlora": True})
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    behavior = load_behavior(path)
    torch.manual_seed(0)
    loaded = load_model(str(tiny_dir), lora=behavior.spec.train.lora, qlora=behavior.spec.train.qlora,
                        device="cpu")
    return build_context(behavior.spec, behavior.compile(loaded.tokenizer), loaded)


def test_a_qlora_step_trains_only_the_adapter_through_the_4_bit_base(tmp_path, tiny_dir):
    run = qlora_run(tmp_path, tiny_dir)
    run.mask = lambda ro, sc: Mask(sc.valid, sc.valid, ())      # every response position trains
    model = run.loaded.model
    layers = four_bit_layers(model)
    assert layers
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    packed = [m.weight.data_ptr() for m in layers]

    prompts, hints = sample_batch(run.behavior, 0, 0, 2)
    ro = rollout(run.sampler, run.behavior, run.tokenizer, prompts, hints, 8, 1.0)
    with torch.no_grad():       # the teacher: the same 4-bit weights, adapter off
        first = score(run.loaded, run.teacher, ro)
    grads = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            p.register_hook(lambda g, name=name: grads.__setitem__(name, g.detach().clone()))
    for step in range(2):       # B starts at zero, so A's gradient is zero until B moved
        grads.clear()
        out = distill_step(run, step)
        assert out.kl > 0 and out.n_selected > 0 and out.drift > 0
    assert grads and all("lora_" in n for n in grads)
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads.values()), \
        [n for n, g in grads.items() if not g.abs().sum() > 0]
    # the base, 4-bit layers included, is exactly as loaded, in the same storage
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, base_before[n]), n
    assert [m.weight.data_ptr() for m in layers] == packed
    assert all(m.weight.dtype == torch.uint8 for m in layers)
    with torch.no_grad():       # the teacher did not move: it reads the untouched 4-bit base
        again = score(run.loaded, run.teacher, ro)
    torch.testing.assert_close(again.teacher_hidden, first.teacher_hidden)



def test_cl_fit_qlora_overrides_the_spec_and_the_run_records_it(tmp_path, tiny_dir, monkeypatch):
    import json
    import re

    from click.testing import CliRunner

    from engrain.cli.main import cli
    from engrain.store.db import Store
    spec = yaml.safe_load((ROOT / "behaviors/pinapple.yaml").read_text())
    spec.pop("anchor")
    spec["model"] = str(tiny_dir)
    spec["train"].update({"steps": 2, "batch_size": 2, "max_new_tokens": 6, "eval_every": 2})
    assert spec["train"].get("qlora", False) is False
    path = tmp_path / "pinapple.yaml"
    path.write_text(yaml.safe_dump(spec))
    db = tmp_path / "s.duckdb"
    result = CliRunner().invoke(cli, ["fit", str(path), "--qlora", "--store", str(db), "--eval-n", "2",
                                      "--out-dir", str(tmp_path / "adapters"), "--no-progress"])
    # a random model never learns the behavior: rejected as "not learned" (or regressed)
    assert result.exit_code in (3, 4), result.output
    run = Store(db).runs()[0]
    run_dir = next((tmp_path / "adapters").glob(f"*/{run['run_id']}"))
    assert json.loads((run_dir / "run.json").read_text())["qlora"] is True
    shown = CliRunner().invoke(cli, ["show", run["run_id"][:8], "--store", str(db)], terminal_width=200)
    assert shown.exit_code == 0 and re.search(r"config\.qlora\W+True", shown.output), shown.output
    # cl eval RUN checks the adapter on the model it was trained on: the 4-bit one
    from engrain.rundir import recheck
    seen = []
    monkeypatch.setattr("engrain.engine.models.load_model",
                        lambda *a, **kw: seen.append(kw.get("qlora")) or load_model(*a, **kw))
    recheck(run_dir, n=2)
    assert seen == [True]
