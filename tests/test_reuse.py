"""Rollout reuse (train.steps_per_rollout): one generation serves k steps, later steps
weighted by π_S / π_old; the weight is exactly 1 on the step that sampled."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from engrain.engine.context import build_context
from engrain.engine.losses import importance_weight
from engrain.engine.mask import Mask
from engrain.engine.models import load_model
from engrain.engine.reuse import RolloutReuse
from engrain.engine.rollout import Rollouts
from engrain.engine.step import distill_step
from engrain.spec.behavior import load_behavior

ROOT = Path(__file__).resolve().parents[1]


def fake_rollouts(tag: int) -> Rollouts:
    return Rollouts(["p"], [0], [[1, 2]], [[1, 3, 2]], [[5, 6, 7]], [f"r{tag}"])


def test_weight_is_one_on_the_step_that_sampled_and_the_ratio_after():
    reuse, made = RolloutReuse(2), []
    valid = torch.tensor([[True, True, True, False]])
    sampled = torch.tensor([[-1.0, -2.0, -0.5, 0.0]])
    ro = reuse.take(0, lambda: made.append(0) or fake_rollouts(0))
    old = reuse.behavior_logp(sampled, valid)
    assert torch.equal(importance_weight(sampled, old)[valid], torch.ones(3))
    # the next step re-scores the same tokens under a moved student: w = π_S / π_old, clipped at 2
    assert reuse.take(1, lambda: made.append(1) or fake_rollouts(1)) is ro and made == [0]
    moved = sampled + torch.tensor([[0.1, -0.3, 2.0, 0.0]])
    w = importance_weight(moved, reuse.behavior_logp(moved, valid))[valid]
    torch.testing.assert_close(w, torch.tensor([0.1, -0.3, 2.0]).exp().clamp(max=2.0))
    # step 2 samples again, and its own tokens weigh 1 again
    reuse.take(2, lambda: made.append(2) or fake_rollouts(2))
    assert made == [0, 2]
    assert torch.equal(importance_weight(moved, reuse.behavior_logp(moved, valid))[valid], torch.ones(3))


def test_without_reuse_there_is_no_weight_and_state_survives_a_checkpoint():
    one = RolloutReuse(1)
    one.take(0, lambda: fake_rollouts(0))
    assert one.behavior_logp(torch.zeros(1, 3), torch.ones(1, 3, dtype=torch.bool)) is None
    assert one.state() is None
    two = RolloutReuse(3)
    two.take(3, lambda: fake_rollouts(3))
    two.behavior_logp(torch.tensor([[-1.0, -2.0, -3.0]]), torch.ones(1, 3, dtype=torch.bool))
    import json
    again = RolloutReuse(3)
    again.load(json.loads(json.dumps(two.state())))
    assert again.take(4, lambda: pytest.fail("a restored cache must not sample again")) == two.rollouts
    assert again.old_logp == two.old_logp
    with pytest.raises(ValueError):
        RolloutReuse(0)


class CountingSampler:
    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def sample(self, prompt_ids, max_new_tokens, temperature, share=None):
        self.calls += 1
        return self.inner.sample(prompt_ids, max_new_tokens, temperature, share)


def make_run(tmp_path, tiny_dir, k: int):
    spec = yaml.safe_load((ROOT / "behaviors/pinapple.yaml").read_text())
    spec.pop("anchor")
    spec["model"] = str(tiny_dir)
    spec["train"].update({"steps": 4, "batch_size": 3, "max_new_tokens": 6, "warmup_steps": 0,
                          "steps_per_rollout": k})
    path = tmp_path / f"spec-{k}.yaml"
    path.write_text(yaml.safe_dump(spec))
    behavior = load_behavior(path)
    torch.manual_seed(0)
    loaded = load_model(str(tiny_dir), lora=behavior.spec.train.lora)
    ctx = build_context(behavior.spec, behavior.compile(loaded.tokenizer), loaded)
    ctx.sampler = CountingSampler(ctx.sampler)
    ctx.mask = lambda ro, sc: Mask(sc.valid, sc.valid, ())     # every position: the adapter moves
    return ctx


def test_two_steps_per_rollout_generate_half_as_often(tmp_path, tiny_dir):
    calls, gaps = {}, {}
    for k in (1, 2):
        ctx = make_run(tmp_path, tiny_dir, k)
        assert ctx.reuse.every == k
        outs = [distill_step(ctx, step) for step in range(4)]
        calls[k], gaps[k] = ctx.sampler.calls, [o.sampler_gap for o in outs]
        if k == 2:
            assert outs[1].rollouts is outs[0].rollouts and outs[2].rollouts is not outs[0].rollouts
    assert calls == {1: 4, 2: 2}
    assert gaps[1] == [None] * 4
    # the sampling steps score their own tokens (gap 0); the reused ones under a moved student
    assert gaps[2][0] == gaps[2][2] == 0.0 and gaps[2][1] > 0 and gaps[2][3] > 0
