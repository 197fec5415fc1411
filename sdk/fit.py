"""``engrain.fit``: train one behavior's adapter, from spec to gated adapter.

1. load the spec (on resume: the one the run stored), the model (one base, a "default"
   LoRA adapter) and compile the behavior;
2. open (or resume) the run: its folder ``adapters/<behavior>/<run-id>/`` and store row;
3. evaluate the base model: on the gate's eval split (temperature 1, and greedy beside
   it) and on the val split (what checkpoint selection compares against);
4. sample the anchor's base answers;
5. train: calls of the method's step function (step.py), logging each step; every
   ``eval_every`` steps a val eval offers the checkpoint to the selection (selection.py),
   which keeps the best and stops once the behavior has plateaued; checkpoints are atomic;
   Ctrl-C / SIGTERM checkpoint and stop;
6. restore the best checkpoint, save it as the adapter, evaluate it, and gate it: accepted,
   regressed (something dropped) or not learned (the behavior fell short of ``learned``).
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from engrain.engine.anchor import AnchorSet, build_anchor
from engrain.spec.behavior import Behavior, CompiledBehavior, load_behavior
from engrain.rundir import find_run_dir, latest_checkpoint, load_checkpoint, save_checkpoint, write_atomic
from engrain.checks.evals import evaluate
from engrain.checks.gate import gated, gated_suites
from engrain.checks.gate import GateVerdict
from engrain.judge import make_judge
from engrain.engine.losses import PerPositionFn, get_per_position_loss
from engrain.engine.models import STUDENT, LoadedModel, load_model
from engrain.engine.mask import Mask
from engrain.registry import METHODS, SAMPLERS
from engrain.engine.rollout import Rollouts, Sampler
from engrain.engine.scoring import Scores
from engrain.checks.selection import Selection, judge_candidate
from engrain.spec.schema import BehaviorSpec, Train
from engrain.engine.step import StepResult
from engrain.store.db import Store
from engrain.engine.teacher import TeacherPolicy, make_teacher, snapshot_student
from engrain.engine.update import Updater

ROLLOUTS_LOGGED_PER_STEP = 4


class FitInterrupted(Exception):
    """Training stopped by Ctrl-C or SIGTERM after saving a checkpoint."""

    def __init__(self, run_id: str, step: int):
        super().__init__(f"run {run_id} interrupted at step {step}; resume with: cl fit --resume {run_id}")
        self.run_id, self.step = run_id, step


@dataclass
class Run:
    """Everything a step needs, built once: the step never checks a mode string."""
    cfg: Train                  # the spec's train section, with overrides applied
    cb: CompiledBehavior
    loaded: LoadedModel
    tokenizer: object
    sampler: Sampler
    teacher: TeacherPolicy
    select: Callable[[Rollouts, Scores], Mask] | None   # None for SFT
    loss_fn: PerPositionFn
    anchor: AnchorSet | None
    updater: Updater
    needs_base: bool = False    # the mask's guard compares with the base model


@dataclass(frozen=True)
class FitResult:
    run_id: str
    run_dir: Path
    adapter_path: Path
    status: str                         # completed | rejected
    base: list[dict]
    adapter: list[dict]
    verdict: GateVerdict
    seconds: float
    best_step: int = 0                  # the checkpoint kept
    steps_run: int = 0

    @property
    def outcome(self) -> str:
        return self.verdict.outcome


def build_run(spec: BehaviorSpec, cb: CompiledBehavior, loaded: LoadedModel) -> Run:
    cfg = spec.train
    sampler = SAMPLERS.get(cfg.sampler)(loaded.model, loaded.tokenizer)
    j = spec.judge
    judge = make_judge(j.model, api_base=j.api_base, api_key_env=j.api_key_env, timeout_s=j.timeout_s,
                       max_retries=j.max_retries, max_concurrency=j.max_concurrency,
                       self_generate=self_generate(loaded, sampler) if j.model == "self" else None)
    method = METHODS.get(cfg.method)
    return Run(cfg=cfg, cb=cb, loaded=loaded, tokenizer=loaded.tokenizer, sampler=sampler,
               teacher=make_teacher(cfg.teacher.kind, cfg.teacher.refresh_after, cfg.teacher.ema_decay),
               select=method.mask(cb, loaded.tokenizer, judge, cfg) if method.mask else None, anchor=None,
               loss_fn=get_per_position_loss(cfg.loss, cfg.top_k, cfg.jsd_beta, cfg.teacher_temperature),
               updater=Updater(loaded.model, STUDENT, cfg.lr, cfg.steps, cfg.warmup, cfg.min_lr_ratio),
               needs_base=method.needs_base(cfg))


def self_generate(loaded: LoadedModel, sampler: Sampler, max_new_tokens: int = 128) -> Callable[[list[dict]], str]:
    """The ``self`` judge's model: the base (adapter off) answering greedily."""
    from engrain.spec.chat import chat_ids

    def generate(messages: list[dict]) -> str:
        ids = chat_ids(loaded.tokenizer, messages)
        with torch.no_grad(), loaded.model.disable_adapter():
            out = sampler.sample([ids], max_new_tokens, 0.0)
        return loaded.tokenizer.decode(out[0], skip_special_tokens=True)
    return generate


