"""QLoRA beside LoRA: the same spec fitted twice by ``cl fit``, base weights in 4 bits or not.

    python benchmarks/qlora_vs_lora.py                          # behaviors/pinapple.yaml, the lab model
    python benchmarks/qlora_vs_lora.py --out-dir /tmp/q --store /tmp/q/s.duckdb
    python benchmarks/qlora_vs_lora.py --prep-steps 12          # also: peft's kbit prep, step cost

Each fit is its own ``cl fit`` process (``--no-progress``), one after the other, so each
one's peak resident memory is its own (``os.wait4`` reports the child's ``ru_maxrss``).
From each run's ``metrics.json`` it prints wall time, peak RSS, the base model's weight
bytes in memory (4-bit layers packed), the behavior rates, every capability figure, the
step kept and the gate's verdict.

``--prep-steps N``: in this process, N RMSD steps on the QLoRA model as ``cl fit`` loads
it, alternated with N on one that peft's ``prepare_model_for_kbit_training`` also went
through (where the loader called it before): median seconds per step of each.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

CL = str(Path(sys.executable).with_name("cl"))


def weight_bytes(qlora: bool, spec_model: str) -> int:
    """Bytes of the loaded base model's parameters and buffers (adapter excluded)."""
    from engrain.engine.models import load_model
    model = load_model(spec_model, qlora=qlora, device="cpu").model
    tensors = [p for n, p in model.named_parameters() if "lora_" not in n] + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def run_fit(spec: str, qlora: bool, out_dir: Path, store: Path, extra: list[str]) -> dict:
    cmd = [CL, "fit", spec, "--out-dir", str(out_dir), "--store", str(store), "--no-progress",
           *(["--qlora"] if qlora else []), *extra]
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.time() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    m = re.search(r"^run (\S+): (.+) in \d+ s$", out, re.M)
    if m is None:
        sys.exit(f"the fit did not finish (exit {proc.returncode}):\n{out[-3000:]}")
    run_id = m.group(1)
    run_dir = next(out_dir.glob(f"*/{run_id}"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    saved = json.loads((run_dir / "run.json").read_text())
    return {"qlora": saved["qlora"], "run_id": run_id, "exit": proc.returncode, "seconds": seconds,
            "peak_rss_mib": usage.ru_maxrss / 1024, "metrics": metrics, "gate_line": out.strip().splitlines()}


def prep_step_cost(spec_path: str, steps: int) -> dict:
    """Median seconds per RMSD step: QLoRA as loaded by cl fit vs with peft's kbit prep."""
    import torch

    from engrain.engine.anchor import build_anchor
    from engrain.engine.context import build_context
    from engrain.engine.models import load_model
    from engrain.engine.step import distill_step
    from engrain.spec.behavior import load_behavior

    import engrain.engine.models as models
    from peft import prepare_model_for_kbit_training
    layout = models.keep_training_layout

    def make(prep: bool):
        behavior = load_behavior(spec_path)
        spec = behavior.spec
        torch.manual_seed(spec.train.seed)
        # the base model goes through peft's prep right after loading, before the adapter
        models.keep_training_layout = (lambda base: (layout(base), prepare_model_for_kbit_training(base))) \
            if prep else layout
        try:
            loaded = load_model(spec.model, lora=spec.train.lora, qlora=True, device="cpu")
        finally:
            models.keep_training_layout = layout
        cb = behavior.compile(loaded.tokenizer)
        ctx = build_context(spec, cb, loaded)
        ctx.anchor = build_anchor(loaded, ctx.sampler, cb, spec.anchor, spec.train.max_new_tokens,
                                  spec.train.seed)
        return ctx

    runs = {"as cl fit loads it": make(False), "with peft's kbit prep": make(True)}
    seconds: dict[str, list[float]] = {k: [] for k in runs}
    for step in range(steps):
        for name, ctx in runs.items():
            out = distill_step(ctx, step)
            if step >= 2:       # warm-up left out
                seconds[name].append(out.seconds)
    return {k: statistics.median(v) for k, v in seconds.items()}


def steps_cell(fit: dict) -> str:
    line = next((x for x in fit["gate_line"] if x.startswith("kept the checkpoint")), "")
    ran = re.search(r"ran (\d+) steps", line)
    return f"{ran.group(1) if ran else '?'} / {fit['metrics']['best_step']}"


FIGURES = [("behavior", "exists"), ("behavior", "only"), ("behavior_hinted", "exists"),
           ("specificity", "clean"), ("lab/arithmetic", "accuracy"), ("lab/capitals", "accuracy"),
           ("lab/in-context", "follows"), ("lab/hint-signoff", "follows"), ("well_formed", "rate")]


def figure(rows: list[dict], suite: str, metric: str, decoding: str = "sample"):
    return next((r["value"] for r in rows if (r["suite"], r["metric"], r["decoding"]) == (suite, metric, decoding)),
                None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spec", nargs="?", default="behaviors/pinapple.yaml")
    ap.add_argument("--out-dir", type=Path, default=Path("/tmp/qlora_vs_lora"))
    ap.add_argument("--store", type=Path, default=None, help="default: OUT_DIR/engrain.duckdb")
    ap.add_argument("--prep-steps", type=int, default=0, help="also time peft's kbit prep (0: skip)")
    ap.add_argument("--fit-args", default="", help='more `cl fit` options for both, e.g. "--steps 20"')
    a = ap.parse_args()
    a.out_dir.mkdir(parents=True, exist_ok=True)
    store = a.store or a.out_dir / "engrain.duckdb"
    extra = shlex.split(a.fit_args)
    from engrain.spec.behavior import load_behavior
    model = load_behavior(a.spec).spec.model
    fits = [run_fit(a.spec, q, a.out_dir, store, extra) for q in (False, True)]
    weights = {q: weight_bytes(q, model) for q in (False, True)}

    names = ["LoRA (fp32 base)", "QLoRA (NF4 base)"]
    print(f"\n{a.spec} on {model!r}, {os.cpu_count()} CPU cores\n")
    print(f"| figure | {' | '.join(names)} |")
    print("|---|---|---|")
    cell = lambda v, f="{:.3f}": "—" if v is None else f.format(v)   # noqa: E731
    print(f"| wall time (s) | {' | '.join(cell(f['seconds'], '{:.0f}') for f in fits)} |")
    print(f"| peak RSS (MiB) | {' | '.join(cell(f['peak_rss_mib'], '{:.0f}') for f in fits)} |")
    print(f"| base weights in memory (MiB) | {' | '.join(cell(weights[q] / 2**20, '{:.2f}') for q in (False, True))} |")
    print(f"| steps run / kept | {' | '.join(steps_cell(f) for f in fits)} |")
    base = fits[0]["metrics"]["base"]
    for suite, metric in FIGURES:
        b = figure(base, suite, metric)
        vals = [figure(f["metrics"]["adapter"], suite, metric) for f in fits]
        bq = figure(fits[1]["metrics"]["base"], suite, metric)
        print(f"| {suite}/{metric} (T=1; base {cell(b)} / 4-bit base {cell(bq)}) | {' | '.join(cell(v) for v in vals)} |")
    print(f"| gate | {' | '.join(f['metrics']['gate'].get('outcome', '?') for f in fits)} |")
    for f, n in zip(fits, names):
        print(f"\n{n}: run {f['run_id']}, exit {f['exit']}, config.qlora={f['qlora']}")
        print("\n".join(line for line in f["gate_line"] if line.startswith(("gate:", "kept", "stopped"))))
    if a.prep_steps:
        cost = prep_step_cost(a.spec, a.prep_steps)
        print(f"\nQLoRA RMSD step, median s over {a.prep_steps - 2} steps: "
              + "; ".join(f"{k} {v:.3f}" for k, v in cost.items()))


if __name__ == "__main__":
    main()
