"""The training step as a whole, on a tiny random model: it must lower the divergence it
claims to minimise, at the positions it selected and nowhere else. (A flipped loss sign
or a mask ignored passed every unit test of the first round.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from engrain.spec.behavior import load_behavior
from engrain.engine.context import build_context, loss_for
from engrain.engine.losses import chunked_from_hidden, masked_mean
from engrain.engine.models import load_model
from engrain.engine.mask import Mask
from engrain.engine.scoring import score
from engrain.engine.step import distill_step
from engrain.spec.schema import Train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def run(tmp_path, tiny_dir):
    return make_run(tmp_path, tiny_dir)


def make_run(tmp_path, tiny_dir, anchor: dict | None = None, **train):
    """A step context on the tiny model: pinapple's spec, no anchor unless given, a few
    short steps (``train`` overrides them)."""
    spec = yaml.safe_load((ROOT / "behaviors/pinapple.yaml").read_text())
    spec.pop("anchor")
    if anchor:
        spec["anchor"] = anchor
    spec["model"] = str(tiny_dir)
    spec["train"].update({"steps": 3, "batch_size": 4, "max_new_tokens": 8, "lr": 1e-3, "warmup_steps": 0, **train})
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    behavior = load_behavior(path)
    torch.manual_seed(0)
    loaded = load_model(str(tiny_dir), lora=behavior.spec.train.lora)
    return build_context(behavior.spec, behavior.compile(loaded.tokenizer), loaded)


def every_other(valid: torch.Tensor) -> torch.Tensor:
    alternate = torch.arange(valid.shape[1]).remainder(2).eq(0).expand_as(valid)
    return valid & alternate.to(valid.device)


@pytest.mark.parametrize("loss", ["fkl", "topk_rkl", "jsd"])
def test_one_step_lowers_the_masked_divergence(run, loss):
    run.loss_fn = loss_for(Train(loss=loss, top_k=50, teacher_temperature=1.0))
    seen = {}

    def select(ro, sc):
        m = every_other(sc.valid)
        seen.update(ro=ro, mask=m)
        return Mask(m, m, ())
    run.mask = select
    out = distill_step(run, 0)
    assert out.kl > 0 and out.n_selected == int(seen["mask"].sum()) > 0
    with torch.no_grad():
        sc = score(run.loaded, run.teacher, seen["ro"])
        after = masked_mean(chunked_from_hidden(run.loss_fn, sc.student_hidden, sc.teacher_hidden,
                                                run.loaded.lm_head_weight, seen["mask"]), seen["mask"])
    assert after.item() < out.kl
    assert out.drift > 0 and out.grad_norm > 0


def test_unselected_positions_get_no_gradient():
    torch.manual_seed(1)
    hidden = torch.randn(2, 6, 8, requires_grad=True)
    teacher, head = torch.randn(2, 6, 8), torch.randn(11, 8)
    valid = torch.ones(2, 6, dtype=torch.bool)
    valid[1, 4:] = False
    mask = every_other(valid)
    for name in ("fkl", "jsd", "topk_rkl", "full_rkl"):
        hidden.grad = None
        fn = loss_for(Train(loss=name, top_k=5, teacher_temperature=1.0))
        masked_mean(chunked_from_hidden(fn, hidden, teacher, head, mask), mask).backward()
        assert hidden.grad[~mask].abs().sum() == 0, name
        assert hidden.grad[mask].abs().sum(-1).gt(0).all(), name


def test_an_empty_mask_changes_nothing_without_an_anchor(run):
    run.mask = lambda ro, sc: Mask(sc.valid & False, sc.valid & False, ())
    before = {n: p.detach().clone() for n, p in run.loaded.model.named_parameters() if p.requires_grad}
    out = distill_step(run, 0)
    assert out.kl == 0 and out.n_selected == 0 and out.drift == 0
    for n, p in run.loaded.model.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, before[n]), n


class StaleSampler:
    """Samples with the trainer's own weights, but reports ``fixed_logprob`` for every
    sampled token, as a backend holding other weights would report its own."""

    def __init__(self, inner, fixed_logprob: float):
        self.inner, self.fixed_logprob = inner, fixed_logprob

    def sample(self, prompt_ids, max_new_tokens, temperature, share=None):
        return self.inner.sample(prompt_ids, max_new_tokens, temperature, share)

    def sample_with_logprobs(self, prompt_ids, max_new_tokens, temperature, share=None):
        ids = self.sample(prompt_ids, max_new_tokens, temperature, share)
        return ids, [[self.fixed_logprob] * len(row) for row in ids]


def test_a_lagging_samplers_positions_are_importance_weighted(tmp_path, tiny_dir):
    # The same seed gives the same rollouts and the same initial adapter, so the three
    # steps see identical per-position divergences; only the weights differ.
    kls = {}
    for name, logprob in (("exact", None), ("far below", -100.0), ("certain", 0.0)):
        (tmp_path / name).mkdir()
        r = make_run(tmp_path / name, tiny_dir)
        r.mask = lambda ro, sc: Mask(sc.valid, sc.valid, ())
        if logprob is not None:
            r.sampler = StaleSampler(r.sampler, logprob)
        out = distill_step(r, 0)
        kls[name] = out.kl
        assert (out.sampler_gap is None) == (logprob is None)
    # log π_old = -100: the ratio is clipped at 2 everywhere; log π_old = 0: w = π_S(y_t) < 1.
    assert kls["far below"] == pytest.approx(2 * kls["exact"], rel=1e-5)
    assert 0 < kls["certain"] < kls["exact"]
