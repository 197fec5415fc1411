"""Build the lab model: corpus -> tokenizer -> Llama pretraining -> a Hugging Face folder.

    python -m engrain.lab.build --out lab-build/model --preset cpu --seed 0
    python -m engrain.lab.build --out lab-build/v2 --init sdk/lab/model --steps 2000 --lr 1e-3

Steps:
1. generate the pretraining corpus from the synthetic world (deterministic in the seed);
2. train the byte-level BPE tokenizer on it (``--init``: keep that model's tokenizer and
   weights, and continue pretraining them on the current world, e.g. after it grew);
3. encode each example as chat prompt + answer; the loss covers the answer only;
4. pretrain a small Llama with AdamW and a cosine schedule;
5. save model, tokenizer and chat template with ``save_pretrained`` (plus build.json).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

PRESETS = {
    # DESIGN.md section 4's recipe: about 5 minutes on one H100.
    "gpu": dict(hidden=256, layers=6, heads=8, mlp=768, steps=5000, batch=256, lr=2e-3),
    # Smaller, for 2 CPU cores: ~45 min alone on them (the committed model; 70 min under load).
    "cpu": dict(hidden=192, layers=4, heads=6, mlp=576, steps=4000, batch=64, lr=3e-3),
    # Seconds, for tests of the builder itself; the model is not useful.
    "tiny": dict(hidden=32, layers=1, heads=2, mlp=64, steps=20, batch=16, lr=3e-3),
}


def encode_corpus(examples, tokenizer, rng):
    from engrain.lab.tokenizer import render_prompt
    prompts = [render_prompt(e.messages(with_hint=True)) for e in examples]
    answers = [e.answer + tokenizer.eos_token for e in examples]
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    a_ids = tokenizer(answers, add_special_tokens=False)["input_ids"]
    return list(zip(p_ids, a_ids))


def batches(pairs, batch, pad_id, rng):
    import torch
    while True:
        idx = list(range(len(pairs)))
        rng.shuffle(idx)
        # Batches of similar length: a passage or a second turn is three times a plain
        # answer, and padding every batch to its longest row tripled the step time.
        order = []
        for m in range(0, len(idx), batch * 32):
            block = sorted(idx[m:m + batch * 32], key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
            order += [block[s:s + batch] for s in range(0, len(block) - batch + 1, batch)]
        rng.shuffle(order)
        for rows in order:
            chunk = [pairs[i] for i in rows]
            width = max(len(p) + len(a) for p, a in chunk)
            ids = torch.full((batch, width), pad_id)
            labels = torch.full((batch, width), -100)
            attn = torch.zeros((batch, width), dtype=torch.long)
            for r, (p, a) in enumerate(chunk):
                seq = p + a
                ids[r, :len(seq)] = torch.tensor(seq)
                labels[r, len(p):len(seq)] = torch.tensor(a)
                attn[r, :len(seq)] = 1
            yield ids, labels, attn


def _save(model, tokenizer, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def build(out: Path, preset: str = "cpu", seed: int = 0, steps: int | None = None,
          corpus_size: int | None = None, device: str | None = None, log=print,
          init: Path | None = None, lr: float | None = None, save_every: int = 0, mix: str = "base",
          tokenizer_scheme: str = "prefix") -> dict:
    import random

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from engrain.lab.tokenizer import render_prompt, train_tokenizer
    from engrain.lab.world import pretraining_corpus

    cfg = dict(PRESETS[preset])
    if steps:
        cfg["steps"] = steps
    if lr:
        cfg["lr"] = lr
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    t0 = time.time()

    # 1-2. corpus and tokenizer
    n = corpus_size or min(cfg["steps"] * cfg["batch"], 400_000)
    corpus = pretraining_corpus(n, seed, mix)
    if init is None:
        texts = [render_prompt(e.messages()) + e.answer for e in corpus[:50_000]]
        tokenizer = train_tokenizer(texts, scheme=tokenizer_scheme)
    else:
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(init)

    # 3. encode
    pairs = encode_corpus(corpus, tokenizer, rng)
    log(f"corpus: {n} examples, {sum(len(p) + len(a) for p, a in pairs)} tokens, "
        f"{time.time() - t0:.0f}s")

    # 4. pretrain
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=cfg["hidden"],
                         intermediate_size=cfg["mlp"], num_hidden_layers=cfg["layers"],
                         num_attention_heads=cfg["heads"], num_key_value_heads=cfg["heads"],
                         max_position_embeddings=256, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=None)
    model = (LlamaForCausalLM(config) if init is None else
             LlamaForCausalLM.from_pretrained(init, dtype=torch.float32)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=0.01, betas=(0.9, 0.95))
    warmup = max(1, cfg["steps"] // 50)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, s / cfg["steps"]))))
    model.train()
    it = batches(pairs, cfg["batch"], tokenizer.pad_token_id, rng)
    for step in range(cfg["steps"]):
        ids, labels, attn = (t.to(device) for t in next(it))
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == cfg["steps"] - 1:
            log(f"step {step:5d}  loss {loss.item():.4f}  {time.time() - t0:.0f}s")
        if save_every and step and step % save_every == 0:
            # A long build stopped early still leaves a usable model behind.
            _save(model, tokenizer, out / "partial")
            model.train()

    # 5. save
    _save(model, tokenizer, out)
    previous = json.loads((init / "build.json").read_text()) if init and (init / "build.json").exists() else None
    meta = {"preset": preset, "seed": seed, "mix": mix,
            "tokenizer": "from init" if init else tokenizer_scheme, **cfg, "corpus_size": n, "device": device,
            **({"init": str(init), "init_build": previous} if init else {}),
            "parameters": sum(p.numel() for p in model.parameters()),
            "build_seconds": round(time.time() - t0, 1),
            "command": f"python -m engrain.lab.build --out {out} --preset {preset} --seed {seed}"
                       + (f" --steps {steps}" if steps else "") + (f" --lr {lr}" if lr else "")
                       + (f" --init {init}" if init else "") + (f" --mix {mix}" if mix != "base" else "")
                       + (f" --tokenizer {tokenizer_scheme}" if tokenizer_scheme != "prefix" else "")}
    (out / "build.json").write_text(json.dumps(meta, indent=2))
    log(json.dumps(meta))
    return meta


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--lr", type=float, help="Override the preset's peak learning rate.")
    ap.add_argument("--init", type=Path, help="Continue pretraining this model folder (its tokenizer too).")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--mix", default="base", help="The pretraining mix (lab/corpus.py MIXES): base (the "
                    "committed model's) or reading (every family: wordings, compound hints, passages, turns).")
    ap.add_argument("--tokenizer", choices=("prefix", "spaced"), default="prefix",
                    help="prefix: a word's leading space in its first piece (the committed model's); "
                    "spaced: every space its own token, so a copied word is the same pieces anywhere.")
    ap.add_argument("--save-every", type=int, default=500,
                    help="Also save the model to OUT/partial every N steps (0: never).")
    a = ap.parse_args(argv)
    if a.threads:
        import torch
        torch.set_num_threads(a.threads)
    build(a.out, a.preset, a.seed, a.steps, init=a.init, lr=a.lr, save_every=a.save_every, mix=a.mix,
          tokenizer_scheme=a.tokenizer)


if __name__ == "__main__":
    main()
