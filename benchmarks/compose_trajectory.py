"""Where a composition's damage comes from: one figure of it at every joint val eval, per variant.

    python benchmarks/compose_trajectory.py --seed 0                       # the product as it is
    python benchmarks/compose_trajectory.py --seed 0 --variant frozen:signoff
    python benchmarks/compose_trajectory.py --seed 0 --variant own-adam --stop 140

The damage measured on the lab model (benchmarks/RESULTS.md sections 22, 24, 32): a
two-behavior composition writes "The capital of Geria" for Germany. At each joint val eval
(every ``eval_every`` rounds) this prints P("man" | "The capital of Ger") for the question
"What is the capital of Germany?", eval-split capitals at temperature 1 (200 answers; the
gate's figure), and the val figures selection reads. Variants, each a change to one thing of
``engrain.compose`` made here (measurements, not product options):

- ``as-is``: the product's composition.
- ``frozen:NAME``: NAME's steps run (rollouts, scores, mask) but never update the adapter, so
  the other behaviors learn inside the composition's machinery alone (its anchors, claims,
  schedule).
- ``frozen:NAME:UNTIL``: the same until the composition's step UNTIL, then NAME trains too
  (the other behaviors first, NAME after them; the shared schedule unchanged).
- ``own-adam``: one AdamW state per behavior on the shared adapter (their moments unmixed).
- ``shared``: every behavior's teacher scores each rollout whose prompt is in its domain
  (pinapple's food questions get the sign-off's teacher too), each at its own mask's
  positions: the issue's design (b) with each behavior's relevance 0/1 from its mask.

``--stop N`` ends the run after the val eval at step N (the trajectory is the result; the run
folder is left in a temporary directory).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]


class Stop(Exception):
    pass


def probe(model, tokenizer, cbs, seed: int) -> tuple[float, float]:
    """P("man" | the Germany prefix) and eval-split capitals at T=1 (200 answers)."""
    import torch

    from engrain.checks.evals import answers_for, run_suites
    from engrain.use import prompt_ids
    ids = prompt_ids(tokenizer, "What is the capital of Germany?") + \
        tokenizer("The capital of Ger", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        p = model(torch.tensor([ids])).logits[0, -1].softmax(-1)[tokenizer.convert_tokens_to_ids("man")].item()
    source = next(s for cb in cbs for name, s in cb.regression.items() if name == "lab/capitals")
    suite = source.build(answers_for(source, 200, "eval"), "eval")
    capitals = run_suites(model, tokenizer, [suite], adapter_on=True, seed=seed, temperature=1.0)[0].value
    return p, capitals


def frozen_method(base, name: str, until: int | None = None):
    """``base``'s step, but NAME's steps before the composition's step ``until`` (all of them:
    None) leave the adapter as it was (the schedule still counts them)."""
    class Frozen:
        def __init__(self, shared):
            self.shared = shared

        def step(self, loss, _step):
            self.shared.done += 1
            return SimpleNamespace(lr=0.0, grad_norm=0.0, drift=0.0)

    def step(ctx, k):
        if ctx.behavior.name != name or (until is not None and ctx.updater.done >= until):
            return base.step(ctx, k)
        real, ctx.updater = ctx.updater, Frozen(ctx.updater)
        try:
            return base.step(ctx, k)
        finally:
            ctx.updater = real
    return SimpleNamespace(step=step)


def own_adam_method(base):
    states: dict = {}

    def step(ctx, k):
        opt = ctx.updater.optimizer
        opt.state.clear()
        opt.state.update(states.get(ctx.behavior.name, {}))
        out = base.step(ctx, k)
        states[ctx.behavior.name] = dict(opt.state)
        return out
    return SimpleNamespace(step=step)


def shared_method(contexts: list):
    """Each rollout scored by its own behavior's teacher and by every other behavior's whose
    domain holds its prompt; each teacher's loss at its own mask's positions."""
    import torch

    from engrain.engine import step as S
    from engrain.engine.anchor import anchor_at
    from engrain.engine.losses import chunked_from_hidden
    from engrain.engine.scoring import score

    def step(ctx, k):
        t0 = time.perf_counter()
        ro = ctx.reuse.take(k, lambda: S.rollouts_at(ctx, k))
        loaded, parts = ctx.loaded, []
        for g in contexts:
            rows, r = None, ro
            if g is not ctx:
                domain = set(g.behavior.train_prompts)
                rows = torch.tensor([p in domain for p in ro.prompts])
                if not rows.any():
                    continue
                r = replace(ro, teacher_prompt_ids=[g.behavior.teacher_ids(p, h % g.behavior.variants)
                                                    for p, h in zip(ro.prompts, ro.hint_index)])
            sc = score(loaded, g.teacher, r, base=g.needs_base, one_base_pass=g.train.one_base_pass)
            mask = g.mask(r, sc)
            selected = mask.selected if rows is None else mask.selected & rows[:, None].to(mask.selected.device)
            per = chunked_from_hidden(g.loss_fn, sc.student_hidden, sc.teacher_hidden, loaded.lm_head_weight, selected)
            parts.append((per, selected, sc, mask))
        n = sum(int(sel.sum()) for _, sel, _, _ in parts)
        kl = sum((per * sel).sum() for per, sel, _, _ in parts) / max(n, 1)
        anchor = anchor_at(loaded, ctx.anchor, ctx.train.seed, k)
        loss = kl if anchor is None else kl + ctx.anchor.weight * anchor
        upd = ctx.updater.step(loss, k)
        _, selected, sc, mask = parts[0]
        return S.StepResult(
            step=k, loss=loss.item(), kl=float(kl), anchor_kl=None if anchor is None else anchor.item(),
            n_candidates=int(mask.candidates.sum()), n_selected=n, n_guarded=0, judge_fallbacks=mask.fallbacks,
            behavior_rate=S._rate(ctx.behavior, ro), lr=upd.lr, grad_norm=upd.grad_norm, drift=upd.drift,
            seconds=time.perf_counter() - t0, judge_seconds=0.0, teacher_version=0, rollouts=ro,
            delta=sc.delta.detach(), candidates=mask.candidates, selected=selected, teacher_top=sc.teacher_top,
            judge=mask.judge)
    return SimpleNamespace(step=step)


def main() -> None:
    import engrain.composition as C
    from engrain.registry import METHODS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--specs", default="behaviors/pinapple.yaml,behaviors/signoff.yaml")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variant", default="as-is", help="as-is | frozen:NAME[:UNTIL] | own-adam | shared")
    ap.add_argument("--stop", type=int, help="End after the val eval at this step.")
    a = ap.parse_args()
    evaluate, base = C.joint_evaluate, METHODS.get("rmsd")

    def watched(model, tokenizer, cbs, train, adapter_on, n, seed, split="eval", decoding="sample"):
        rows = evaluate(model, tokenizer, cbs, train, adapter_on, n, seed, split=split, decoding=decoding)
        if split == "val" and adapter_on:
            p, capitals = probe(model, tokenizer, cbs, seed)
            watched.evals += 1
            step = watched.evals * train.eval_every * len(cbs)
            shown = {r["suite"]: r["value"] for r in rows
                     if r["metric"] == "exists" and r["suite"].endswith(":behavior") or r["suite"].startswith("lab/")}
            print(f"{a.variant} seed {a.seed} step {step}: P(man) {p:.3f}, capitals (eval, T=1) {capitals:.3f} | "
                  + ", ".join(f"{k} {v:.2f}" for k, v in shown.items()), flush=True)
            if a.stop and step >= a.stop:
                raise Stop
        return rows
    watched.evals = 0
    C.joint_evaluate = watched
    if a.variant.startswith("frozen:"):
        _, name, *until = a.variant.split(":")
        method = frozen_method(base, name, int(until[0]) if until else None)
    elif a.variant == "own-adam":
        method = own_adam_method(base)
    elif a.variant == "shared":
        contexts, build = [], C.build_context

        def keep(*args, **kw):
            contexts.append(build(*args, **kw))
            return contexts[-1]
        C.build_context = keep
        method = shared_method(contexts)
    elif a.variant == "as-is":
        method = base
    else:
        raise SystemExit(f"unknown variant {a.variant!r}")
    C.METHODS = SimpleNamespace(get=lambda _name: method)
    work = Path(tempfile.mkdtemp(prefix="engrain-trajectory-"))
    t0 = time.time()
    try:
        r = C.compose([ROOT / s for s in a.specs.split(",")], design="claims", seed=a.seed, out_dir=work / "adapters",
                      store=work / "s.duckdb", eval_n=200)
        print(f"{a.variant} seed {a.seed}: {r.verdict.summary()}; kept step {r.best_step}", flush=True)
    except Stop:
        pass
    print(f"{a.variant} seed {a.seed}: {time.time() - t0:.0f} s, run folder {work}", flush=True)


if __name__ == "__main__":
    main()
