"""``engrain.fit``: train one behavior's adapter, from spec to gated adapter.

1. load the spec, the model (one base, a "default" LoRA adapter) and compile the behavior;
2. open (or resume) the run: its folder ``adapters/<behavior>/<run-id>/`` and store row;
3. evaluate the base model: behavior, specificity, regression suites;
4. train: ``steps`` calls of the method's step function (step.py), logging each step,
   checkpointing atomically, with a progress bar; Ctrl-C / SIGTERM checkpoint and stop;
5. save the adapter atomically, evaluate it, and gate it against the base figures.
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .behavior import load_behavior
from .checkpoint import find_run_dir, latest_checkpoint, load_checkpoint, save_checkpoint, write_atomic
from .checks import evaluate, gated
from .evals import behavior_suites, run_suites
from .gate import GateVerdict
from .judge import make_judge
from .losses import get_per_position_loss
from .models import load_model
from .relevance import opsd_mask, rmsd_mask
from .rollout import HFSampler
from .step import distill_step, sft_step
from .store import Store
from .teacher import make_teacher, snapshot_student

STEP_FUNCTIONS = {"rmsd": distill_step, "opsd": distill_step, "sft": sft_step}
SELECTORS = {"rmsd": rmsd_mask, "opsd": opsd_mask, "sft": None}
ROLLOUTS_LOGGED_PER_STEP = 4


class FitInterrupted(Exception):
    """Training stopped by Ctrl-C or SIGTERM after saving a checkpoint."""

    def __init__(self, run_id: str, step: int):
        super().__init__(f"run {run_id} interrupted at step {step}; resume with: cl fit --resume {run_id}")
        self.run_id, self.step = run_id, step


@dataclass
class Run:
    """Everything a step needs, built once: the step never checks a mode string."""
    cfg: object                 # the spec's train section, with overrides applied
    cb: object                  # CompiledBehavior
    loaded: object              # LoadedModel
    tokenizer: object
    sampler: object
    teacher: object
    judge: object
    select: object              # relevance.rmsd_mask | relevance.opsd_mask
    loss_fn: object             # per-position divergence
    optimizer: torch.optim.Optimizer
    params: list = field(default_factory=list)

    def update(self, loss: torch.Tensor) -> None:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


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


def build_run(spec, cb, loaded, lr: float, self_generate=None) -> Run:
    cfg = spec.train
    params = [p for p in loaded.model.parameters() if p.requires_grad]
    j = spec.judge
    judge = make_judge(j.model, api_base=j.api_base, api_key_env=j.api_key_env, timeout_s=j.timeout_s,
                       max_retries=j.max_retries, max_concurrency=j.max_concurrency,
                       self_generate=self_generate)
    return Run(cfg=cfg, cb=cb, loaded=loaded, tokenizer=loaded.tokenizer,
               sampler=HFSampler(loaded.model, loaded.tokenizer),
               teacher=make_teacher(cfg.teacher.kind, cfg.teacher.refresh_after, cfg.teacher.ema_decay),
               judge=judge, select=SELECTORS[cfg.method],
               loss_fn=get_per_position_loss(cfg.loss, cfg.top_k),
               optimizer=torch.optim.AdamW(params, lr=lr, weight_decay=0.0), params=params)


def fit(spec_path: str | Path | None = None, *, method: str | None = None, steps: int | None = None,
        model: str | None = None, judge: str | None = None, out_dir: str | Path = "adapters",
        store: str | Path | None = None, resume: str | None = None, eval_n: int = 200,
        checkpoint_every: int = 10, keep_rejected: bool = False, progress: bool = True,
        log=print) -> FitResult:
    """Train the adapter for the behavior spec at ``spec_path``; see the module docstring.

    Overrides (``method``, ``steps``, ``model``, ``judge``) win over the spec's values.
    ``resume``: a run id whose latest complete checkpoint to continue from (the spec and
    overrides are read back from that run's folder).
    """
    t_start = time.time()
    db = Store(store) if store else Store()
    # 1. spec, model, compiled behavior
    if resume:
        run_dir = find_run_dir(Path(out_dir), resume)
        saved = json.loads((run_dir / "run.json").read_text())
        spec_path, overrides = saved["spec_path"], saved["overrides"]
    else:
        overrides = {k: v for k, v in dict(method=method, steps=steps, model=model, judge=judge).items()
                     if v is not None}
    behavior = load_behavior(spec_path).with_overrides(overrides)
    spec = behavior.spec
    torch.manual_seed(spec.train.seed)     # before the adapter exists: its init is seeded too
    loaded = load_model(spec.model, lora=spec.train.lora, qlora=spec.train.qlora)
    cb = behavior.compile(loaded.tokenizer)
    cb.assert_no_leak()
    run = build_run(spec, cb, loaded, spec.train.lr)
    # 2. the run: a new folder and store row, or the interrupted one restored
    if not resume:
        run_dir, saved = _new_run(db, Path(out_dir), spec, spec_path, overrides, eval_n)
    run_id = saved["run_id"]
    start = _restore(run_dir, run, db, run_id, log)
    # 3. the base model's figures (once per run; a resume reuses them)
    if "base" not in saved:
        saved["base"] = evaluate(loaded.model, loaded.tokenizer, cb, spec, False, eval_n, spec.train.seed)
        _write_json(run_dir / "run.json", saved)
        db.log_evals(run_id, [{**r, "step": 0, "subject": "base"} for r in saved["base"]])
    log("base: " + _fmt(saved["base"]))
    # 4. train
    _train(run, spec, db, run_id, run_dir, start, checkpoint_every, progress)
    # 5. the adapter: save, evaluate, gate
    adapter_dir = write_atomic(run_dir / "adapter", lambda tmp: loaded.model.save_pretrained(
        tmp, selected_adapters=["default"]))
    after = evaluate(loaded.model, loaded.tokenizer, cb, spec, True, eval_n, spec.train.seed)
    db.log_evals(run_id, [{**r, "step": spec.train.steps, "subject": "adapter"} for r in after])
    log("adapter: " + _fmt(after))
    verdict = gated(spec, saved["base"], after)
    if not verdict.passed and not keep_rejected:
        # Out of the way, so nothing loads it as a good adapter; kept for inspection.
        adapter_dir = adapter_dir.replace(run_dir / "adapter.rejected")
    _write_json(run_dir / "metrics.json", {"base": saved["base"], "adapter": after,
                                           "gate": verdict.to_dict()})
    db.record_adapter(run_id, adapter_dir, "accepted" if verdict.passed else
                      ("kept" if keep_rejected else "rejected"), verdict.to_dict())
    status = "completed" if verdict.passed else "rejected"
    db.finish_run(run_id, status)
    log(f"gate: {verdict.summary()}")
    return FitResult(run_id, run_dir, adapter_dir, status, saved["base"], after, verdict,
                     time.time() - t_start)


def _new_run(db, out_dir: Path, spec, spec_path, overrides: dict, eval_n: int) -> tuple[Path, dict]:
    # Random part first: `cl runs` shows 8 characters, and any unique prefix names a run.
    run_id = f"{uuid.uuid4().hex[:8]}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = out_dir / spec.name / run_id
    run_dir.mkdir(parents=True)
    db.start_run(spec.name, spec.train.method, spec=spec.model_dump(mode="json"),
                 config={"overrides": overrides, "eval_n": eval_n}, model=spec.model,
                 seed=spec.train.seed, run_id=run_id)
    saved = {"run_id": run_id, "spec_path": str(Path(spec_path).resolve()), "overrides": overrides}
    _write_json(run_dir / "run.json", saved)
    return run_dir, saved


def _restore(run_dir: Path, run: Run, db, run_id: str, log) -> int:
    """Load the latest complete checkpoint, if any; returns the steps already done."""
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        return 0
    if json.loads((ckpt / "state.json").read_text()).get("teacher_version", 0) > 0:
        snapshot_student(run.loaded.model)      # the frozen teacher adapter must exist to load it
    state = load_checkpoint(ckpt, run.loaded.model, run.optimizer)
    run.teacher.version = state.get("teacher_version", 0)
    log(f"resuming {run_id} from {ckpt.name}")
    db.resume_run(run_id)
    return state["step"]


def _train(run: Run, spec, db, run_id: str, run_dir: Path, start: int, checkpoint_every: int,
           progress: bool) -> None:
    """The loop: a step, its store rows, the progress bar, curve evals, checkpoints.
    Ctrl-C or SIGTERM finish the step, checkpoint and raise FitInterrupted; a crash checkpoints, marks the
    run failed and re-raises: nothing done before the current step is lost."""
    step_fn = STEP_FUNCTIONS[spec.train.method]
    done = start                # steps completed; what a checkpoint records
    checkpoint = lambda: save_checkpoint(run_dir, done, run.loaded.model, run.optimizer,
                                         {"teacher_version": run.teacher.version})
    with _Progress(progress, spec.train.steps, start, spec.name) as bar, _StopOnSignal() as stop:
        try:
            for step in range(start, spec.train.steps):
                out = step_fn(run, step)
                done = step + 1
                db.log(run_id, steps=[_step_row(out)], rollouts=_rollout_rows(out, run.tokenizer),
                       judge_calls=_judge_rows(out, spec.judge.model))
                bar.update(out)
                if done % spec.train.eval_every == 0 and done < spec.train.steps:
                    db.log_evals(run_id, _curve_rows(run.loaded, run.cb, spec, done))
                if done % checkpoint_every == 0:
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


# --- small helpers ---------------------------------------------------------------------

def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)


def _fmt(rows: list[dict]) -> str:
    return "  ".join(f"{r['suite']}/{r['metric']} {r['value']:.3f}" for r in rows)


def _curve_rows(loaded, cb, spec, done: int, n: int = 64) -> list[dict]:
    """A cheap mid-training look: the behavior without the hint, and specificity."""
    suites = [s for s in behavior_suites(cb, n) if (s.name, s.metric) in
              {("behavior", "exists"), ("specificity", "clean")}]
    results = run_suites(loaded.model, loaded.tokenizer, suites, seed=spec.train.seed + done,
                         max_new_tokens=spec.train.max_new_tokens)
    return [{"step": done, "subject": "adapter", "suite": r.suite, "metric": r.metric,
             "value": r.value, "n": r.n} for r in results]


def _step_row(out) -> dict:
    return {"step": out.step, "loss": out.loss, "kl": out.kl, "n_candidates": out.n_candidates,
            "n_selected": out.n_selected, "judge_fallbacks": out.judge_fallbacks,
            "behavior_rate": out.behavior_rate, "seconds": out.seconds,
            "judge_seconds": out.judge_seconds, "teacher_version": out.teacher_version}


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
    """A rich progress bar: step, loss, masked positions, running behavior rate."""

    def __init__(self, enabled: bool, total: int, start: int, name: str):
        self.enabled, self.total, self.start, self.name = enabled, total, start, name
        self.rates: list[float] = []

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
            self.p = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                              TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
            self.p.__enter__()
            self.task = self.p.add_task(self.name, total=self.total, completed=self.start, info="")
        return self

    def update(self, out) -> None:
        self.rates = (self.rates + [out.behavior_rate])[-10:]
        if self.enabled:
            info = (f"loss {out.loss:.4f}  masked {out.n_selected}/{out.n_candidates}  "
                    f"rate {sum(self.rates) / len(self.rates):.2f}  {out.seconds:.1f}s/step")
            self.p.update(self.task, advance=1, info=info)

    def __exit__(self, *exc):
        if self.enabled:
            self.p.__exit__(*exc)
        return False
