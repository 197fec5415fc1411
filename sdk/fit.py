"""``engrain.fit``: train one behavior's adapter, from spec to gated adapter.

1. load the spec (on resume: the one the run stored), the model (one base, a "default"
   LoRA adapter) and compile the behavior; build the step's context (engine/context.py);
2. open (or resume) the run: its folder ``adapters/<behavior>/<run-id>/`` (rundir.py) and
   store row;
3. evaluate the base model: on the gate's eval split (temperature 1, and greedy beside
   it) and on the val split (what checkpoint selection compares against);
4. sample the anchor's base answers;
5. train: calls of the method's step function (engine/step.py), logging each step; every
   ``eval_every`` steps a val eval offers the checkpoint to selection (checks/selection.py),
   which keeps the best and stops once the behavior has plateaued; checkpoints are atomic;
   Ctrl-C / SIGTERM checkpoint and stop;
6. restore the best checkpoint, save it as the adapter, evaluate it, and gate it
   (checks/gate.py): accepted, regressed (something dropped) or not learned; the first
   accepted adapter of a behavior becomes its current one (library.py), later ones wait
   for `cl adapters promote`.

``on``: earlier behaviors' accepted adapters to build on. With ``lineage="merge"`` they are
merged into the base weights before the new adapter is attached, so "adapter off" (the teacher with the new
hint, the anchor's reference, the gate's "before") is the model that already has them,
and the gate also checks that each earlier behavior kept its own figures: that is
``lineage="merge"``. The default, ``lineage="replay"``, instead consolidates: the new
behavior is fit alone first (``fit_teachers``), then one adapter, started from the earlier
one's (composed or single), is trained on every behavior (composition.py, design
consolidate): the earlier ones taught by the earlier adapter, frozen, the new one by its own
fit. One adapter that carries the whole lineage.

Under a data-parallel launcher (engine/parallel.py) every process runs 1, then rank 0 runs
2-6 as above while the others follow its steps on their shares of each batch (``_follow``).
"""

from __future__ import annotations

import json
import sys
import time
import types
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from engrain.checks.evals import DEFAULT_EVAL_N, evaluate, gate_decodings
from engrain.checks.gate import GateVerdict, gated, max_drops, val_bar
from engrain.checks.selection import Selection, judge_candidate
from engrain.console import FitInterrupted, Progress, StopOnSignal, checkpointed, figures_table, one_line  # noqa: F401 - FitInterrupted: public here
from engrain.engine.anchor import build_anchor
from engrain.engine.context import StepContext, build_context
from engrain.engine.models import load_model
from engrain.engine.parallel import Ranks, combined, gathered_rows, launcher_note
from engrain.engine.teacher import snapshot_student
from engrain.errors import EngrainError
from engrain.events import EvalEvent, StepEvent
from engrain.library import auto_promote
from engrain.registry import METHODS
from engrain.rundir import (find_run_dir, latest_checkpoint, load_adapter_weights, load_checkpoint,
                            new_run_dir, read_run, replay_source, resolve_on, save_adapter, save_checkpoint, stored_behavior,
                            write_json)
from engrain.spec.behavior import as_behavior
from engrain.spec.figures import lost_behaviors
from engrain.store import Store
from engrain.store.rows import eval_rows, judge_rows, rollout_rows, step_row

LINEAGES = ("replay", "merge")


class FitError(EngrainError, ValueError):
    """A fit asked for something it cannot do (the message says what to change); a ValueError
    too, as it was before EngrainError."""


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
    lost: tuple[str, ...] = ()          # earlier behaviors (--on) the training lost
    promoted: bool = False              # made its behavior's current adapter (the first accepted one is)

    @property
    def outcome(self) -> str:
        return self.verdict.outcome


