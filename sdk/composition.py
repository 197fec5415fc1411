"""Several behaviors learned into one adapter, each from its own teacher (``engrain.compose`` fits the teachers first: consolidation.py).

1. load the specs (one base model for all), the model with one "default" adapter, and each
   behavior compiled; each behavior's claim rule (engine/claims.py); for the default design,
   consolidate, each behavior's teacher: an adapter that carries it (``teachers``;
   ``engrain.compose``, engrain/consolidation.py, fits them first when none are given);
2. one step context per behavior: its own prompts, its teacher (that adapter, frozen, reading
   the student's prompt; the frozen base reading only its own hint for the other designs), its
   mask (pre-filter, judge, guard) kept off every position another behavior claims; one
   optimizer and one schedule shared by all;
3. open the run (``adapters/<a+b>/<run-id>/``) and its store row, or the interrupted one
   (``resume``: its run.json holds the specs and options, checkpoints the loop's state);
4. evaluate the base model on every behavior's figures and the union of suites (eval
   split, and val for selection);
5. the anchors: each spec's pool, less the prompts of every other behavior's domain (a base
   answer to a food question without the sign-off would teach the sign-off away), and its KL
   off the positions where another behavior acts in the base answers left (engine/anchor.py's
   ``acts_at``: "pineapple" in a tropical answer, the end of a food answer);
6. train: steps take the behaviors in turn (step k trains behavior k mod n); every
   ``eval_every`` rounds a joint val eval offers the checkpoint to selection, scored by the
   weakest behavior's share of its own bar;
7. keep the best checkpoint, save it, evaluate, gate (checks/joint.py): accepted only if
   every behavior reaches its bar and nothing gated dropped; a composition that carries some
   behaviors but lost others is "regressed" and names them.

``design`` picks what each behavior's step trains (benchmarks/compose_designs.py compares them,
benchmarks/RESULTS.md section 32): ``consolidate`` (default) as above, each behavior taught by
an adapter trained apart that carries it (``teachers``: ``engrain.compose`` fits each spec alone
first when none are given), reading the student's prompt without the hint; ``claims``: the same masks and claims,
each teacher the base model reading its own hint; ``masks``: each behavior's own mask, no
claims; ``opsd``: every position of each behavior's rollouts; ``sft``: each behavior's
hinted teacher's own samples.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from engrain.checks.evals import DEFAULT_EVAL_N, gate_decodings
from engrain.checks.gate import GateVerdict
from engrain.checks.joint import bars, behavior_score, joint_candidate, joint_evaluate, joint_gated
from engrain.checks.selection import Selection
from engrain.console import Progress, StopOnSignal, checkpointed, figures_table, one_line
from engrain.engine.anchor import build_anchor
from engrain.engine.claims import others_claims, rule_of
from engrain.engine.context import build_context
from engrain.engine.models import STUDENT, load_model
from engrain.engine.teacher import CarriedTeacher
from engrain.engine.update import Updater
from engrain.errors import EngrainError
from engrain.library import auto_promote
from engrain.registry import METHODS
from engrain.rundir import (find_run_dir, latest_checkpoint, load_adapter_weights, load_checkpoint, new_run_dir,
                            read_run, save_adapter, save_checkpoint, saved_adapter, write_json)
from engrain.spec.behavior import as_behavior
from engrain.store import Store
from engrain.store.rows import eval_rows, judge_rows, rollout_rows, step_row

DESIGNS = {"claims": "rmsd", "masks": "rmsd", "opsd": "opsd", "sft": "sft", "consolidate": "rmsd"}
SCHEDULES = ("turns", "weakest")


class ComposeError(EngrainError, ValueError):
    """A composition that cannot be made as asked (the message says what to change)."""


@dataclass(frozen=True)
class ComposeResult:
    run_id: str
    run_dir: Path
    adapter_path: Path
    behaviors: tuple[str, ...]
    base: list[dict]
    adapter: list[dict]
    verdict: GateVerdict
    seconds: float
    best_step: int
    steps_run: int
    promoted: bool = False

    @property
    def outcome(self) -> str:
        return self.verdict.outcome


def weakest_first(rows: list[dict], specs, bar: dict[str, float]) -> list[int]:
    """The turns until the next val eval: every behavior once, and the one furthest below its
    own bar (its val rate as a share of the bar) once more. Pure."""
    share = [behavior_score(rows, s.name) / max(bar[s.name], 1e-6) for s in specs]
    weakest = min(range(len(specs)), key=share.__getitem__)
    return [weakest] + list(range(len(specs)))


class _SharedUpdater:
    """One optimizer and one schedule for every behavior's steps: each context's step passes
    its own step number, and the schedule counts the composition's steps instead."""

    def __init__(self, inner: Updater):
        self.inner, self.done = inner, 0
        self.optimizer = inner.optimizer

    def step(self, loss, _behavior_step: int):
        out = self.inner.step(loss, self.done)
        self.done += 1
        return out