def fit(spec_path: str | Path | None = None, *, method: str | None = None, steps: int | None = None,
        seed: int | None = None, model: str | None = None, judge: str | None = None,
        sampler: str | None = None, out_dir: str | Path = "adapters",
        store: str | Path | None = None, resume: str | None = None, eval_n: int = 200,
        checkpoint_every: int = 10, keep_rejected: bool = False, progress: bool = True,
        log=print) -> FitResult:
    """Train the adapter for the behavior spec at ``spec_path``; see the module docstring.

    Overrides (``method``, ``steps``, ``seed``, ``model``, ``judge``, ``sampler``) win over the
    spec's values.
    ``resume``: a run id whose latest complete checkpoint to continue from; the validated
    spec and the options are read back from that run's folder (the YAML on disk is not
    re-read; a warning says if it changed).
    """
    t_start = time.time()
    db = Store(store) if store else Store()
    # 1. spec, model, compiled behavior
    if resume:
        run_dir = find_run_dir(Path(out_dir), resume)
        saved = json.loads((run_dir / "run.json").read_text())
        behavior = _stored_behavior(saved, log)
        eval_n = saved.get("eval_n", eval_n)
    else:
        overrides = {k: v for k, v in dict(method=method, steps=steps, seed=seed, model=model,
                                           judge=judge, sampler=sampler).items() if v is not None}
        behavior = load_behavior(spec_path).with_overrides(overrides)
    spec = behavior.spec
    torch.manual_seed(spec.train.seed)     # before the adapter exists: its init is seeded too
    loaded = load_model(spec.model, lora=spec.train.lora, qlora=spec.train.qlora)
    cb = behavior.compile(loaded.tokenizer)
    cb.assert_no_leak()
    run = build_run(spec, cb, loaded)
    # 2. the run: a new folder and store row, or the interrupted one restored
    if not resume:
        run_dir, saved = _new_run(db, Path(out_dir), behavior, overrides, eval_n)
    run_id = saved["run_id"]
    start, selection = _restore(run_dir, run, db, run_id, log)
    # 3. the base model's figures (once per run; a resume reuses them)
    if "base" not in saved:
        saved["base"] = _evaluate_both(loaded, cb, spec, False, eval_n)
        saved["base_val"] = evaluate(loaded.model, loaded.tokenizer, cb, spec, False, spec.train.val_n,
                                     spec.train.seed, split="val")
        _write_json(run_dir / "run.json", saved)
        db.log_evals(run_id, [{**r, "step": 0, "subject": "base"} for r in saved["base"] + saved["base_val"]])
    log("base:    " + _fmt(saved["base"]))
    # 4. the anchor's base answers (seeded: a resume rebuilds the same set)
    run.anchor = build_anchor(loaded, run.sampler, cb, spec.anchor, spec.train.max_new_tokens, spec.train.seed)
    # 5. train, keeping the best checkpoint on val
    steps_run = _train(run, spec, db, run_id, run_dir, start, selection, saved["base_val"],
                       checkpoint_every, progress, log)
    if spec.train.keep == "best":
        best = selection.best.step
        _load_best(run_dir, loaded)
        log(f"kept the checkpoint of step {best} (val behavior {selection.best.score:.3f}); ran {steps_run} steps")
    else:
        best = steps_run
    # 6. the adapter: save, evaluate, gate
    adapter_dir = _save_adapter(run_dir / "adapter", loaded.model)
    after = _evaluate_both(loaded, cb, spec, True, eval_n)
    db.log_evals(run_id, [{**r, "step": best, "subject": "adapter"} for r in after])
    log("adapter: " + _fmt(after))
    sampled = lambda rows: [r for r in rows if r["decoding"] == "sample"]   # noqa: E731
    verdict = gated(spec, sampled(saved["base"]), sampled(after))
    if not verdict.passed and not keep_rejected:
        # Out of the way, so nothing loads it as a good adapter; kept for inspection.
        adapter_dir = adapter_dir.replace(run_dir / "adapter.rejected")
    _write_json(run_dir / "metrics.json", {"base": saved["base"], "adapter": after, "best_step": best,
                                           "selection": selection.state(), "gate": verdict.to_dict()})
    db.record_adapter(run_id, adapter_dir, "accepted" if verdict.passed else
                      ("kept" if keep_rejected else "rejected"), verdict.to_dict())
    status = "completed" if verdict.passed else "rejected"
    db.finish_run(run_id, status)
    log(figures_table(saved["base"], after))
    log(f"gate: {verdict.summary()}")
    return FitResult(run_id, run_dir, adapter_dir, status, saved["base"], after, verdict,
                     time.time() - t_start, best, steps_run)


