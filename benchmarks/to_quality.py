"""Time to quality: how long until each system has an adapter the gate would accept, on
the same work. Run through ``python benchmarks/vs_trl.py --to-quality`` (its workers and
settings; see there), or directly:

    python benchmarks/to_quality.py --reps 3                 # rmsd beside TRL's SDFT, the pinapple spec

Each system trains in its own subprocess and is evaluated every ``train.eval_every`` steps
by one evaluator, engrain's own checkpoint selection on the val questions
(``checks.evals.evaluate`` + ``checks.selection.judge_candidate``): the behavior rate
without the hint (mean of exists and only) and every gated suite within its tolerance.
Training time is the sum of the steps' own seconds (evals excluded, for both).

The quality to reach is engrain's: the val score of the checkpoint its run would keep (the
best that keeps every gated suite), which must also clear the spec's learning bar. Engrain
trains for the spec's ``train.steps``; its time to quality is the training time until its
first checkpoint at that score. TRL trains until a checkpoint reaches the same score with
the suites kept, or its budget (3x engrain's steps to quality) runs out; then its time is
the whole budget's, and the output says so. Repetitions alternate which system runs first;
TRL reads the target of the latest engrain run. Medians over repetitions.

Prints the curves (val score per eval, training seconds), one line per repetition, and two
summary lines: ``time-to-quality rmsd/trl: 0.NN`` and ``step rmsd/trl: 0.NN``; ``--svg``
writes the curves as a picture.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


class Judge:
    """engrain's val evals and selection rule, against the base model's val figures."""

    def __init__(self, spec, cb, model, tokenizer):
        from engrain.checks.evals import evaluate
        from engrain.checks.gate import max_drops, val_bar
        self.spec, self.cb, self.evaluate = spec, cb, evaluate
        self.drops = max_drops(spec)
        self.base = self._rows(model, tokenizer, adapter_on=False)
        self.bar = val_bar(spec, self.base)

    def _rows(self, model, tokenizer, adapter_on: bool) -> list[dict]:
        t = self.spec.train
        was = model.training
        model.eval()
        rows = self.evaluate(model, tokenizer, self.cb, self.spec, adapter_on, t.val_n, t.seed, split="val")
        model.train(was)
        return rows

    def __call__(self, step: int, model, tokenizer):
        from engrain.checks.selection import judge_candidate
        return judge_candidate(step, self.base, self._rows(model, tokenizer, True), set(self.drops),
                               self.drops.__getitem__)


def engrain_worker(a) -> dict:
    from step_cost import make

    from engrain.registry import METHODS
    from engrain.spec.behavior import load_behavior
    run = make(a.spec, a.method, a.seed)
    spec = load_behavior(a.spec).with_overrides({"method": a.method, "seed": a.seed}).spec
    judge = Judge(spec, run.behavior, run.loaded.model, run.tokenizer)
    step_fn = METHODS.get(run.train.method).step
    curve, seconds, tokens, steps = [], 0.0, 0, []
    for step in range(spec.train.steps):
        out = step_fn(run, step)
        seconds += out.seconds
        tokens += sum(len(r) for r in out.rollouts.response_ids)
        steps.append(out.seconds)
        if (step + 1) % spec.train.eval_every == 0:
            c = judge(step + 1, run.loaded.model, run.tokenizer)
            curve.append({"step": step + 1, "train_s": seconds, "tokens": tokens, "score": c.score,
                          "qualifies": c.qualifies, "worst": c.worst_suite})
    return {"curve": curve, "step_s": statistics.median(steps), "bar": judge.bar}


def trl_worker(a) -> dict:
    import tempfile

    import vs_trl
    from transformers import TrainerCallback

    target, state = a.target, {"curve": [], "seconds": 0.0, "tokens": 0}

    class EvalEvery(TrainerCallback):
        """After the step timer: a val eval every eval_every steps; stop at the target."""

        def on_step_end(self, args, st, control, model=None, processing_class=None, **_):
            row = timer.rows[-1]
            state["seconds"] += row["seconds"]
            state["tokens"] += int(row.get("tokens", 0))
            if st.global_step % judge.spec.train.eval_every == 0:
                c = judge(st.global_step, trainer.model, tok)
                state["curve"].append({"step": st.global_step, "train_s": state["seconds"],
                                       "tokens": state["tokens"], "score": c.score, "qualifies": c.qualifies,
                                       "worst": c.worst_suite})
                if c.qualifies and c.score >= target:
                    control.should_training_stop = True

    judge = trainer = tok = timer = None

    def setup(trainer_, tok_, cb, spec, timer_):
        nonlocal judge, trainer, tok, timer
        trainer, tok, timer = trainer_, tok_, timer_
        judge = Judge(spec, cb, trainer_.model, tok_)
        return [EvalEvery()]

    a.model, a.quality, a.with_base = None, False, False      # what vs_trl.train_trl reads besides
    with tempfile.TemporaryDirectory(prefix="to_quality_") as out_dir:
        result = vs_trl.train_trl(a, out_dir, setup=setup)
    return {"curve": state["curve"], "step_s": statistics.median(r["seconds"] for r in result["rows"]),
            "bar": judge.bar, "checks": result["checks"]}


# --- the driver ---------------------------------------------------------------------------

def run_worker(a, system: str, steps: int | None = None, target: float | None = None) -> dict:
    cmd = [sys.executable, __file__, "--worker", system, "--spec", a.spec, "--seed", str(a.seed)]
    cmd += ["--steps", str(steps)] if steps else []
    cmd += ["--target", str(target)] if target is not None else []
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "TRL_EXPERIMENTAL_SILENCE": "1", **os.environ}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"{system} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def reached(curve: list[dict], target: float) -> dict | None:
    return next((c for c in curve if c["qualifies"] and c["score"] >= target - 1e-9), None)


def engrain_target(result: dict) -> tuple[float, dict | None]:
    """The score of the checkpoint engrain's selection keeps, and the first eval that reached it."""
    kept = [c for c in result["curve"] if c["qualifies"]]
    if not kept:
        return float("inf"), None
    target = max(c["score"] for c in kept)
    return target, reached(result["curve"], target)


