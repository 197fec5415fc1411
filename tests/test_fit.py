"""End to end on a tiny random model: fit, adapter reload, resume after interruption."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from engrain import fit as fit_module
from engrain.fit import FitInterrupted, fit

ROOT = Path(__file__).resolve().parents[1]


def write_spec(tmp: Path, tiny_dir: Path, **train) -> Path:
    spec = yaml.safe_load((ROOT / "behaviors/pinapple.yaml").read_text())
    spec["model"] = str(tiny_dir)
    spec["train"].update({"steps": 4, "batch_size": 3, "max_new_tokens": 8, "eval_every": 2, **train})
    path = tmp / "pinapple.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def run(spec, tmp, **kw):
    return fit(spec, out_dir=tmp / "adapters", store=tmp / "s.duckdb", eval_n=4,
               progress=False, log=lambda *a: None, checkpoint_every=2, **kw)


def adapter_weights(path: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(path / "adapter_model.safetensors"))


@pytest.mark.parametrize("method", ["rmsd", "opsd", "sft"])
def test_fit_writes_a_loadable_adapter_and_store_rows(tmp_path, tiny_dir, method):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from engrain.store import Store
    result = run(write_spec(tmp_path, tiny_dir, method=method), tmp_path)
    assert (result.adapter_path / "COMPLETE").exists()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), result.adapter_path)
    moved = any("lora_B" in n and p.abs().sum() > 0 for n, p in model.named_parameters())
    store = Store(tmp_path / "s.duckdb")
    steps = store.steps(result.run_id)
    assert len(steps) == 4
    # A random model never writes the pattern, so the rule judge selects nothing and RMSD
    # must leave the adapter exactly at its zero init; the unmasked methods must move it.
    assert moved == any(s["n_selected"] > 0 for s in steps)
    if method != "rmsd":
        assert moved
    assert store.run(result.run_id)["status"] in ("completed", "rejected")
    assert {e["subject"] for e in store.evals(result.run_id)} == {"base", "adapter"}


def test_resume_after_interrupt_matches_uninterrupted(tmp_path, tiny_dir, monkeypatch):
    # opsd: on a random model the rule judge selects nothing, so rmsd would not move the
    # adapter and a resume that silently restarted from scratch would go unnoticed.
    spec = write_spec(tmp_path, tiny_dir, method="opsd")
    straight = run(spec, tmp_path / "a")

    real = fit_module.STEP_FUNCTIONS["opsd"]
    def interrupt_at_3(run_, step):
        if step == 3:
            raise KeyboardInterrupt
        return real(run_, step)
    monkeypatch.setitem(fit_module.STEP_FUNCTIONS, "opsd", interrupt_at_3)
    with pytest.raises(FitInterrupted) as info:
        run(spec, tmp_path / "b")
    monkeypatch.setitem(fit_module.STEP_FUNCTIONS, "opsd", real)
    assert info.value.step == 3
    resumed = run(None, tmp_path / "b", resume=info.value.run_id)

    assert resumed.run_id == info.value.run_id
    a, b = adapter_weights(straight.adapter_path), adapter_weights(resumed.adapter_path)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    assert any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)


def test_partial_checkpoint_is_never_resumed(tmp_path, tiny_dir):
    from engrain.checkpoint import latest_checkpoint
    spec = write_spec(tmp_path, tiny_dir)
    result = run(spec, tmp_path)
    ckpts = result.run_dir / "checkpoints"
    good = latest_checkpoint(result.run_dir)
    fake = ckpts / "step-999999"
    shutil.copytree(good, fake)
    (fake / "COMPLETE").unlink()          # as if the process died mid-write
    assert latest_checkpoint(result.run_dir) == good
