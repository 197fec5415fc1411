"""One training step. ``distill_step`` is RMSD (and OPSD, with the all-positions mask):

1. sample a batch of prompts x and one hint phrasing each (x' = x + hint, teacher only;
   with several processes, this rank's share of them: engine/parallel.py);
2. roll out y ~ π_S(·|x), keeping the exact token ids (one generation may serve
   ``train.steps_per_rollout`` steps: engine/reuse.py);
3. score the same ids under the student (x ⊕ y, with grad) and the teacher (x' ⊕ y);
4. Δ_t = log π_T(y_t) − log π_S(y_t);
5. mask: pre-filter top-T by |Δ| (+ pattern boost), the judge's pick of ≤ S, + the guard;
6. loss: the divergence (``train.loss``, forward KL by default) at the selected positions
   only (weighted by π_S / π_old where the tokens came from another policy: a lagging
   sampler's, or the student's of a few steps ago when a rollout is reused), plus
   ``anchor.weight`` × KL(π_base || π_S) on the base's answers to anchor prompts;
7. optimizer step on the adapter's parameters; the teacher policy may refresh.

``sft_step`` is the supervised baseline on the teacher's own samples (same anchor).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import torch

from engrain.engine.anchor import anchor_at
from engrain.engine.context import StepContext
from engrain.engine.losses import chunked_from_hidden, importance_weight, masked_mean, per_position_ce
from engrain.engine.parallel import global_positions
from engrain.engine.rollout import Rollouts, Share, rollout
from engrain.engine.scoring import pack, response_hidden, score


@dataclass(frozen=True)
class StepResult:
    step: int
    loss: float                 # what was minimised: kl + anchor.weight × anchor_kl
    kl: float | None            # the divergence at the selected positions (None for SFT's CE)
    anchor_kl: float | None     # KL(π_base || π_S) on this step's anchor answers
    n_candidates: int
    n_selected: int             # positions trained, the guard's included
    n_guarded: int              # positions the guard added to the judge's pick
    judge_fallbacks: int
    behavior_rate: float        # share of this step's rollouts that show the behavior
    lr: float
    grad_norm: float
    drift: float                # ‖ΔW‖ / ‖W‖ of the adapter after the step
    seconds: float
    judge_seconds: float
    teacher_version: int
    rollouts: Rollouts
    delta: torch.Tensor | None = None      # (B, L) for the store's token view
    candidates: torch.Tensor | None = None
    selected: torch.Tensor | None = None
    teacher_top: torch.Tensor | None = None
    judge: tuple = ()
    stage_seconds: dict | None = None   # STAGES -> seconds: where the step's time went
    sampler_gap: float | None = None    # mean |log π_S(y_t) − log π_sampler(y_t)|: sampler/trainer mismatch


STAGES = ("rollout", "score", "mask", "loss", "update")     # distill_step's laps, in order


class Laps:
    """Wall time per stage: ``lap("score")`` closes the stage that just ran."""

    def __init__(self):
        self.seconds, self._t = {}, time.perf_counter()

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage], self._t = now - self._t, now


def sample_batch(cb, seed: int, step: int, batch_size: int) -> tuple[list[str], list[int]]:
    """Prompts and hint choices for ``step``: a function of (seed, step) only, so a
    resumed run samples exactly what an uninterrupted one would."""
    rng = random.Random(seed * 1_000_003 + step)
    torch.manual_seed(seed * 1_000_003 + step)   # the rollouts' sampling too
    prompts = [rng.choice(cb.train_prompts) for _ in range(batch_size)]
    return prompts, [rng.randrange(cb.variants) for _ in prompts]


def batch_share(ctx: StepContext, step: int) -> tuple[list[str], list[int], Share]:
    """This rank's share of ``step``'s prompts and hints (all of them, on one process), and
    which rows of the step's batch they are: every rank samples its rows with the draws one
    process gives them, so N processes roll out what one would."""
    prompts, hints = sample_batch(ctx.behavior, ctx.train.seed, step, ctx.train.batch_size)
    rows = ctx.ranks.shard(list(range(len(prompts))))
    return [prompts[i] for i in rows], [hints[i] for i in rows], Share(tuple(rows), len(prompts))


def rollouts_at(ctx: StepContext, step: int, from_teacher: bool = False) -> Rollouts:
    """Steps 1-2: this rank's prompts and hints for ``step``, and their rollouts."""
    prompts, hints, share = batch_share(ctx, step)
    return rollout(ctx.sampler, ctx.behavior, ctx.tokenizer, prompts, hints, ctx.train.max_new_tokens,
                   ctx.train.temperature, from_teacher=from_teacher, share=share)


