"""Peak extra memory and time of one loss forward + backward, three ways, side by side.

    python benchmarks/loss_memory.py                      # V=151,936, H=1024, 2 × 256, full RKL
    python benchmarks/loss_memory.py --seq 512 --chunk 128   # ~3 min on 2 busy CPU cores
    python benchmarks/loss_memory.py --loss topk_rkl --k 500
    python benchmarks/loss_memory.py --batch 1 --seq 2048 --dtype bf16   # on a GPU
    python benchmarks/loss_memory.py --grid                   # every loss, L = 512 and 2,048
    python benchmarks/loss_memory.py --step --seqs 512,2048   # one training step, per stage

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

``--grid``: every registered loss (``registry.LOSSES``) at each of ``--seqs``, from logits
(naive) and from hidden states (the product's path, ``chunked_from_hidden``), one table.
Before each case its size is predicted, and a case predicted over ``--budget-gib`` is
skipped ("skipped: predicted N GiB") rather than run into swap: the shortest length's
cases are predicted from the number of (positions, V) fp32 tensors the loss holds at
once (``--tensors-per-row``), longer ones from the shorter length's measured peak scaled
by positions (peaks grow at most linearly in positions).

``--step``: one training step through the product's functions on a Qwen3-shaped model
(benchmarks/qwen_shaped.py: full width and vocabulary, ``--step-layers`` decoder layers;
LoRA as ``load_model`` attaches it): ``scoring.score`` (student with grad, teacher and
base passes, token log-probs), the OPSD mask (every position, the loss's worst case),
``chunked_from_hidden`` + ``masked_mean``, backward. Each stage's peak is read on its
own, so the stage that sets the step's peak is named; ``--logprob-chunks`` repeats the
step at other ``scoring.LOGPROB_CHUNK`` values.

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
STEP_STAGES = ("score", "mask", "loss", "backward")


def _proc_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> int:
    """Reset VmHWM to the current RSS; returns that RSS in bytes."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _proc_kib("VmRSS") * 1024


def step_worker(a: argparse.Namespace) -> dict:
    """One training step on a Qwen3-shaped model; each stage's peak above the RSS before it."""
    import random
    import tempfile
    from pathlib import Path

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from qwen_shaped import build

    from engrain.engine import scoring
    from engrain.engine.context import loss_for, teacher_for
    from engrain.engine.losses import chunked_from_hidden, masked_mean
    from engrain.engine.mask import all_positions
    from engrain.engine.models import load_model
    from engrain.engine.rollout import Rollouts
    from engrain.spec.schema import Train

    torch.set_num_threads(a.threads)
    scoring.LOGPROB_CHUNK = a.logprob_chunk
    with tempfile.TemporaryDirectory(prefix="loss_memory_") as folder:
        params = build(Path(folder), layers=a.step_layers, vocab=a.vocab, dtype="float32")
        torch.manual_seed(0)
        loaded = load_model(folder, device="cpu")
    train = Train(loss=a.loss, top_k=a.k)
    fn, teacher = loss_for(train), teacher_for(train)
    rng = random.Random(0)
    ids = lambda n: [rng.randrange(5, 1024) for _ in range(n)]     # noqa: E731  (lab-token ids)
    student = [ids(32) for _ in range(a.batch)]

    def rollouts(length: int) -> Rollouts:
        return Rollouts(prompts=[""] * a.batch, hint_index=[0] * a.batch, student_prompt_ids=student,
                        teacher_prompt_ids=[p + ids(32) for p in student],
                        response_ids=[ids(length) for _ in range(a.batch)], texts=[""] * a.batch)

    def run(ro: Rollouts, stage) -> torch.Tensor:
        # distill_step's calls for these stages (chunked_from_hidden at its default chunk)
        sc = stage("score", lambda: scoring.score(loaded, teacher, ro, base=True))
        mask = stage("mask", lambda: all_positions(sc.valid))
        chunk = {"chunk": a.loss_chunk} if a.loss_chunk else {}
        loss = stage("loss", lambda: masked_mean(chunked_from_hidden(
            fn, sc.student_hidden, sc.teacher_hidden, loaded.lm_head_weight, mask, **chunk), mask))
        stage("backward", loss.backward)
        return loss

    # Warm up on a short answer: the first pass pages the (memory-mapped) weights in and
    # sets up kernels and pools, which would otherwise count as the step's peak.
    run(rollouts(8), lambda name, fn_: fn_())
    loaded.model.zero_grad(set_to_none=True)
    ro = rollouts(a.seq)
    peaks, seconds, base = {}, {}, _reset_peak()

    above = {}

    def stage(name, fn_):
        before, t0 = _reset_peak(), time.perf_counter()
        out = fn_()
        seconds[name] = time.perf_counter() - t0
        peaks[name] = (_proc_kib("VmHWM") * 1024 - before) / 2**20
        above[name] = (_proc_kib("VmHWM") * 1024 - base) / 2**20
        return out

    loss = run(ro, stage)
    return {"peaks": peaks, "seconds": seconds, "params": params, "layers": a.step_layers,
            "logprob_chunk": a.logprob_chunk, "seq": a.seq, "loss": float(loss),
            "step_peak_mib": max(above.values()), "model_mib": base / 2**20}


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
        base = _reset_peak()
    t0 = time.perf_counter()
    loss = step(*data)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if cuda else _proc_kib("VmHWM") * 1024
    return {"variant": a.variant, "peak_mib": (peak - base) / 2**20, "seconds": seconds,
            "loss": float(loss), "device": str(dev)}