def fit(spec=None, *, base_dir: str | Path | None = None, method: str | None = None,
        steps: int | None = None, seed: int | None = None, model: str | None = None,
        judge: str | None = None, sampler: str | None = None, qlora: bool | None = None,
        out_dir: str | Path = "adapters",
        store: str | Path | None = None, resume: str | None = None, eval_n: int | None = None,
        checkpoint_every: int = 10, keep_rejected: bool = False, progress: bool = False,
        on: list[str | Path] = (), lineage: str = "replay", from_logs: str | Path | None = None,
        log=None, callback=None) -> FitResult:
    """Train the adapter for the behavior ``spec``; see the module docstring.

    ``spec``: a spec file's path, a ``BehaviorSpec`` or a plain dict; the latter two have no
    file, so their relative files resolve against ``base_dir`` (default: the current folder).
    Prints nothing unless asked: ``progress=True`` shows a progress bar, ``log`` (``print``,
    ``click.echo``) hears the lines ``cl fit`` prints, and ``callback`` gets a
    :class:`~engrain.events.StepEvent` after each step and an :class:`~engrain.events.EvalEvent`
    after each val eval. Mistakes the user can fix raise ``EngrainError`` subclasses
    (``SpecError``, ``ModelError``, ``FitError``...).

    Overrides (``method``, ``steps``, ``seed``, ``model``, ``judge``, ``sampler``, ``qlora``) win
    over the spec's values.
    ``resume``: a run id whose latest complete checkpoint to continue from; the validated
    spec and the options are read back from that run's folder (the YAML on disk is not
    re-read; a warning says if it changed).
    ``on``: run ids or adapter folders of accepted runs to build on (see the module docstring).
    ``lineage``: how (``LINEAGES``): ``replay`` (default) fits the new behavior alone first,
    then trains one adapter from the earlier one's on every behavior, each taught by an
    adapter that carries it; ``merge`` merges the earlier adapters into the base and trains a
    new adapter on top.
    """
    t_start = time.time()
    log = log or (lambda *_: None)
    ranks = Ranks.from_env()
    if ranks.world == 1 and (note := launcher_note()):
        log(note)
    if not ranks.is_main:
        log = lambda *_: None   # noqa: E731 - one voice: rank 0's
        progress = False
    db = (Store(store) if store else Store()) if ranks.is_main else None   # rank 0 alone writes
    # 1. spec, model, compiled behavior, the step's context
    if resume:
        run_dir = find_run_dir(Path(out_dir), resume)
        saved = read_run(run_dir)
        if saved.get("kind") == "compose":     # cl compose, or --on by replay: one resume for both
            _one_process(ranks, "a composed run")
            from engrain.composition import compose     # the same floor; only the composed paths need it
            return _as_fit_result(compose(resume=resume, out_dir=out_dir, store=store, progress=progress,
                                          log=log, checkpoint_every=checkpoint_every))
        behavior = stored_behavior(saved, log)
        eval_n = saved.get("eval_n", eval_n)
    else:
        overrides = {k: v for k, v in dict(method=method, steps=steps, seed=seed, model=model,
                                           judge=judge, sampler=sampler, qlora=qlora).items()
                     if v is not None}
        if spec is None:
            raise FitError("give a spec (a file, a BehaviorSpec or a dict), or resume= a run id")
        behavior = as_behavior(spec, base_dir).with_overrides(overrides)
        if from_logs is not None:
            behavior = behavior.from_logs(from_logs)
        eval_n = eval_n or behavior.spec.regression.eval_n or DEFAULT_EVAL_N
    spec = behavior.spec
    if on and not resume and lineage == "replay":
        _one_process(ranks, "--on by replay (a composition)")
        return _replay(replay_source(list(on), Path(out_dir), spec.model), behavior, out_dir, store, eval_n,
                       progress, log)
    if lineage not in LINEAGES:
        raise FitError(f"unknown lineage {lineage!r}; known: {', '.join(LINEAGES)}")
    on, earlier = resolve_on(saved.get("on", []) if resume else on, Path(out_dir), spec.model)
    if spec.name in [b.spec.name for b in earlier]:
        raise FitError(f"{spec.name!r} is already among the adapters it would build on; "
                         "train it again without --on, or give the new behavior another name")
    torch.manual_seed(spec.train.seed)     # before the adapter exists: its init is seeded too
    loaded = load_model(spec.model, lora=spec.train.lora, qlora=spec.train.qlora, on=on, device=ranks.device)
    cb = behavior.compile(loaded.tokenizer)
    cb.assert_no_leak()
    ctx = build_context(spec, cb, loaded, earlier=[b.compile(loaded.tokenizer) for b in earlier], ranks=ranks)
    if not ranks.is_main:       # another rank of a data-parallel fit: steps on its share, as rank 0 says
        return _follow(ctx, spec)
    # 2. the run: a new folder and store row, or the interrupted one restored
    if not resume:
        run_dir, saved = _new_run(db, Path(out_dir), behavior, overrides, eval_n, [str(p) for p in on])
    run_id = saved["run_id"]
    start, selection = _restore(run_dir, ctx, db, run_id, log)
    _start_together(ctx)
    # 3. the base model's figures (once per run; a resume reuses them)
    if "base" not in saved:
        log(_evaluating("the base model", spec, eval_n))
        saved["base"] = _evaluate_both(ctx, spec, False, eval_n)
        saved["base_val"] = evaluate(loaded.model, loaded.tokenizer, cb, spec, False, spec.train.val_n,
                                     spec.train.seed, split="val", earlier=ctx.earlier)
        write_json(run_dir / "run.json", saved)
        db.log_evals(run_id, eval_rows(saved["base"] + saved["base_val"], step=0, subject="base"))
    if on:
        log(f"building on: {', '.join(b.spec.name for b in earlier)} (merged into the base; "
            "'base' below is the model that has them)")
    log("base:    " + one_line(saved["base"]))
    # 4. the anchor's base answers (seeded: a resume rebuilds the same set)
    ctx.anchor = build_anchor(loaded, ctx.sampler, cb, spec.anchor, spec.train.max_new_tokens, spec.train.seed)
    # 5. train, keeping the best checkpoint on val
    steps_run = _train(ctx, spec, db, run_id, run_dir, start, selection, saved["base_val"],
                       checkpoint_every, progress, log, callback or (lambda _: None))
    if spec.train.keep == "best":
        best = selection.best.step
        load_adapter_weights(run_dir / "best", loaded.model)
        ctx.adapter_changed()
        log(f"kept the checkpoint of step {best} (val behavior {selection.best.score:.3f}); ran {steps_run} steps")
    else:
        best = steps_run
    # 6. the adapter: save, evaluate, gate
    adapter_dir = save_adapter(run_dir / "adapter", loaded.model)
    log(_evaluating("the adapter", spec, eval_n))
    after = _evaluate_both(ctx, spec, True, eval_n)
    db.log_evals(run_id, eval_rows(after, step=best, subject="adapter"))
    log("adapter: " + one_line(after))
    sampled = lambda rows: [r for r in rows if r["decoding"] == "sample"]   # noqa: E731
    verdict = gated(spec, sampled(saved["base"]), sampled(after), [b.spec for b in earlier])
    verdict = verdict.with_training(selection.history, selection.best, val_bar(spec, saved["base_val"]))
    lost = tuple(lost_behaviors(r.suite for r in verdict.rows if not r.ok))
    if lost:
        log(f"lost an earlier behavior: {', '.join(lost)}")
    elif on and best == 0 and (lost := tuple(lost_behaviors(c.worst_suite for c in selection.history
                                                                if not c.qualifies))):
        log(f"lost an earlier behavior: {', '.join(lost)} (every checkpoint past step 0 dropped it beyond "
            "regression.earlier_max_drop on the val questions, so the untrained adapter was kept)")
    if lost:    # one verdict carries it: the outcome (regressed) and the exit code follow from it
        verdict = replace(verdict, passed=False, lost=lost)
    if not verdict.passed and not keep_rejected:
        # Out of the way, so nothing loads it as a good adapter; kept for inspection.
        adapter_dir = adapter_dir.replace(run_dir / "adapter.rejected")
    write_json(run_dir / "metrics.json", {"base": saved["base"], "adapter": after, "best_step": best,
                                          "selection": selection.state(), "gate": verdict.to_dict()})
    db.record_adapter(run_id, adapter_dir, "accepted" if verdict.passed else
                      ("kept" if keep_rejected else "rejected"), verdict.to_dict())
    status = "completed" if verdict.passed else "rejected"
    db.finish_run(run_id, status)
    promoted = verdict.passed and auto_promote(db, run_id) is not None
    log(figures_table(saved["base"], after, spec.regression.temperature))
    log(f"gate: {verdict.summary()}")
    return FitResult(run_id, run_dir, adapter_dir, status, saved["base"], after, verdict,
                     time.time() - t_start, best, steps_run, lost, promoted)


