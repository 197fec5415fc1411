"""`cl export` and `cl serve --print`: the merged model answers as base + adapter does; the
adapter folder carries its card; the vllm command names every current adapter."""

import json
import shlex
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from engrain.cli.main import cli
from engrain.engine.models import load_model, load_plain, resolve_model_path
from engrain.library import promote
from engrain.spec.behavior import load_behavior
from engrain.spec.chat import chat_ids
from engrain.store import Store

ROOT = Path(__file__).resolve().parents[1]


def greedy(model, tokenizer, prompts, n_new: int = 24) -> list[list[int]]:
    out = []
    for p in prompts:
        ids = torch.tensor([chat_ids(tokenizer, [{"role": "user", "content": p}])])
        with torch.no_grad():
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        out.append(gen[0, ids.shape[1]:].tolist())
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A lab adapter whose B matrices are nonzero (a fresh LoRA is a no-op: B = 0), saved
    where a fit saves it and recorded accepted in a store."""
    tmp = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    loaded = load_model("lab")
    for name, p in loaded.model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)
    folder = tmp / "adapters" / "pinapple" / "feedbeef-1" / "adapter"
    loaded.model.save_pretrained(folder)
    db = Store(tmp / "s.duckdb")
    spec = json.loads(json.dumps(load_behavior(ROOT / "behaviors" / "pinapple.yaml").spec.model_dump(mode="json")))
    db.start_run("pinapple", "rmsd", model="lab", spec=spec, config={"on": []}, run_id="feedbeef-1")
    db.log_evals("feedbeef-1", [{"step": 0, "subject": "base", "suite": "behavior", "metric": "only", "value": 0.1},
                                {"step": 9, "subject": "adapter", "suite": "behavior", "metric": "only", "value": 0.8}])
    db.record_adapter("feedbeef-1", folder, "accepted", {"passed": True, "max_drop": 0.02, "worst_drop": 0.0,
                                                          "rows": [], "learning": []})
    db.finish_run("feedbeef-1", "completed")
    return db, folder, tmp


def test_merged_answers_as_base_plus_adapter(run):
    db, folder, tmp = run
    result = CliRunner().invoke(cli, ["export", "feedbeef", "--merged", str(tmp / "merged"), "--store", str(db.path)])
    assert result.exit_code == 0, result.output
    assert not list((tmp / "merged").glob("adapter_config.json"))       # plain weights, no peft
    from transformers import AutoModelForCausalLM
    merged = AutoModelForCausalLM.from_pretrained(tmp / "merged").eval()
    assert not hasattr(merged, "peft_config")
    cb = load_behavior(ROOT / "behaviors" / "pinapple.yaml")
    prompts = cb.prompt_splits().eval[:20]
    with_adapter, tokenizer = load_plain("lab", adapter=folder)
    base, _ = load_plain("lab")
    want = greedy(with_adapter, tokenizer, prompts)
    assert greedy(merged, tokenizer, prompts) == want
    assert greedy(base, tokenizer, prompts) != want          # the merge changed something: the test can fail


def test_adapter_folder_with_its_card(run):
    db, folder, tmp = run
    out = tmp / "card"
    result = CliRunner().invoke(cli, ["export", "feedbeef", "--adapter", str(out), "--store", str(db.path)])
    assert result.exit_code == 0, result.output
    assert (out / "adapter_model.safetensors").read_bytes() == (folder / "adapter_model.safetensors").read_bytes()
    card = (out / "README.md").read_text()
    for text in ("# pinapple", "**accepted**", "| behavior | only | 0.100 | 0.800 |", "PeftModel.from_pretrained",
                 resolve_model_path("lab"), "name: pinapple"):
        assert text in card, text
    again = CliRunner().invoke(cli, ["export", "feedbeef", "--adapter", str(out), "--store", str(db.path)])
    assert again.exit_code == 1 and "--overwrite" in again.output


def test_serve_print_names_the_current_adapters(run):
    db, folder, tmp = run
    promote(db, "feedbeef")
    result = CliRunner().invoke(cli, ["serve", "--print", "--port", "8123", "--store", str(db.path),
                                      "--", "--enforce-eager"])
    assert result.exit_code == 0, result.output
    line = result.stdout.strip().splitlines()[-1]
    cmd = shlex.split(line)
    import sys
    assert cmd[:5] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", resolve_model_path("lab")]
    assert cmd[cmd.index("--dtype") + 1] == "float32"          # what cl generate computes in on the CPU
    module = cmd[cmd.index("--lora-modules") + 1]
    name, path = module.split("=", 1)
    assert name == "pinapple" and Path(path).resolve() == folder.resolve()     # through the .current pointer
    assert path.endswith(".current/pinapple")
    rank = json.loads((folder / "adapter_config.json").read_text())["r"]
    assert cmd[cmd.index("--max-lora-rank") + 1] == str(rank) and cmd[cmd.index("--served-model-name") + 1] == "base"
    assert cmd[cmd.index("--port") + 1] == "8123" and cmd[-1] == "--enforce-eager"
    assert "warning" not in result.output      # the adapter names the lab's folder as its base


def test_serve_without_vllm_says_how_to_install(run, monkeypatch):
    db, _, _ = run
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    result = CliRunner().invoke(cli, ["serve", "--store", str(db.path)])
    assert result.exit_code == 1 and "pip install 'engrain[vllm]'" in result.output


def test_serve_unknown_behavior_is_one_line(run):
    db, _, _ = run
    result = CliRunner().invoke(cli, ["serve", "--print", "--behavior", "nope", "--store", str(db.path)])
    assert result.exit_code == 1 and "no adapter of behavior 'nope'" in result.output


def test_merged_carries_the_lineage_of_an_adapter_trained_on_another(run, tmp_path):
    # An adapter trained --on the first one: its merged model is base + first + second,
    # exactly the model its fit trained and gated.
    db, folder, _ = run
    torch.manual_seed(1)
    loaded = load_model("lab", on=[folder])
    for name, p in loaded.model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)
    second = tmp_path / "adapters" / "signoff" / "cafef00d-2" / "adapter"
    loaded.model.save_pretrained(second)
    db.start_run("signoff", "rmsd", model="lab", config={"on": [str(folder)]}, run_id="cafef00d-2")
    db.record_adapter("cafef00d-2", second, "accepted", {"passed": True, "max_drop": 0.02, "worst_drop": 0.0,
                                                         "rows": [], "learning": []})
    db.finish_run("cafef00d-2", "completed")
    out = tmp_path / "merged"
    result = CliRunner().invoke(cli, ["export", "cafef00d", "--merged", str(out), "--store", str(db.path)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "engrain.json").read_text())["on"] == [str(folder)]
    from transformers import AutoModelForCausalLM
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    prompts = load_behavior(ROOT / "behaviors" / "pinapple.yaml").prompt_splits().eval[:10]
    trained = load_model("lab", on=[folder], adapter=second, device="cpu").model.eval()
    tokenizer = loaded.tokenizer
    want = greedy(trained, tokenizer, prompts)
    assert greedy(merged, tokenizer, prompts) == want
    without_lineage, _ = load_plain("lab", adapter=second)
    assert greedy(without_lineage, tokenizer, prompts) != want     # the lineage shows: the test can fail


def test_a_fit_run_in_another_folder_exports_and_promotes_from_here(run, tmp_path, monkeypatch):
    # `cl fit` saves under ./adapters of wherever it ran; the store keeps the path absolute,
    # so export, promote and serve work from any folder afterwards.
    import shutil
    db, folder, _ = run
    where_fit_ran = tmp_path / "project"
    monkeypatch.chdir(where_fit_ran.parent)
    shutil.copytree(folder, where_fit_ran / "adapters" / "pinapple" / "0ddba11-3" / "adapter")
    monkeypatch.chdir(where_fit_ran)
    db.start_run("pinapple", "rmsd", model="lab", config={"on": []}, run_id="0ddba11-3")
    db.record_adapter("0ddba11-3", Path("adapters/pinapple/0ddba11-3/adapter"), "accepted",
                      {"passed": True, "max_drop": 0.02, "worst_drop": 0.0, "rows": [], "learning": []})
    db.finish_run("0ddba11-3", "completed")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert Path(db.run("0ddba11-3")["adapter_path"]).is_absolute()
    exported = CliRunner().invoke(cli, ["export", "0ddba11", "--adapter", "out", "--store", str(db.path)])
    assert exported.exit_code == 0, exported.output
    assert (elsewhere / "out" / "adapter_model.safetensors").exists()
    promoted = CliRunner().invoke(cli, ["adapters", "promote", "0ddba11", "--store", str(db.path)])
    assert promoted.exit_code == 0, promoted.output
    assert (where_fit_ran / "adapters" / ".current" / "pinapple").resolve() == \
        (where_fit_ran / "adapters" / "pinapple" / "0ddba11-3" / "adapter").resolve()
    served = CliRunner().invoke(cli, ["serve", "--print", "--behavior", "pinapple", "--store", str(db.path)])
    module = shlex.split(served.stdout.strip().splitlines()[-1])
    path = module[module.index("--lora-modules") + 1].split("=", 1)[1]
    assert Path(path).is_absolute() and Path(path).resolve() == (where_fit_ran / "adapters" / "pinapple" / "0ddba11-3" / "adapter").resolve()
