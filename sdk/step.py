"""One training step. ``distill_step`` is RMSD (and OPSD, with the all-positions mask):

1. sample a batch of prompts x and one hint phrasing each (x' = x + hint, teacher only);
2. roll out y ~ π_S(·|x), keeping the exact token ids;
3. score the same ids under the student (x ⊕ y, with grad) and the teacher (x' ⊕ y);
4. Δ_t = log π_T(y_t) − log π_S(y_t);
5. mask: pre-filter top-T by |Δ| (+ pattern boost), then the judge's pick of ≤ S;
6. loss: reverse KL(π_S || π_T) over the student's top-K, at the selected positions only;
7. optimizer step on the adapter's parameters; the teacher policy may refresh.

``sft_step`` is the supervised baseline on the teacher's own samples.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import torch

from .losses import chunked_from_hidden, masked_mean, per_position_ce
from .rollout import Rollouts, rollout
from .scoring import pack, response_hidden, score


@dataclass(frozen=True)
class StepResult:
    step: int
    loss: float
    kl: float | None            # the divergence itself (None for the SFT baseline's CE)
    n_candidates: int
    n_selected: int
    judge_fallbacks: int
    behavior_rate: float        # share of this step's rollouts that show the behavior
    seconds: float
    judge_seconds: float
    teacher_version: int
    rollouts: Rollouts
    delta: torch.Tensor | None = None      # (B, L) for the store's token view
    candidates: torch.Tensor | None = None
    selected: torch.Tensor | None = None
    teacher_top: torch.Tensor | None = None
    judge: tuple = ()


def sample_batch(cb, seed: int, step: int, batch_size: int) -> tuple[list[str], list[int]]:
    """Prompts and hint choices for ``step``: a function of (seed, step) only, so a
    resumed run samples exactly what an uninterrupted one would."""
    rng = random.Random(seed * 1_000_003 + step)
    torch.manual_seed(seed * 1_000_003 + step)   # the rollouts' sampling too
    prompts = [rng.choice(cb.train_prompts) for _ in range(batch_size)]
    return prompts, [rng.randrange(len(cb.hints)) for _ in prompts]


def distill_step(run, step: int) -> StepResult:
    t0, cfg = time.perf_counter(), run.cfg
    # 1. prompts and hints
    prompts, hints = sample_batch(run.cb, cfg.seed, step, cfg.batch_size)
    # 2. on-policy rollouts
    ro = rollout(run.sampler, run.cb, run.tokenizer, prompts, hints, cfg.max_new_tokens, cfg.temperature)
    # 3-4. scores and Δ on the same response ids
    sc = score(run.loaded, run.teacher, ro)
    # 5. the mask
    mask = run.select(run.cb, run.tokenizer, run.judge, ro, sc, cfg.prefilter_t, cfg.judge_s)
    # 6. the loss at the selected positions only
    per_position = chunked_from_hidden(run.loss_fn, sc.student_hidden, sc.teacher_hidden,
                                       run.loaded.lm_head_weight, mask.selected)
    loss = masked_mean(per_position, mask.selected)
    # 7. update the adapter
    run.update(loss)
    run.teacher.after_step(run.loaded.model, step + 1)
    return StepResult(step, loss.item(), loss.item(), int(mask.candidates.sum()),
                      int(mask.selected.sum()),
                      mask.fallbacks, _rate(run.cb, ro), time.perf_counter() - t0, mask.judge_seconds,
                      run.teacher.version, ro, sc.delta.detach().cpu(), mask.candidates.cpu(),
                      mask.selected.cpu(), sc.teacher_top.cpu(), mask.judge)


def sft_step(run, step: int) -> StepResult:
    """Cross-entropy on teacher samples (x' -> y_T, adapter off) that show the behavior,
    trained under the student prompt x. Samples without the behavior are dropped, unless
    none shows it: then the batch trains on all of them."""
    t0, cfg = time.perf_counter(), run.cfg
    prompts, hints = sample_batch(run.cb, cfg.seed, step, cfg.batch_size)
    with run.teacher.scoring(run.loaded.model):
        ro = rollout(run.sampler, run.cb, run.tokenizer, prompts, hints,
                     cfg.max_new_tokens, cfg.temperature, from_teacher=True)
    keep = [i for i, t in enumerate(ro.texts) if run.cb.exists(t)] or list(range(len(ro.texts)))
    packed = pack([ro.student_prompt_ids[i] for i in keep], [ro.response_ids[i] for i in keep],
                  run.tokenizer.pad_token_id)
    hidden = response_hidden(run.loaded.backbone(), packed)
    valid = packed.valid.to(hidden.device)
    logits = hidden[valid] @ run.loaded.lm_head_weight.T
    loss = per_position_ce(logits, packed.response_ids.to(hidden.device)[valid]).mean()
    run.update(loss)
    n = int(valid.sum())
    return StepResult(step, loss.item(), None, n, n, 0, _rate(run.cb, ro), time.perf_counter() - t0, 0.0,
                      run.teacher.version, ro)


def _rate(cb, ro: Rollouts) -> float:
    return sum(cb.exists(t) for t in ro.texts) / max(1, len(ro.texts))
