"""Shared fixtures: a tokenizer trained on the lab world and a tiny random Llama.

Nothing here downloads weights; everything is built in a second or two on the CPU.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items):
    import importlib.util
    has_cuda = False
    if importlib.util.find_spec("torch"):
        import torch
        has_cuda = torch.cuda.is_available()
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def free_port():
    """A function giving a loopback port nothing listens on (for servers and launchers)."""
    import socket

    def pick() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    return pick


@pytest.fixture(scope="session")
def lab_tokenizer():
    from engrain.lab.tokenizer import render_prompt, train_tokenizer
    from engrain.lab.world import pretraining_corpus
    texts = [render_prompt(e.messages()) + e.answer for e in pretraining_corpus(3000, seed=0)]
    return train_tokenizer(texts)


@pytest.fixture(scope="session")
def tiny_model(lab_tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(lab_tokenizer), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                      max_position_embeddings=256, tie_word_embeddings=True,
                      pad_token_id=lab_tokenizer.pad_token_id,
                      eos_token_id=lab_tokenizer.eos_token_id, bos_token_id=None)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tiny_model, lab_tokenizer):
    """The tiny model and the lab tokenizer saved as a model folder, like a user's model."""
    d = tmp_path_factory.mktemp("tiny-model")
    tiny_model.save_pretrained(d)
    lab_tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory):
    """Tiny Qwen3-style and Llama-3-style model folders (tests/families.py), built once."""
    from families import FAMILIES, build
    return {name: build(family, tmp_path_factory.mktemp(name)) for name, family in FAMILIES.items()}


@pytest.fixture(params=["qwen3", "llama3"])
def family(request, family_dirs):
    """(the family's conventions, its model folder), for each family in turn."""
    from families import FAMILIES
    return FAMILIES[request.param], family_dirs[request.param]