def _evaluate_both(loaded, cb, spec, adapter_on: bool, n: int) -> list[dict]:
    """The gate's figures (temperature 1) and the greedy ones beside them, on the eval split."""
    return [row for decoding in ("sample", "greedy")
            for row in evaluate(loaded.model, loaded.tokenizer, cb, spec, adapter_on, n, spec.train.seed,
                                decoding=decoding)]


def _stored_behavior(saved: dict, log) -> Behavior:
    """The behavior as the run validated it when it started; warn if the file changed."""
    stored = BehaviorSpec.model_validate(saved["spec"])
    path = Path(saved["spec_path"])
    try:
        on_disk = load_behavior(path).with_overrides(saved["overrides"]).spec
        if on_disk != stored:
            log(f"warning: {path} changed since the run started; resuming with the spec it stored")
    except Exception as e:      # noqa: BLE001 - the stored spec is what matters; say why
        log(f"warning: {path} no longer loads ({e}); resuming with the spec the run stored")
    return Behavior(stored, path)


def _new_run(db, out_dir: Path, behavior: Behavior, overrides: dict, eval_n: int) -> tuple[Path, dict]:
    spec = behavior.spec
    # Random part first: `cl runs` shows 8 characters, and any unique prefix names a run.
    run_id = f"{uuid.uuid4().hex[:8]}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = out_dir / spec.name / run_id
    run_dir.mkdir(parents=True)
    db.start_run(spec.name, spec.train.method, spec=spec.model_dump(mode="json"),
                 config={"overrides": overrides, "eval_n": eval_n}, model=spec.model,
                 seed=spec.train.seed, run_id=run_id)
    saved = {"run_id": run_id, "spec_path": str(Path(behavior.path).resolve()), "overrides": overrides,
             "eval_n": eval_n, "spec": spec.model_dump(mode="json")}
    _write_json(run_dir / "run.json", saved)
    return run_dir, saved


def _restore(run_dir: Path, run: Run, db, run_id: str, log) -> tuple[int, Selection]:
    """Load the latest complete checkpoint, if any: (steps already done, selection state)."""
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        _save_adapter(run_dir / "best", run.loaded.model)      # step 0: the untrained adapter
        return 0, Selection(run.cfg.patience)
    if json.loads((ckpt / "state.json").read_text()).get("teacher_version", 0) > 0:
        snapshot_student(run.loaded.model)      # the frozen teacher adapter must exist to load it
    state = load_checkpoint(ckpt, run.loaded.model, run.updater.optimizer)
    run.teacher.version = state.get("teacher_version", 0)
    log(f"resuming {run_id} from {ckpt.name}")
    db.resume_run(run_id)
    return state["step"], Selection.from_state(state["selection"])