def _replay(lineage, behavior, out_dir, store, eval_n, progress, log) -> FitResult:
    """``--on`` by consolidation: the new behavior fit alone first (its teacher), then one
    adapter, started from the lineage's, trained on every behavior it will carry, each taught
    by an adapter that carries it (the lineage's for the earlier ones, frozen) and each earlier
    one kept within ``regression.earlier_max_drop`` of its figure on the lineage's adapter."""
    from engrain.composition import compose     # the same floor; only the composed paths need it
    adapter, specs, _ = lineage
    earlier = [as_behavior(s) for s in specs]
    if behavior.spec.name in [b.spec.name for b in earlier]:
        raise FitError(f"{behavior.spec.name!r} is already carried by {adapter}")
    teacher = fit_teachers([behavior], seed=behavior.spec.train.seed, out_dir=out_dir, store=store,
                           eval_n=eval_n, log=log)[0].adapter_path
    r = compose([b.spec for b in earlier] + [behavior.spec], base_dir=Path(behavior.path).parent,
                design="consolidate", teachers=[adapter] * len(earlier) + [teacher],
                seed=behavior.spec.train.seed, out_dir=out_dir,
                store=store, eval_n=eval_n, progress=progress, log=log, init=adapter,
                keep=[b.spec.name for b in earlier])
    return _as_fit_result(r)