def distill_step(ctx: StepContext, step: int) -> StepResult:
    t0, train, loaded, lap = time.perf_counter(), ctx.train, ctx.loaded, Laps()
    # 1-2. prompts and hints, and on-policy rollouts (one generation serves steps_per_rollout steps)
    ro = ctx.reuse.take(step, lambda: rollouts_at(ctx, step))
    lap("rollout")
    # 3-4. scores and Δ on the same response ids (and the base's, for the guard)
    sc = score(loaded, ctx.teacher, ro, base=ctx.needs_base, one_base_pass=train.one_base_pass)
    lap("score")
    # 5. the mask: the judge's relevant positions and the guard's
    mask = ctx.mask(ro, sc)
    lap("mask")
    # 6. the loss at the selected positions only, and the anchor elsewhere
    per_position = chunked_from_hidden(ctx.loss_fn, sc.student_hidden, sc.teacher_hidden,
                                       loaded.lm_head_weight, mask.selected)
    old = ctx.reuse.behavior_logp(sc.student_logp, sc.valid)    # π_old: a lagging sampler's, a reused rollout's
    if old is not None:
        per_position = per_position * importance_weight(sc.student_logp, old)
    kl = masked_mean(per_position, mask.selected, global_positions(ctx.ranks, mask.selected))
    anchor = anchor_at(loaded, ctx.anchor, train.seed, step)
    loss = kl if anchor is None else kl + ctx.anchor.weight * anchor
    lap("loss")
    # 7. update the adapter (backward, and the gradients summed over ranks, included)
    upd = ctx.updater.step(loss, step)
    ctx.teacher.after_step(loaded.model, step + 1)
    lap("update")
    return StepResult(
        step=step, loss=loss.item(), kl=kl.item(), anchor_kl=None if anchor is None else anchor.item(),
        n_candidates=int(mask.candidates.sum()), n_selected=int(mask.selected.sum()),
        n_guarded=0 if mask.guarded is None else int(mask.guarded.sum()),
        judge_fallbacks=mask.fallbacks, behavior_rate=_rate(ctx.behavior, ro), lr=upd.lr,
        grad_norm=upd.grad_norm, drift=upd.drift, seconds=time.perf_counter() - t0,
        judge_seconds=mask.judge_seconds, teacher_version=ctx.teacher.version, rollouts=ro,
        delta=sc.delta.detach().cpu(), candidates=mask.candidates.cpu(), selected=mask.selected.cpu(),
        teacher_top=sc.teacher_top.cpu(), judge=mask.judge, stage_seconds=lap.seconds,
        sampler_gap=None if old is None else masked_mean((sc.student_logp - old).abs(), sc.valid).item())


def sft_step(ctx: StepContext, step: int) -> StepResult:
    """Cross-entropy on teacher samples (x' -> y_T, adapter off) that show the behavior,
    trained under the student prompt x, plus the same anchor as distillation. Samples
    without the behavior are dropped, unless none shows it: then the batch trains on all."""
    t0, train, loaded = time.perf_counter(), ctx.train, ctx.loaded
    with ctx.teacher.scoring(loaded.model):
        ro = rollouts_at(ctx, step, from_teacher=True)
    keep = [i for i, t in enumerate(ro.texts) if ctx.behavior.exists(t)] or list(range(len(ro.texts)))
    packed = pack([ro.student_prompt_ids[i] for i in keep], [ro.response_ids[i] for i in keep],
                  ctx.tokenizer.pad_token_id)
    hidden = response_hidden(loaded.backbone(), packed)
    valid = packed.valid.to(hidden.device)
    logits = hidden[valid] @ loaded.lm_head_weight.T
    ce = per_position_ce(logits, packed.response_ids.to(hidden.device)[valid]).sum() / global_positions(
        ctx.ranks, valid).clamp(min=1)
    anchor = anchor_at(loaded, ctx.anchor, train.seed, step)
    loss = ce if anchor is None else ce + ctx.anchor.weight * anchor
    upd = ctx.updater.step(loss, step)
    n = int(valid.sum())
    return StepResult(
        step=step, loss=loss.item(), kl=None, anchor_kl=None if anchor is None else anchor.item(),
        n_candidates=n, n_selected=n, n_guarded=0, judge_fallbacks=0, behavior_rate=_rate(ctx.behavior, ro),
        lr=upd.lr, grad_norm=upd.grad_norm, drift=upd.drift, seconds=time.perf_counter() - t0,
        judge_seconds=0.0, teacher_version=ctx.teacher.version, rollouts=ro)


def _rate(cb, ro: Rollouts) -> float:
    return sum(cb.exists(t) for t in ro.texts) / max(1, len(ro.texts))