def svg(path: Path, results: dict) -> None:
    from engrain.store.report import line_chart
    series = [{"name": f"{s} rep {i + 1}", "key": s,
               "points": [(c["train_s"], c["score"]) for c in rep["curve"]]}
              for s, reps in results.items() for i, rep in enumerate(reps)]
    path.write_text(line_chart("Val behavior rate without the hint against training seconds", series,
                               y_range=(0, 1), x_label="training seconds"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="behaviors/pinapple.yaml")
    ap.add_argument("--method", default="rmsd")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget", type=float, default=3.0, help="TRL's steps, as a multiple of engrain's to quality.")
    ap.add_argument("--svg", help="Write the curves as an SVG picture here.")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--target", type=float, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(trl_worker(a) if a.worker == "trl" else engrain_worker(a)))
        return
    systems = [a.method, "trl"]
    results = {s: [] for s in systems}
    t0, target, budget = time.time(), None, None
    for rep in range(a.reps):
        order = systems if rep % 2 == 0 or target is None else systems[::-1]
        for s in order:
            if s == "trl":
                results[s].append(run_worker(a, "trl", budget, target))
            else:
                a.method = s
                results[s].append(run_worker(a, "engrain"))
                target, first = engrain_target(results[s][-1])
                if first is None:
                    sys.exit(f"engrain's run kept no checkpoint that keeps every suite: nothing to reach "
                             f"(curve: {results[s][-1]['curve']})")
                budget = int(a.budget * first["step"])
            print(f"rep {rep + 1}/{a.reps} {s} done ({time.time() - t0:.0f} s so far)", file=sys.stderr, flush=True)
    report(a, systems, results, target)
    if a.svg:
        svg(Path(a.svg), results)


def report(a, systems, results, target) -> None:
    print(f"\n{a.spec}, seed {a.seed}: the quality to reach is engrain's kept checkpoint, val score "
          f"{target:.3f} (learning bar {results[systems[0]][-1]['bar']:.3f}) with every gated suite kept; "
          f"TRL's budget {a.budget:g}x engrain's steps to it\n")
    print("curves (last repetition): step, training seconds, val score (*suite: that suite dropped beyond its "
          "tolerance)")
    for s in systems:
        curve = results[s][-1]["curve"]
        print(f"{s:<6}" + "  ".join(f"{c['step']}:{c['train_s']:.0f}s:{c['score']:.2f}"
                                     f"{'' if c['qualifies'] else '*' + c['worst'].removeprefix('lab/')}"
                                     for c in curve))
    print(f"\n{'system':<7}{'rep':>4}{'reached':>9}{'step':>6}{'train s':>9}{'tokens':>8}{'step s':>8}")
    ttq = {s: [] for s in systems}
    for s in systems:
        for i, rep in enumerate(results[s]):
            hit = reached(rep["curve"], target)
            last = rep["curve"][-1] if rep["curve"] else {"step": 0, "train_s": 0.0, "tokens": 0}
            row = hit or last
            ttq[s].append(row["train_s"])
            print(f"{s:<7}{i + 1:>4}{'yes' if hit else 'NO':>9}{row['step']:>6}{row['train_s']:>9.1f}"
                  f"{row['tokens']:>8}{rep['step_s']:>8.3f}")
    never = [s for s in systems if not any(reached(r["curve"], target) for r in results[s])]
    if never:
        print(f"\n{', '.join(never)} never reached it: its time is its whole budget's, so the ratio below "
              "is against that budget (a lower bound on its time to quality)")
    m, trl = systems
    print(f"\ntime-to-quality {m}/trl: {statistics.median(ttq[m]) / statistics.median(ttq[trl]):.2f}")
    step = {s: statistics.median(r["step_s"] for r in results[s]) for s in systems}
    print(f"step {m}/trl: {step[m] / step[trl]:.2f}")


if __name__ == "__main__":
    main()