def fit_teachers(behaviors, *, seed: int, out_dir, store, eval_n=None, log=None) -> list[FitResult]:
    """A consolidation's teachers (``engrain.compose``, ``--on``): each behavior fit alone (the
    same seed), gated on its suites less those of hint following (metric ``follows``). A
    teacher need only carry its behavior, at its own mask's positions; the consolidated
    adapter is gated on every suite. (Gated on them, the lab's sign-off alone kept no learned
    checkpoint on 5 seeds, benchmarks/RESULTS.md section 23.) A behavior not learned alone has
    nothing to teach: refused. Returns the fits' results, in order; each ``adapter_path`` is
    a teacher."""
    from engrain.composition import ComposeError
    from engrain.registry import SUITES
    log, results = log or (lambda *_: None), []
    for b in behaviors:
        keep = [e for e in b.spec.regression.suites
                if not (isinstance(e, str) and e in SUITES and SUITES.get(e).metric == "follows")]
        # Its own name ("pinapple-teacher"), so that a teacher gated less is never listed or
        # promoted as the behavior's adapter.
        spec = b.spec.model_copy(update={"name": f"{b.spec.name}-teacher", "regression":
                                         b.spec.regression.model_copy(update={"suites": keep})})
        log(f"teacher for {b.spec.name}: fitting it alone (suites: {', '.join(spec.regression.names) or 'none'})")
        r = fit(spec, base_dir=b.path.parent, seed=seed, out_dir=out_dir, store=store, eval_n=eval_n, log=log)
        if r.verdict.outcome == "not learned" or r.best_step == 0:
            raise ComposeError(f"{b.spec.name} was not learned alone (run {r.run_id}: {r.verdict.summary()}); "
                               "a consolidation has nothing to teach it from: fix that spec's fit first, or "
                               "give --teacher RUN_OR_DIR for it")
        results.append(r)
    return results