def _save_adapter(path: Path, model) -> Path:
    """The student adapter, written atomically to ``path`` (the final one, or ``best``)."""
    return write_atomic(path, lambda tmp: model.save_pretrained(tmp, selected_adapters=[STUDENT]))


def _load_best(run_dir: Path, loaded: LoadedModel) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    weights = load_file(str(run_dir / "best" / "adapter_model.safetensors"))
    set_peft_model_state_dict(loaded.model, weights, adapter_name=STUDENT)


def _train(run: Run, spec, db, run_id: str, run_dir: Path, start: int, selection: Selection,
           base_val: list[dict], checkpoint_every: int, progress: bool, log) -> int:
    """The loop: a step, its store rows, the progress bar, val evals and selection,
    checkpoints. Ctrl-C or SIGTERM finish the step, checkpoint and raise FitInterrupted; a
    crash checkpoints, marks the run failed and re-raises: nothing done before the current
    step is lost. Returns the number of steps done."""
    cfg = spec.train
    step_fn = METHODS.get(cfg.method).step
    done = start                # steps completed; what a checkpoint records
    checkpoint = lambda: save_checkpoint(run_dir, done, run.loaded.model, run.updater.optimizer,  # noqa: E731
                                         {"teacher_version": run.teacher.version,
                                          "selection": selection.state()})
    with _Progress(progress, cfg.steps, start, spec.name) as bar, _StopOnSignal() as stop:
        try:
            for step in range(start, cfg.steps):
                if selection.should_stop():
                    break
                out = step_fn(run, step)
                done = step + 1
                db.log(run_id, steps=[step_row(out)], rollouts=_rollout_rows(out, run.tokenizer),
                       judge_calls=_judge_rows(out, spec.judge.model))
                bar.update(out)
                if done % cfg.eval_every == 0 or done == cfg.steps:
                    rows = evaluate(run.loaded.model, run.tokenizer, run.cb, spec, True, cfg.val_n,
                                    cfg.seed, split="val")
                    db.log_evals(run_id, [{**r, "step": done, "subject": "adapter"} for r in rows])
                    cand = judge_candidate(done, base_val, rows, gated_suites(spec), spec.regression.max_drop_of)
                    if selection.offer(cand):
                        _save_adapter(run_dir / "best", run.loaded.model)
                    bar.val(cand, selection)
                if done % checkpoint_every == 0 or selection.should_stop():
                    checkpoint()
                stop.check()
        except KeyboardInterrupt:
            checkpoint()
            db.finish_run(run_id, "interrupted")
            raise FitInterrupted(run_id, done) from None
        except Exception:
            checkpoint()
            db.finish_run(run_id, "failed")
            raise
    if selection.should_stop():
        log(f"stopped at step {done}: no better checkpoint in {selection.patience} val evals")
    return done


# --- small helpers ---------------------------------------------------------------------

def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)


def _fmt(rows: list[dict]) -> str:
    return "  ".join(f"{r['suite']}/{r['metric']} {r['value']:.3f}" for r in rows if r["decoding"] == "sample")


def figures_table(base: list[dict], adapter: list[dict]) -> str:
    """Base -> adapter for every figure, temperature 1 (what the gate reads) and greedy."""
    by = {(r["suite"], r["metric"], r["decoding"], side): r["value"]
          for side, rows in (("base", base), ("adapter", adapter)) for r in rows}
    keys = list(dict.fromkeys((r["suite"], r["metric"]) for r in base + adapter))
    cell = lambda k, d: " -> ".join(f"{by[(*k, d, side)]:.3f}" if (*k, d, side) in by else "  -  "  # noqa: E731
                                    for side in ("base", "adapter"))
    lines = [f"{'figure':<30} {'T=1: base -> adapter':>22}   {'greedy: base -> adapter':>24}"]
    lines += [f"{k[0] + '/' + k[1]:<30} {cell(k, 'sample'):>22}   {cell(k, 'greedy'):>24}" for k in keys]
    return "\n".join(lines)