def compose(specs, *, steps: int | None = None, seed: int | None = None, design: str = "consolidate",
            lr: float | None = None, schedule: str = "turns",
            out_dir: str | Path = "adapters", store: str | Path | None = None, eval_n: int | None = None,
            base_dir: str | Path | None = None, progress: bool = False, log=None, init: Path | None = None,
            keep=(), name: str | None = None, resume: str | None = None,
            checkpoint_every: int = 10, teachers=None) -> ComposeResult:
    """Learn every behavior of ``specs`` (files, BehaviorSpecs or dicts) into one adapter;
    see the module docstring. ``steps``: per behavior (default: the largest of the specs');
    ``init``: an adapter folder to start from (a lineage's own adapter: ``cl fit --on`` a
    composed run), ``keep`` the behaviors it carries, each held within the last spec's
    ``regression.earlier_max_drop`` of its rate on that adapter. ``lr``: the shared
    optimizer's peak rate (default: the first spec's train.lr). ``schedule``: ``turns`` (each
    behavior in turn) or ``weakest`` (after each val eval, the behavior furthest below its bar
    gets an extra turn per round). ``resume``: a composed run's id (any unique prefix) to
    continue from its latest checkpoint (every ``checkpoint_every`` steps, and on Ctrl-C or a
    crash), with the options and specs its run.json recorded. ``teachers``: for ``design=
    "consolidate"``, one adapter per spec, in order (a folder, or a run id in ``out_dir``)."""
    t_start, log = time.time(), log or (lambda *_: None)
    saved = None
    if resume:
        run_dir = find_run_dir(Path(out_dir), resume)
        saved = read_run(run_dir)
        if saved.get("kind") != "compose":
            raise ComposeError(f"run {resume} is one behavior's fit, not a composition: cl fit --resume {resume}")
        behaviors = [as_behavior(s, Path(p).parent) for s, p in zip(saved["specs"], saved["spec_paths"])]
        steps, seed, design, lr, schedule = (saved[k] for k in ("steps_per_behavior", "seed", "design", "lr",
                                                                 "schedule"))
        eval_n, keep, name = saved["eval_n"], saved["keep"], run_dir.parent.name
        teachers = saved.get("teachers")
        init = Path(saved["init"]) if saved.get("init") else None
    if design not in DESIGNS:
        raise ComposeError(f"unknown design {design!r}; known: {', '.join(DESIGNS)}")
    if schedule not in SCHEDULES:
        raise ComposeError(f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
    # 1. specs, model, compiled behaviors, claims
    if saved is None:
        behaviors = [as_behavior(s, base_dir) for s in specs]
    names = [b.spec.name for b in behaviors]
    if len(behaviors) < 2 or len(set(names)) < len(names):
        raise ComposeError(f"compose takes two or more behaviors with distinct names, got {names}")
    models = {b.spec.model for b in behaviors}
    if len(models) > 1:
        raise ComposeError(f"the specs name different models ({', '.join(sorted(models))}); "
                           "one adapter needs one base model")
    first = behaviors[0].spec
    carried = _carried(teachers, design, names, Path(out_dir))
    per = steps or max(b.spec.train.steps for b in behaviors)
    seed = first.train.seed if seed is None else seed
    eval_n = eval_n or max(b.spec.regression.eval_n or DEFAULT_EVAL_N for b in behaviors)
    torch.manual_seed(seed)
    loaded = load_model(first.model, lora=first.train.lora)
    if init is not None:
        load_adapter_weights(Path(init), loaded.model)
    cbs = [b.compile(loaded.tokenizer) for b in behaviors]
    rules = {b.spec.name: rule_of(b.spec.patterns.target, b.spec.patterns.forbidden) for b in behaviors}
    # 2. one context per behavior, one updater
    total = per * len(behaviors)
    shared = _SharedUpdater(Updater(loaded.model, STUDENT, lr or first.train.lr, total, first.train.warmup,
                                    first.train.min_lr_ratio))
    specs_ = [b.spec.model_copy(update={"train": b.spec.train.model_copy(
        update={"steps": per, "seed": seed, "method": DESIGNS[design]})}) for b in behaviors]
    ctxs, loaded_teachers = [], {}
    for i, (spec, cb) in enumerate(zip(specs_, cbs)):
        cb.assert_no_leak()
        exclude = others_claims(cb, rules, cb.name) if design in ("claims", "consolidate") else None
        ctx = build_context(spec, cb, loaded, exclude=exclude, updater=shared)
        if carried:     # the adapter that carries it teaches, on the student's prompt (loaded once: a
            # lineage's adapter teaches every behavior it carries)
            key = str(Path(carried[i]).resolve())
            if key not in loaded_teachers:
                loaded_teachers[key] = CarriedTeacher(loaded.model, carried[i], f"carried_{len(loaded_teachers)}")
            ctx.teacher = loaded_teachers[key]
            ctx.behavior = replace(cb, context=replace(cb.context, hints=[]))
        ctxs.append(ctx)
    # 3. the run: a new folder and store row, or the interrupted one
    name = name or "+".join(names)
    db = Store(store) if store else Store()
    if saved is None:
        run_dir, saved = _new_run(db, Path(out_dir), name, first, specs_, behaviors, design, per, seed,
                                  lr, schedule, eval_n, init, keep, carried)
    run_id = saved["run_id"]
    # 4. the base model's figures (once per run; a resume reuses them)
    train = specs_[0].train
    if "base" not in saved:
        saved["base"] = [r for d in gate_decodings(first) for r in joint_evaluate(
            loaded.model, loaded.tokenizer, cbs, train, False, eval_n, seed, decoding=d)]
        saved["base_val"] = joint_evaluate(loaded.model, loaded.tokenizer, cbs, train, False, train.val_n, seed,
                                           split="val")
        db.log_evals(run_id, eval_rows(saved["base"] + saved["base_val"], step=0, subject="base"))
        saved["start"] = saved["start_val"] = []
        if keep:    # what the lineage's adapter shows before training: the figures to keep
            saved["start"] = joint_evaluate(loaded.model, loaded.tokenizer, cbs, train, True, eval_n, seed)
            saved["start_val"] = joint_evaluate(loaded.model, loaded.tokenizer, cbs, train, True, train.val_n,
                                                seed, split="val")
            db.log_evals(run_id, eval_rows(saved["start"] + saved["start_val"], step=0, subject="adapter"))
        write_json(run_dir / "run.json", saved)
    base, base_val, start, start_val = (saved[k] for k in ("base", "base_val", "start", "start_val"))
    log("base:    " + one_line(base))
    if keep:
        log("start:   " + one_line(start))
    bar = bars(specs_, base_val)
    limit = specs_[-1].regression.earlier_max_drop
    # 5. anchors, each without the other behaviors' prompts
    for i, (spec, cb, ctx) in enumerate(zip(specs_, cbs, ctxs)):
        their_prompts = {p for j, c in enumerate(cbs) if j != i for p in c.train_prompts}
        own = replace(cb, anchor_prompts=[p for p in cb.anchor_prompts if p not in their_prompts])
        ctx.anchor = build_anchor(loaded, ctx.sampler, own, spec.anchor, spec.train.max_new_tokens, seed,
                                  others=[c for j, c in enumerate(cbs) if j != i])
    # 6. train, the behaviors in turn
    done, selection = _train(ctxs, cbs, specs_, loaded, db, run_id, run_dir, shared, base_val, bar, keep,
                             start_val, limit, schedule, checkpoint_every, progress, name, log)
    best = selection.best.step
    load_adapter_weights(run_dir / "best", loaded.model)
    log(f"kept the checkpoint of step {best} (weakest behavior at {selection.best.score:.2f} of its bar); "
        f"ran {done} steps")
    # 7. save, evaluate, gate
    adapter_dir = save_adapter(run_dir / "adapter", loaded.model)
    after = [r for d in gate_decodings(first) for r in joint_evaluate(loaded.model, loaded.tokenizer, cbs, train,
                                                                      True, eval_n, seed, decoding=d)]
    db.log_evals(run_id, eval_rows(after, step=best, subject="adapter"))
    log("adapter: " + one_line(after))
    verdict = joint_gated(specs_, base, after, keep, start, limit)
    # Every checkpoint that carried every behavior (share of its bar >= 1) refused by a suite:
    # say so, as a single fit does, rather than "not learned".
    verdict = verdict.with_training(selection.history, selection.best, 1.0, "weakest behavior's share of its bar")
    if not verdict.passed:
        adapter_dir = adapter_dir.replace(run_dir / "adapter.rejected")
    write_json(run_dir / "metrics.json", {"base": base, "adapter": after, "best_step": best,
                                          "selection": selection.state(), "gate": verdict.to_dict()})
    db.record_adapter(run_id, adapter_dir, "accepted" if verdict.passed else "rejected", verdict.to_dict())
    db.finish_run(run_id, "completed" if verdict.passed else "rejected")
    promoted = verdict.passed and auto_promote(db, run_id) is not None
    log(figures_table(base, after, first.regression.temperature))
    log(f"gate: {verdict.summary()}")
    return ComposeResult(run_id, run_dir, adapter_dir, tuple(names), base, after, verdict, time.time() - t_start,
                         best, done, promoted)


def _new_run(db, out_dir: Path, name: str, first, specs_, behaviors, design, per, seed, lr, schedule, eval_n,
             init, keep, carried) -> tuple[Path, dict]:
    """A fresh run folder (run.json: everything a resume needs) and its store row."""
    run_id = f"{uuid.uuid4().hex[:8]}-{time.strftime('%Y%m%d-%H%M%S')}"
    names = [s.name for s in specs_]
    saved = {"run_id": run_id, "kind": "compose", "design": design, "behaviors": names,
             "specs": [s.model_dump(mode="json") for s in specs_], "spec_paths": [str(b.path) for b in behaviors],
             "steps_per_behavior": per, "seed": seed, "lr": lr or first.train.lr, "schedule": schedule,
             "eval_n": eval_n, "init": str(init) if init else None, "keep": list(keep),
             "teachers": [str(c) for c in carried] if carried else None}
    run_dir = new_run_dir(out_dir, name, run_id, saved)
    db.start_run(name, f"compose:{design}", spec={"behaviors": saved["specs"]},
                 config={"design": design, "steps_per_behavior": per, "eval_n": eval_n, "behaviors": names},
                 model=first.model, seed=seed, run_id=run_id)
    return run_dir, saved


def _carried(teachers, design: str, names: list[str], out_dir: Path) -> list[Path] | None:
    """The adapter folders that teach a consolidation, one per behavior; None for another design."""
    if design != "consolidate":
        if teachers:
            raise ComposeError(f"teachers are for design consolidate, not {design!r}")
        return None
    if not teachers or len(teachers) != len(names):
        raise ComposeError(f"design consolidate takes one teacher adapter per behavior ({', '.join(names)}), "
                           f"got {len(teachers or [])}: give --teacher RUN_OR_DIR once per spec, in the specs' "
                           "order, or none (engrain.compose and cl compose then fit each spec alone first)")
    folders = []
    for name, t in zip(names, teachers):
        folder = Path(t)
        if not (folder / "adapter_config.json").exists():
            try:
                folder = saved_adapter(find_run_dir(out_dir, str(t))) or folder
            except EngrainError as e:
                raise ComposeError(f"teacher for {name}: {t} is neither an adapter folder nor a run in "
                                   f"{out_dir} ({e})") from e
        if not (folder / "adapter_config.json").exists():
            raise ComposeError(f"teacher for {name}: no adapter in {folder} (adapter_config.json missing)")
        folders.append(folder)
    return folders


def _train(ctxs, cbs, specs_, loaded, db, run_id, run_dir, shared, base_val, bar, keep, start_val, limit,
           schedule, checkpoint_every, progress, name, log) -> tuple[int, Selection]:
    """The loop: a turn of one behavior's step, its store row, joint val evals and selection,
    checkpoints. As in ``cl fit``: Ctrl-C or SIGTERM finish the step, checkpoint and raise
    FitInterrupted; a crash checkpoints, marks the run failed and re-raises. Returns (steps
    done, selection)."""
    train, total = specs_[0].train, specs_[0].train.steps * len(ctxs)
    every = train.eval_every * len(ctxs)
    done, selection, turns, own_steps = _restore(run_dir, ctxs, loaded, shared, db, run_id, train, log)

    def checkpoint():
        save_checkpoint(run_dir, done, loaded.model, shared.optimizer,
                        {"selection": selection.state(), "turns": turns, "own_steps": own_steps,
                         "shared_done": shared.done, "reuse": [c.reuse.state() for c in ctxs]})
    with Progress(progress, total, done, name) as progress_bar, StopOnSignal() as stop, \
            checkpointed(checkpoint, db, run_id, lambda: done, "cl compose --resume"):
        for k in range(done, total):
            if selection.should_stop():
                break
            i = turns[k % len(turns)]
            ctx = ctxs[i]
            out = METHODS.get(ctx.train.method).step(ctx, own_steps[i])    # its prompts: a function of its own steps
            own_steps[i] += 1
            done = k + 1
            out = replace(out, step=k)      # the composition's step number, in every row
            row = step_row(out)
            row["extra"] = {**(row["extra"] or {}), "behavior": ctx.behavior.name}
            db.log(run_id, steps=[row], rollouts=rollout_rows(out, ctx.tokenizer),
                   judge_calls=judge_rows(out, ctx.behavior.spec.judge.model))
            progress_bar.update(out)
            if done % every == 0 or done == total:
                t_val = time.perf_counter()
                rows = joint_evaluate(loaded.model, loaded.tokenizer, cbs, train, True, train.val_n, train.seed,
                                      split="val")
                db.log_evals(run_id, eval_rows(rows, step=done, subject="adapter"))
                cand = joint_candidate(done, specs_, base_val, rows, bar, keep, start_val, limit,
                                       greedy=specs_[0].regression.temperature == 0)
                if selection.offer(cand):
                    save_adapter(run_dir / "best", loaded.model)
                progress_bar.val(cand, selection, time.perf_counter() - t_val)
                if schedule == "weakest":
                    turns = weakest_first(rows, specs_, bar)
            if done % checkpoint_every == 0 or selection.should_stop():
                checkpoint()
            stop.check()
    if progress_bar.totals:
        log(f"time by stage: {progress_bar.summary()}")
    return done, selection


def _restore(run_dir, ctxs, loaded, shared, db, run_id, train, log):
    """The latest complete checkpoint, if any: (steps done, selection, turns, each behavior's
    own steps), with the adapter, optimizer, schedule and rng restored in place."""
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        save_adapter(run_dir / "best", loaded.model)      # step 0: the adapter it starts from
        return 0, Selection(train.patience), list(range(len(ctxs))), [0] * len(ctxs)
    state = load_checkpoint(ckpt, loaded.model, shared.optimizer)
    shared.done = state["shared_done"]
    for ctx, reuse in zip(ctxs, state["reuse"]):
        ctx.reuse.load(reuse)
        ctx.adapter_changed()
    log(f"resuming {run_id} from {ckpt.name}")
    db.resume_run(run_id)
    return state["step"], Selection.from_state(state["selection"]), state["turns"], state["own_steps"]