def _as_fit_result(r) -> FitResult:
    return FitResult(r.run_id, r.run_dir, r.adapter_path, "completed" if r.verdict.passed else "rejected",
                     r.base, r.adapter, r.verdict, r.seconds, r.best_step, r.steps_run, r.verdict.lost, r.promoted)


def _evaluating(who: str, spec, n: int) -> str:
    """What the eval about to run is: on a real model on the CPU it takes minutes."""
    t = spec.regression.temperature
    how = ("greedy" if t == 0 else f"at T={t:g}") + (" and greedy" if "greedy" in gate_decodings(spec) else "")
    return f"evaluating {who} on the held-out questions: {n} answers a suite, {how}"


def _evaluate_both(ctx: StepContext, spec, adapter_on: bool, n: int) -> list[dict]:
    """The gate's figures (sampled at regression.temperature) and, unless the spec turns
    them off, the greedy ones beside them, on the eval split."""
    return [row for decoding in gate_decodings(spec)
            for row in evaluate(ctx.loaded.model, ctx.tokenizer, ctx.behavior, spec, adapter_on, n,
                                spec.train.seed, decoding=decoding, earlier=ctx.earlier)]


def _new_run(db, out_dir: Path, behavior, overrides: dict, eval_n: int, on: list[str]) -> tuple[Path, dict]:
    spec = behavior.spec
    # Random part first: `cl runs` shows 8 characters, and any unique prefix names a run.
    run_id = f"{uuid.uuid4().hex[:8]}-{time.strftime('%Y%m%d-%H%M%S')}"
    saved = {"run_id": run_id, "spec_path": str(Path(behavior.path).resolve()), "overrides": overrides,
             "eval_n": eval_n, "spec": spec.model_dump(mode="json"), "on": on, "qlora": spec.train.qlora}
    run_dir = new_run_dir(out_dir, spec.name, run_id, saved)
    db.start_run(spec.name, spec.train.method, spec=saved["spec"],
                 config={"overrides": overrides, "eval_n": eval_n, "on": on, "qlora": spec.train.qlora},
                 model=spec.model,
                 seed=spec.train.seed, run_id=run_id)
    return run_dir, saved


def _one_process(ranks: Ranks, what: str) -> None:
    if ranks.world > 1:
        raise FitError(f"{what} trains several behaviors' turns on one process; run it without a "
                       "data-parallel launcher (cl compose / cl fit ... --on)")


def _start_together(ctx: StepContext) -> None:
    """Every rank of a data-parallel fit starts from rank 0's teacher, weights and optimizer
    state (a resumed run restored them on rank 0 only); one process: nothing to do."""
    ranks = ctx.ranks
    if ranks.world == 1:
        return
    version = ranks.broadcast(ctx.teacher.version if ranks.is_main else None)
    if not ranks.is_main and version:
        snapshot_student(ctx.loaded.model)      # the frozen teacher adapter, to receive its weights
        ctx.teacher.version = version
    ranks.sync_training_state(ctx.loaded.model, ctx.updater.optimizer)
    ctx.adapter_changed()


def _follow(ctx: StepContext, spec) -> None:
    """A rank other than 0: the steps rank 0 announces, on this rank's share of each batch,
    its figures and rows sent to rank 0 (which logs them), until rank 0 says stop."""
    ranks, step_fn = ctx.ranks, METHODS.get(spec.train.method).step
    _start_together(ctx)
    while (step := ranks.broadcast()) is not None:
        out = combined(ranks, step_fn(ctx, step))
        gathered_rows(ranks, rollout_rows(out, ctx.tokenizer))
        gathered_rows(ranks, judge_rows(out, spec.judge.model))
    return None


