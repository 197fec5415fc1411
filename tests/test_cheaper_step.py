"""The step's cost options: train.one_base_pass (teacher and guard's base in one forward)
gives the same scores as two passes; anchor.every skips the anchor between its steps."""

from __future__ import annotations

import torch

from engrain.engine.anchor import AnchorSet, anchor_at
from engrain.engine.rollout import rollout
from engrain.engine.scoring import score
from engrain.engine.step import distill_step, sample_batch
from engrain.engine.teacher import ContinuationTeacher, EMATeacher, FixedTeacher
from test_step import make_run as step_run


def make_run(tmp_path, tiny_dir, anchor: dict | None = None, **train):
    return step_run(tmp_path, tiny_dir, anchor, **{"steps": 4, "batch_size": 3, "max_new_tokens": 6, **train})


def test_one_base_pass_scores_like_two(tmp_path, tiny_dir):
    ctx = make_run(tmp_path, tiny_dir)
    with torch.no_grad():       # a nonzero adapter, so the base and the student differ
        for name, p in ctx.loaded.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    ro = rollout(ctx.sampler, ctx.behavior, ctx.tokenizer, *sample_batch(ctx.behavior, 0, 0, 3), 6, 1.0)
    two = score(ctx.loaded, ctx.teacher, ro, base=True)
    one = score(ctx.loaded, ctx.teacher, ro, base=True, one_base_pass=True)
    assert not torch.allclose(two.base_logp, two.student_logp)
    for field in ("teacher_logp", "base_logp", "student_logp", "teacher_hidden"):
        torch.testing.assert_close(getattr(one, field), getattr(two, field), atol=1e-5, rtol=1e-5)
    assert torch.equal(one.teacher_top, two.teacher_top)


def test_only_a_base_teacher_shares_the_base_pass():
    assert FixedTeacher().adapter_off
    cont, ema = ContinuationTeacher(2), EMATeacher(0.9)
    assert cont.adapter_off and ema.adapter_off
    cont.version = ema.version = 1
    assert not cont.adapter_off and not ema.adapter_off


def test_anchor_every_k_steps(tmp_path, tiny_dir):
    ctx = make_run(tmp_path, tiny_dir, anchor={"builtin": "lab/traffic", "weight": 1.0, "per_step": 2, "pool_size": 4, "every": 2})
    from engrain.engine.anchor import build_anchor
    ctx.anchor = build_anchor(ctx.loaded, ctx.sampler, ctx.behavior, ctx.behavior.spec.anchor, 6, 0)
    assert ctx.anchor.every == 2
    outs = [distill_step(ctx, step) for step in range(3)]
    assert [o.anchor_kl is None for o in outs] == [False, True, False]
    assert anchor_at(ctx.loaded, None, 0, 0) is None
    every = AnchorSet(ctx.anchor.prompt_ids, ctx.anchor.answer_ids, ctx.anchor.base_hidden, 1.0, 2)
    assert all(anchor_at(ctx.loaded, every, 0, s) is not None for s in (0, 1))