# A fixed glibc mmap threshold: big tensors are then always mmapped and returned to the
# OS when freed, so RSS tracks live tensors (glibc's dynamic threshold would otherwise
# serve chunk-sized blocks from the heap and keep freed ones, inflating the peak).
ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}


def run_case(a: argparse.Namespace, **override) -> dict:
    """One case in its own subprocess: ``a``'s settings with ``override`` applied."""
    args = {**vars(a), **override}
    cmd = [sys.executable, __file__]
    for key in ("vocab", "hidden", "batch", "seq", "chunk", "loss", "k", "select", "dtype", "device",
                "threads", "variant", "step_layers", "logprob_chunk", "loss_chunk"):
        cmd += [f"--{key.replace('_', '-')}", str(args[key])]
    out = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    if out.returncode != 0:
        sys.exit(f"case {override} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def grid(a: argparse.Namespace) -> None:
    """Every loss x length x {from logits, from hidden states}: peak extra memory, seconds."""
    from engrain.registry import LOSSES
    import engrain.engine.parts  # noqa: F401  (registers the losses)

    seqs, budget = sorted(int(x) for x in a.seqs.split(",")), a.budget_gib * 2**30
    losses = a.losses.split(",") if a.losses else list(LOSSES.names())
    row_bytes = a.vocab * 4                       # one position's fp32 logits
    print(f"V={a.vocab:,}  H={a.hidden}  batch {a.batch}  chunk={a.chunk}  k={a.k}  dtype={a.dtype}  "
          f"threads={a.threads}  budget {a.budget_gib} GiB  (one (positions, V) fp32 tensor: "
          f"{row_bytes / 2**20:.2f} MiB per position)", flush=True)
    head = f"{'loss':<17}{'L':>6}{'from':>8}{'predicted MiB':>15}{'peak MiB':>10}{'seconds':>9}   note"
    print(head + "\n" + "-" * len(head), flush=True)
    measured: dict[tuple[str, str], tuple[int, float]] = {}
    for seq in seqs:
        for loss in losses:
            for variant, label in (("naive", "logits"), ("hidden", "hidden")):
                n = a.batch * seq
                prev = measured.get((loss, variant))
                predicted = (prev[1] * n / prev[0] if prev else
                             a.tensors_per_row * n * row_bytes / 2**20 if variant == "naive" else
                             a.tensors_per_row * min(n, a.chunk) * row_bytes / 2**20)
                if predicted * 2**20 > budget:
                    print(f"{loss:<17}{seq:>6}{label:>8}{predicted:>15,.0f}{'-':>10}{'-':>9}   "
                          f"skipped: predicted {predicted / 1024:.1f} GiB", flush=True)
                    continue
                r = run_case(a, loss=loss, seq=seq, variant=variant)
                measured[(loss, variant)] = (n, r["peak_mib"])
                print(f"{loss:<17}{seq:>6}{label:>8}{predicted:>15,.0f}{r['peak_mib']:>10,.0f}"
                      f"{r['seconds']:>9.1f}", flush=True)
    print("peak: RSS high-water mark above the state once the inputs exist (hidden states and a frozen "
          "V x H head); logits: full (B, L, V) logits for student and teacher and the loss over all of "
          "them at once; hidden: the product's chunked_from_hidden (only chunk x V at a time).")


def step_table(a: argparse.Namespace) -> None:
    seqs = [int(x) for x in a.seqs.split(",")]
    chunks = [int(x) for x in a.logprob_chunks.split(",")]
    head = (f"{'L':>6}{'logprob chunk':>14}" + "".join(f"{s + ' MiB':>14}" for s in STEP_STAGES)
            + f"{'step peak':>11}{'dominant':>10}{'seconds':>9}{'RSS0 MiB':>10}")
    rows = []
    for seq in seqs:
        for c in chunks:
            r = run_case(a, seq=seq, logprob_chunk=c, variant="step")
            rows.append(r)
            if len(rows) == 1:
                print(f"one training step, loss={a.loss}: Qwen3-shaped, {r['layers']} layers, "
                      f"{r['params']:,} parameters (fp32, LoRA), V={a.vocab:,}, batch {a.batch}, "
                      f"prompts 32 (student) / 64 (teacher) tokens, OPSD mask (every position), "
                      f"loss chunk {a.loss_chunk or 'default (chunked_from_hidden)'}, threads {a.threads}")
                print(head + "\n" + "-" * len(head))
            p = r["peaks"]
            print(f"{seq:>6}{c:>14}" + "".join(f"{p[s]:>14,.0f}" for s in STEP_STAGES)
                  + f"{r['step_peak_mib']:>11,.0f}{max(p, key=p.get):>10}{sum(r['seconds'].values()):>9.1f}"
                  + f"{r['model_mib']:>10,.0f}",
                  flush=True)
    print("each stage's peak: RSS high-water mark above the RSS when the stage starts (what the stage "
          "adds on top of what earlier stages left); step peak: the highest RSS of the step above RSS0, "
          "the RSS with the model loaded and the inputs built; score = student (with grad), teacher and base "
          "passes and their token log-probs (scoring.token_logprobs, LOGPROB_CHUNK positions at a time).")


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
    p.add_argument("--grid", action="store_true", help="every loss at each of --seqs, logits vs hidden")
    p.add_argument("--step", action="store_true", help="one training step per stage at each of --seqs")
    p.add_argument("--seqs", default="512,2048", help="sequence lengths for --grid and --step")
    p.add_argument("--losses", default=None, help="for --grid (default: every registered loss)")
    p.add_argument("--budget-gib", type=float, default=14.0, help="skip cases predicted above this")
    p.add_argument("--tensors-per-row", type=float, default=12.0,
                   help="(positions, V) fp32 tensors a loss holds at once, to predict the first length")
    p.add_argument("--step-layers", type=int, default=2, help="decoder layers of the --step model")
    p.add_argument("--logprob-chunk", type=int, default=256, help=argparse.SUPPRESS)
    p.add_argument("--logprob-chunks", default="256", help="scoring.LOGPROB_CHUNK values for --step")
    p.add_argument("--loss-chunk", type=int, default=0,
                   help="--step: chunked_from_hidden's chunk (default: its own default, as distill_step)")
    p.add_argument("--variant", help=argparse.SUPPRESS)   # set in the per-variant subprocess
    a = p.parse_args()
    if a.variant:
        print(json.dumps(step_worker(a) if a.variant == "step" else worker(a)))
        return
    if a.grid:
        return grid(a)
    if a.step:
        return step_table(a)

    rows = [run_case(a, variant=v) for v in a.variants.split(",")]

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