def _restore(run_dir: Path, ctx: StepContext, db, run_id: str, log) -> tuple[int, Selection]:
    """Load the latest complete checkpoint, if any: (steps already done, selection state)."""
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        save_adapter(run_dir / "best", ctx.loaded.model)      # step 0: the untrained adapter
        return 0, Selection(ctx.train.patience)
    if json.loads((ckpt / "state.json").read_text()).get("teacher_version", 0) > 0:
        snapshot_student(ctx.loaded.model)      # the frozen teacher adapter must exist to load it
    state = load_checkpoint(ckpt, ctx.loaded.model, ctx.updater.optimizer)
    ctx.teacher.version = state.get("teacher_version", 0)
    ctx.reuse.load(state.get("reuse"))
    ctx.adapter_changed()
    log(f"resuming {run_id} from {ckpt.name}")
    db.resume_run(run_id)
    return state["step"], Selection.from_state(state["selection"])


def _train(ctx: StepContext, spec, db, run_id: str, run_dir: Path, start: int, selection: Selection,
           base_val: list[dict], checkpoint_every: int, progress: bool, log, callback) -> int:
    """The loop: a step, its store rows, the progress bar, val evals and selection,
    checkpoints. Ctrl-C or SIGTERM finish the step, checkpoint and raise FitInterrupted; a
    crash checkpoints, marks the run failed and re-raises: nothing done before the current
    step is lost. Returns the number of steps done."""
    train = spec.train
    step_fn = METHODS.get(train.method).step
    drops = max_drops(spec, [e.spec for e in ctx.earlier])      # what selection may let drop, per suite
    done = start                # steps completed; what a checkpoint records
    checkpoint = lambda: save_checkpoint(run_dir, done, ctx.loaded.model, ctx.updater.optimizer,  # noqa: E731
                                         {"teacher_version": ctx.teacher.version,
                                          "selection": selection.state(), "reuse": ctx.reuse.state()})
    with Progress(progress, train.steps, start, spec.name) as bar, StopOnSignal() as stop, \
            checkpointed(checkpoint, db, run_id, lambda: done):
        for step in range(start, train.steps):
            if selection.should_stop():
                break
            ctx.ranks.broadcast(step)       # the other ranks of a data-parallel fit: this step
            out = combined(ctx.ranks, step_fn(ctx, step))
            done = step + 1
            db.log(run_id, steps=[step_row(out)], rollouts=gathered_rows(ctx.ranks, rollout_rows(out, ctx.tokenizer)),
                   judge_calls=gathered_rows(ctx.ranks, judge_rows(out, spec.judge.model)))
            bar.update(out)
            callback(StepEvent(run_id, done, train.steps, out.loss, out.anchor_kl, out.behavior_rate,
                               out.n_selected, out.n_candidates, out.drift, out.seconds))
            if done % train.eval_every == 0 or done == train.steps:
                t_val = time.perf_counter()
                rows = evaluate(ctx.loaded.model, ctx.tokenizer, ctx.behavior, spec, True, train.val_n,
                                train.seed, split="val", earlier=ctx.earlier)
                db.log_evals(run_id, eval_rows(rows, step=done, subject="adapter"))
                cand = judge_candidate(done, base_val, rows, set(drops), drops.__getitem__,
                                       greedy=spec.regression.temperature == 0)
                is_best = selection.offer(cand)
                if is_best:
                    save_adapter(run_dir / "best", ctx.loaded.model)
                bar.val(cand, selection, time.perf_counter() - t_val)
                callback(EvalEvent(run_id, done, cand.score, cand.qualifies, cand.worst_suite,
                                   selection.best.step, is_best))
            if done % checkpoint_every == 0 or selection.should_stop():
                checkpoint()
            stop.check()
        ctx.ranks.broadcast(None)           # ... and that there are no more
    if selection.should_stop():
        log(f"stopped at step {done}: no better checkpoint in {selection.patience} val evals")
    if bar.totals:
        log(f"time by stage: {bar.summary()}")
    return done


class _CallableModule(types.ModuleType):
    """``engrain.fit`` is both this module and its function: once the module is imported,
    the package attribute ``engrain.fit`` is the module, so calling it calls :func:`fit`."""

    def __call__(self, *args, **kwargs) -> FitResult:
        return fit(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
