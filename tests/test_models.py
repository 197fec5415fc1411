"""Model loading: one base, a trainable "default" adapter, clear errors."""

from __future__ import annotations

import sys

import pytest
import torch

from engrain.engine.models import ModelError, load_model, load_tokenizer


def test_only_the_adapter_trains(tiny_dir):
    loaded = load_model(str(tiny_dir), device="cpu")
    trainable = [n for n, p in loaded.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and ".default." in n for n in trainable)
    # the backbone + lm head give the model's own logits (what scoring relies on)
    ids = torch.tensor([[3, 4, 5]])
    with torch.no_grad():
        h = loaded.backbone()(input_ids=ids).last_hidden_state
        torch.testing.assert_close(h @ loaded.lm_head_weight.T, loaded.model(input_ids=ids).logits)


def test_qlora_without_bitsandbytes_says_how_to_install_it(tiny_dir, monkeypatch):
    # None in sys.modules makes the import fail, as on a machine without the package
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    monkeypatch.setitem(sys.modules, "bitsandbytes.functional", None)
    with pytest.raises(ModelError, match=r"pip install 'engrain\[qlora\]'.*train.qlora: false") as e:
        load_model(str(tiny_dir), qlora=True, device="cpu")
    assert "\n" not in str(e.value)


def test_tokenizer_without_chat_template_is_refused(tiny_dir, tmp_path, lab_tokenizer):
    import shutil
    d = tmp_path / "no-template"
    shutil.copytree(tiny_dir, d)
    tok = load_tokenizer(str(d))
    tok.chat_template = None
    tok.save_pretrained(d)
    (d / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(ModelError, match="chat template"):
        load_tokenizer(str(d))


def test_missing_folder_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="could not load"):
        load_model(str(tmp_path / "nope"))


def test_building_on_earlier_adapters_in_4_bits_is_refused(tiny_dir, tmp_path):
    # 4-bit weights cannot hold the merged earlier adapters: refused up front, before any
    # load (not a 4-bit base that silently lacks the earlier behaviors).
    with pytest.raises(ModelError, match=r"--on merges the earlier adapters.*train.qlora: false"):
        load_model(str(tiny_dir), qlora=True, device="cpu", on=[tmp_path / "earlier" / "adapter"])
