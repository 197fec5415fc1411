"""Peak extra memory and time of one loss forward + backward, three ways, side by side.

    python benchmarks/loss_memory.py                      # V=151,936, H=1024, 2 × 256, full RKL
    python benchmarks/loss_memory.py --seq 512 --chunk 128   # ~3 min on 2 busy CPU cores
    python benchmarks/loss_memory.py --loss topk_rkl --k 500
    python benchmarks/loss_memory.py --batch 1 --seq 2048 --dtype bf16   # on a GPU

The default is 2 × 256 positions so a run stays near a minute on 2 CPU cores (the three
V × H projections of 512 positions dominate); memory ratios grow with positions / chunk.

Every variant starts from the same hidden states (what the model's last layer gives) and a
frozen lm_head, and runs loss + backward to the student's hidden states:

- naive:        full logits for student and teacher, the loss over the whole (B, L, V) at once;
- chunked:      the same full logits (models return them), the loss chunk by chunk
                (engrain.engine.losses.chunked_per_position);
- hidden:       no full logits: only the selected positions are projected, chunk by chunk
                (engrain.engine.losses.chunked_from_hidden, frozen-head path), here every
                position (OPSD's case);
- hidden-rmsd:  the same with RMSD's S positions per row (--select).

Each variant runs in its own subprocess so peaks don't mix. Memory is the peak above the
state after the inputs exist: torch.cuda.max_memory_allocated on CUDA, else the peak RSS
(VmHWM, reset through /proc/self/clear_refs) minus the RSS before the step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

VARIANTS = ("naive", "chunked", "hidden", "hidden-rmsd")


def _proc_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(a: argparse.Namespace) -> dict:
    import torch

    from engrain.engine.losses import (chunked_from_hidden, chunked_per_position, masked_mean)
    from engrain.engine.context import loss_for
    from engrain.spec.schema import Train

    torch.set_num_threads(a.threads)
    dev = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                       "cpu" if a.device == "auto" else a.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
    fn = loss_for(Train(loss=a.loss, top_k=a.k, teacher_temperature=1.0))

    def inputs(b: int, length: int, h: int, v: int, select: int) -> tuple:
        g = torch.Generator(device=dev).manual_seed(0)
        hs = torch.randn(b, length, h, generator=g, device=dev, dtype=dtype)
        ht = hs + 0.1 * torch.randn(hs.shape, generator=g, device=dev, dtype=dtype)
        w = torch.randn(v, h, generator=g, device=dev, dtype=dtype) / h ** 0.5
        every = torch.ones(b, length, dtype=torch.bool, device=dev)
        rmsd = torch.zeros_like(every)
        rmsd[:, torch.randperm(length, generator=torch.Generator().manual_seed(0))[:select]] = True
        return hs.requires_grad_(), ht, w, every, rmsd

    def step(hs, ht, w, every, rmsd) -> torch.Tensor:
        if a.variant in ("naive", "chunked"):
            s_logits = hs @ w.T
            with torch.no_grad():
                t_logits = ht @ w.T
            per_pos = (fn(s_logits, t_logits) if a.variant == "naive"
                       else chunked_per_position(fn, s_logits, t_logits, chunk=a.chunk))
            mask = every
        else:
            mask = every if a.variant == "hidden" else rmsd
            per_pos = chunked_from_hidden(fn, hs, ht, w, mask, chunk=a.chunk)
        loss = masked_mean(per_pos, mask)
        loss.backward()
        return loss

    # Warm up on tiny inputs first: the first call of each kernel maps code pages and
    # allocator pools, which would otherwise count as the variant's peak.
    step(*inputs(1, 8, 16, max(a.k, 64), 2))
    data = inputs(a.batch, a.seq, a.hidden, a.vocab, a.select)

    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                     # reset VmHWM to the current RSS
        base = _proc_kib("VmRSS") * 1024
    t0 = time.perf_counter()
    loss = step(*data)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if cuda else _proc_kib("VmHWM") * 1024
    return {"variant": a.variant, "peak_mib": (peak - base) / 2**20, "seconds": seconds,
            "loss": float(loss), "device": str(dev)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vocab", type=int, default=151_936)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--chunk", type=int, default=64, help="positions per chunk")
    p.add_argument("--loss", default="full_rkl", help="topk_rkl | topk_rkl_renorm | full_rkl | fkl")
    p.add_argument("--k", type=int, default=500, help="top-K for the topk losses")
    p.add_argument("--select", type=int, default=5, help="positions per row for hidden-rmsd (S)")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--variant", help=argparse.SUPPRESS)   # set in the per-variant subprocess
    a = p.parse_args()
    if a.variant:
        print(json.dumps(worker(a)))
        return

    # A fixed glibc mmap threshold: big tensors are then always mmapped and returned to the
    # OS when freed, so RSS tracks live tensors (glibc's dynamic threshold would otherwise
    # serve chunk-sized blocks from the heap and keep freed ones, inflating the peak).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    rows = []
    for v in a.variants.split(","):
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--variant", v],
                             capture_output=True, text=True, env=env)
        if out.returncode != 0:
            sys.exit(f"variant {v} failed:\n{out.stderr}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))

    logits_mib = 2 * a.batch * a.seq * a.vocab * (4 if a.dtype == "fp32" else 2) / 2**20
    print(f"loss={a.loss}{f' k={a.k}' if 'topk' in a.loss else ''}  V={a.vocab:,}  H={a.hidden}  "
          f"B×L={a.batch}×{a.seq}  chunk={a.chunk}  dtype={a.dtype}  device={rows[0]['device']}  "
          f"threads={a.threads}")
    print(f"(one (B, L, V) logits tensor: {logits_mib / 2:,.0f} MiB; student + teacher: "
          f"{logits_mib:,.0f} MiB)")
    ref = next((r for r in rows if r["variant"] == "naive"), rows[0])
    vs = f"× {ref['variant']}"
    print(f"{'variant':<12} {'positions':>9} {'peak extra MiB':>15} {vs:>10} "
          f"{'time s':>8} {vs:>10} {'loss':>10}")
    for r in rows:
        n = a.batch * (a.select if r["variant"] == "hidden-rmsd" else a.seq)
        print(f"{r['variant']:<12} {n:>9} {r['peak_mib']:>15,.0f} "
              f"{r['peak_mib'] / ref['peak_mib']:>10.3f} {r['seconds']:>8.2f} "
              f"{r['seconds'] / ref['seconds']:>10.2f} {r['loss']:>10.5f}")


if __name__ == "__main__":
    main()
