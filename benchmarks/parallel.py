"""A fit on one process beside the same fit on several (data parallel), and a run whose
second process is killed, then resumed.

    python benchmarks/parallel.py                               # pinapple, 1 and 2 processes
    python benchmarks/parallel.py --spec behaviors/signoff.yaml --processes 1,2 --seed 1
    python benchmarks/parallel.py --kill                        # kill -9 rank 1, then cl fit --resume

Each fit is the product's own command (``python -m engrain.cli fit``; several processes
through ``accelerate launch --multi_gpu``, which starts them over gloo without a GPU), with
its own store. Per fit: the verdict, the behavior without the hint, each gated suite, the
steps in the store (and whether each step is there once), seconds per step (the store's
own timings) and wall seconds. ``--kill``: the 2-process fit is started, rank 1 is killed
(SIGKILL) once the run has its first checkpoint, and ``cl fit --resume RUN`` on one process
finishes it; the store must hold one run with every step once.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from serve import _free_port  # noqa: E402 - the loopback port picker serve.py uses


def command(processes: int, spec: str, work: Path, seed: int) -> list[str]:
    fit = ["-m", "engrain.cli", "fit", spec, "--seed", str(seed), "--store", str(work / "store.duckdb"),
           "--out-dir", str(work / "adapters"), "--no-progress"]
    if processes == 1:
        return [sys.executable, *fit]
    port = _free_port()
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(port), *fit]


def env(processes: int) -> dict:
    # The machine's cores shared between the processes (torchrun would set 1 thread each).
    threads = max(1, (os.cpu_count() or 1) // processes)
    return {**os.environ, "OMP_NUM_THREADS": str(threads)}


def report(work: Path, label: str, seconds: float) -> dict:
    from engrain.store.db import Store
    db = Store(work / "store.duckdb")
    runs = db.runs()
    run = runs[-1]
    steps = db.steps(run["run_id"])
    numbers = [s["step"] for s in steps]
    ev = {(r["suite"], r["metric"], r["subject"]): r["value"] for r in db.evals(run["run_id"])
          if r["split"] == "eval" and r["decoding"] == "sample"}
    after = lambda suite, metric: ev.get((suite, metric, "adapter"))  # noqa: E731
    return {"fit": label, "runs": len(runs), "status": run["status"], "steps": len(numbers),
            "each once": len(set(numbers)) == len(numbers),
            "exists": after("behavior", "exists"), "only": after("behavior", "only"),
            "suites": ", ".join(f"{s} {ev[(s, m, 'base')]:.3f}->{v:.3f}" for (s, m, who), v in sorted(ev.items())
                                if who == "adapter" and not s.startswith(("behavior", "well_formed"))
                                and (s, m, "base") in ev),
            "s/step": statistics.mean(s["seconds"] for s in steps) if steps else None, "wall s": seconds}


def run_fit(processes: int, spec: str, work: Path, seed: int) -> tuple[int, float]:
    t0 = time.time()
    res = subprocess.run(command(processes, spec, work, seed), env=env(processes), capture_output=True, text=True)
    tail = [line for line in res.stdout.splitlines() if line.startswith(("gate:", "run "))]
    print(f"  {processes} process(es): exit {res.returncode}; " + " | ".join(tail), flush=True)
    return res.returncode, time.time() - t0


def killed_then_resumed(spec: str, work: Path, seed: int) -> dict:
    """The 2-process fit, rank 1 killed at its first checkpoint, then resumed on one process."""
    t0 = time.time()
    tag = f"{os.getpid()}-{time.time()}"      # inherited by the launcher's processes: how to find rank 1
    log = open(work.parent / "killed.log", "w")
    launcher = subprocess.Popen(command(2, spec, work, seed), env={**env(2), "ENGRAIN_BENCH_TAG": tag},
                                stdout=log, stderr=subprocess.STDOUT, text=True)
    while not list((work / "adapters").glob("*/*/checkpoints/step-*")) and launcher.poll() is None:
        time.sleep(0.5)
    victim = next((p for p in Path("/proc").iterdir() if p.name.isdigit() and _is_rank(p, 1, tag)), None)
    if victim is None:
        raise SystemExit("rank 1 was not found (the fit ended before its first checkpoint?)")
    os.kill(int(victim.name), signal.SIGKILL)
    launcher.wait()
    log.close()
    done = sorted(p.name for p in (work / "adapters").glob("*/*/checkpoints/step-*"))
    print(f"  killed rank 1 (pid {victim.name}); the launcher exited {launcher.returncode}; "
          f"checkpoints left: {', '.join(done)}", flush=True)
    (run_dir,) = (work / "adapters").glob("*/*")
    res = subprocess.run([sys.executable, "-m", "engrain.cli", "fit", "--resume", run_dir.name, "--store",
                          str(work / "store.duckdb"), "--out-dir", str(work / "adapters"), "--no-progress"],
                         env=env(1), capture_output=True, text=True)
    print(f"  resumed on 1 process: exit {res.returncode}; " + " | ".join(
        line for line in res.stdout.splitlines() if line.startswith(("resuming", "gate:", "run "))), flush=True)
    return report(work, "2 processes, rank 1 killed, resumed on 1", time.time() - t0)


def _is_rank(proc: Path, rank: int, tag: str) -> bool:
    try:
        environ = (proc / "environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"RANK={rank}".encode() in environ and f"ENGRAIN_BENCH_TAG={tag}".encode() in environ


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default=str(ROOT / "behaviors" / "pinapple.yaml"))
    ap.add_argument("--processes", default="1,2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kill", action="store_true", help="Also kill rank 1 of a 2-process fit, then resume it.")
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="engrain-parallel-"))
    print(f"spec {a.spec}, seed {a.seed}; work {root}")
    rows = []
    for n in (int(x) for x in a.processes.split(",") if x):     # --processes "": only --kill
        work = root / f"p{n}"
        _, seconds = run_fit(n, a.spec, work, a.seed)
        rows.append(report(work, f"{n} process(es)", seconds))
    if a.kill:
        rows.append(killed_then_resumed(a.spec, root / "killed", a.seed))
    if not rows:
        return
    columns = list(rows[0])
    print("\n| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for r in rows:
        print("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
    timed = [r for r in rows if r["s/step"] and r["fit"].endswith("process(es)")]
    if len(timed) > 1:
        print("\ns/step ratio: " + ", ".join(f"{r['fit']} / {timed[0]['fit']} = {r['s/step'] / timed[0]['s/step']:.2f}"
                                             for r in timed[1:]))


if __name__ == "__main__":
    main()
