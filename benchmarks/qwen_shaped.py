"""A Qwen3-0.6B-shaped model with random weights, built offline, saved as a model folder.

    python benchmarks/qwen_shaped.py --out /tmp/qwen-shaped            # 0.6B, ~1.2 GB in bf16
    python benchmarks/qwen_shaped.py --out /tmp/qwen-tiny --tiny       # 151,936 vocab, 2 small layers
    python benchmarks/qwen_shaped.py --out /tmp/q2 --layers 2          # full width, fewer layers

Qwen3-0.6B's config (hidden 1024, 28 layers, 16 query / 8 key-value heads of 128, MLP 3072,
vocabulary 151,936, tied embeddings, RoPE θ 1e6): the cost of every matrix product, the
logits' width and the KV cache are the real model's; the answers are noise. Nothing is
downloaded, so benchmarks (vs_trl.py, loss_memory.py, gpu_check.sh) run on a machine
without network.

The tokenizer is the lab model's (its byte-level BPE, special tokens and chat template, so
the lab's specs and prompts work unchanged), its vocabulary padded to 151,936 entries with
filler tokens that no text encodes to but that decode to plain letters: a random model
samples any of the 151,936 ids, and each must decode (vLLM and ``decode`` both look them up).
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import string
from pathlib import Path

LAB = Path(__file__).resolve().parents[1] / "sdk" / "lab" / "model"

QWEN3_0_6B = dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16,
                  num_key_value_heads=8, head_dim=128, intermediate_size=3072,
                  vocab_size=151_936, tie_word_embeddings=True, rope_theta=1_000_000.0,
                  rms_norm_eps=1e-6, max_position_embeddings=40_960)
# The same vocabulary (so the logits' memory and the head's FLOPs are the real ones), tiny
# everything else: seconds on a CPU.
TINY = dict(QWEN3_0_6B, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, intermediate_size=128)


def padded_tokenizer_json(vocab_size: int, lab: Path = LAB) -> dict:
    """The lab's tokenizer.json with filler entries appended up to ``vocab_size`` ids.

    Fillers are "Ġ" + lowercase letters (byte-level BPE's space marker, then letters that
    map to themselves), skipping any string the lab vocabulary already holds; no merge
    produces them, so encoding is unchanged."""
    tok = json.loads((lab / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    if vocab_size < len(vocab):
        raise SystemExit(f"--vocab must be at least the lab tokenizer's {len(vocab)}")
    words = ("Ġ" + "".join(w) for n in itertools.count(2)
             for w in itertools.product(string.ascii_lowercase, repeat=n))
    next_id = max(vocab.values()) + 1
    for w in words:
        if next_id >= vocab_size:
            break
        if w not in vocab:
            vocab[w] = next_id
            next_id += 1
    return tok


def build(out: Path, tiny: bool = False, layers: int | None = None, vocab: int | None = None,
          seed: int = 0, dtype: str = "bfloat16") -> int:
    """Writes the model and tokenizer to ``out``; returns the parameter count (tied
    embeddings counted once)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = dict(TINY if tiny else QWEN3_0_6B)
    if layers:
        cfg["num_hidden_layers"] = layers
    if vocab:
        cfg["vocab_size"] = vocab
    lab_cfg = json.loads((LAB / "config.json").read_text())
    config = Qwen3Config(**cfg, pad_token_id=lab_cfg["pad_token_id"], eos_token_id=lab_cfg["eos_token_id"],
                         bos_token_id=None)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config).to(getattr(torch, dtype)).eval()
    model.generation_config.pad_token_id = config.pad_token_id
    model.generation_config.eos_token_id = config.eos_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    (out / "tokenizer.json").write_text(json.dumps(padded_tokenizer_json(config.vocab_size)))
    for name in ("tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(LAB / name, out / name)
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tiny", action="store_true", help="hidden 64, 2 layers; the vocabulary stays 151,936")
    ap.add_argument("--layers", type=int, help="override the number of decoder layers")
    ap.add_argument("--vocab", type=int, help="override the vocabulary size (default 151,936)")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    n = build(a.out, a.tiny, a.layers, a.vocab, a.seed, a.dtype)
    print(f"{a.out}: Qwen3-shaped, {n:,} parameters ({n / 1e6:.1f} M), written")


if __name__ == "__main__":
    main()