def step_row(out: StepResult) -> dict:
    """A step's row in the store (one definition; the store checks its keys)."""
    return {"step": out.step, "loss": out.loss, "kl": out.kl, "anchor_kl": out.anchor_kl,
            "n_candidates": out.n_candidates, "n_selected": out.n_selected, "n_guarded": out.n_guarded,
            "judge_fallbacks": out.judge_fallbacks, "behavior_rate": out.behavior_rate, "lr": out.lr,
            "grad_norm": out.grad_norm, "drift": out.drift, "seconds": out.seconds,
            "judge_seconds": out.judge_seconds, "teacher_version": out.teacher_version,
            "extra": {k: v for k, v in (("stage_seconds", out.stage_seconds), ("sampler_gap", out.sampler_gap))
                      if v is not None} or None}


def _rollout_rows(out, tokenizer) -> list[dict]:
    if out.delta is None:
        return []
    ro, rows = out.rollouts, []
    for i in range(min(ROLLOUTS_LOGGED_PER_STEP, len(ro.texts))):
        ids = ro.response_ids[i]
        n = len(ids)
        rows.append({"step": out.step, "idx": i, "prompt": ro.prompts[i], "response": ro.texts[i],
                     "token_ids": ids, "tokens": [tokenizer.decode([t]) for t in ids],
                     "delta": [round(float(d), 4) for d in out.delta[i, :n]],
                     "teacher_tokens": [tokenizer.decode([int(t)]) for t in out.teacher_top[i, :n, 0]],
                     "candidates": out.candidates[i, :n].nonzero().flatten().tolist(),
                     "selected": out.selected[i, :n].nonzero().flatten().tolist()})
    return rows


def _judge_rows(out, model: str | None) -> list[dict]:
    return [{"step": out.step, "idx": i, "model": model or "rule", "latency_s": r.latency_s,
             "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
             "cost": r.cost, "outcome": r.outcome, "cached": r.cached}
            for i, r in enumerate(out.judge)]


class _StopOnSignal:
    """Ctrl-C or SIGTERM ask the loop to stop after the current step, so a checkpoint is
    never cut mid-write (DuckDB turns an interrupt inside a write into its own error).
    A second Ctrl-C stops at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self):
        self.requested, self.old = False, {}
        try:
            for sig in self.SIGNALS:
                self.old[sig] = signal.signal(sig, self._handle)
        except ValueError:      # not the main thread (e.g. an embedding app): leave them
            pass
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt

    def __exit__(self, *exc):
        for sig, handler in self.old.items():
            signal.signal(sig, handler)
        return False


class _Progress:
    """A rich progress bar: step, loss, anchor KL, drift, trained positions, running
    behavior rate of the rollouts, and the last val figures."""

    def __init__(self, enabled: bool, total: int, start: int, name: str):
        self.enabled, self.total, self.start, self.name = enabled, total, start, name
        self.rates: list[float] = []
        self.val_info = ""

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
            self.p = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                              TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
            self.p.__enter__()
            self.task = self.p.add_task(self.name, total=self.total, completed=self.start, info="")
        return self

    def update(self, out: StepResult) -> None:
        self.rates = (self.rates + [out.behavior_rate])[-10:]
        if self.enabled:
            anchor = "" if out.anchor_kl is None else f"anchor {out.anchor_kl:.4f}  "
            info = (f"loss {out.loss:.4f}  {anchor}drift {out.drift:.3f}  "
                    f"trained {out.n_selected}/{out.n_candidates}  "
                    f"rate {sum(self.rates) / len(self.rates):.2f}  {out.seconds:.1f}s/step{self.val_info}")
            self.p.update(self.task, advance=1, info=info)

    def val(self, cand, selection) -> None:
        mark = "" if cand.qualifies else " (regressed)"
        self.val_info = f"  val {cand.score:.2f}{mark} best@{selection.best.step}"

    def __exit__(self, *exc):
        if self.enabled:
            self.p.__exit__(*exc)
        return False
