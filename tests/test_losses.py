"""engrain.engine.losses: hand-computed values, a naive reference, chunking, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from engrain.engine.losses import (chunked_from_hidden, chunked_per_position,
                            chunked_topk_rkl_from_hidden, importance_weight,
                            masked_mean, per_position_ce, per_position_fkl, per_position_full_rkl,
                            per_position_jsd, per_position_topk_rkl)
from engrain.engine.context import loss_for
from engrain.spec.schema import Train
from engrain.registry import LOSSES

# A 3-token vocabulary whose probabilities are round numbers: logits = log p + any constant.
P_S = (0.5, 0.3, 0.2)
P_T = (0.2, 0.5, 0.3)


def logits_of(p, shift=0.0):
    return torch.tensor([[[math.log(x) + shift for x in p]]], dtype=torch.float64)  # (1, 1, 3)


S3, T3 = logits_of(P_S, shift=1.7), logits_of(P_T, shift=-4.0)


@pytest.mark.parametrize("fn, expected", [
    # KL(π_S||π_T) = .5 ln(.5/.2) + .3 ln(.3/.5) + .2 ln(.2/.3) = .458145 - .153248 - .081093
    (lambda s, t: per_position_full_rkl(s, t), 0.223804),
    # KL(π_T||π_S) = .2 ln(.2/.5) + .5 ln(.5/.3) + .3 ln(.3/.2) = -.183258 + .255413 + .121640
    (lambda s, t: per_position_fkl(s, t), 0.193795),
    # top-1 of the student = token 0: .5 ln(.5/.2)
    (lambda s, t: per_position_topk_rkl(s, t, k=1), 0.458145),
    # top-2 = tokens {0, 1}, not renormalised: .5 ln 2.5 + .3 ln .6
    (lambda s, t: per_position_topk_rkl(s, t, k=2), 0.304898),
    # top-2 renormalised: S' = (.625, .375), T' = (2/7, 5/7):
    # .625 ln(.625·7/2) + .375 ln(.375·7/5) = .625·.782759 + .375·(−.644357)
    (lambda s, t: per_position_topk_rkl(s, t, k=2, renormalize=True), 0.247591),
    # top-2 + tail bucket: the tail is exactly token 2 here, so it is the full KL
    (lambda s, t: per_position_topk_rkl(s, t, k=2, renormalize=True, tail_bucket=True), 0.223804),
    # k >= V is clamped to V: the full reverse KL
    (lambda s, t: per_position_topk_rkl(s, t, k=10), 0.223804),
    # JSD β=.5: M = (.35, .4, .25); KL(T||M) = .2 ln(.2/.35) + .5 ln(.5/.4) + .3 ln(.3/.25)
    # = .054345, KL(S||M) = .5 ln(.5/.35) + .3 ln(.3/.4) + .2 ln(.2/.25) = .047404
    (lambda s, t: per_position_jsd(s, t, beta=0.5), 0.050875),
    # β=.25: M = .25 T + .75 S = (.425, .35, .225); .25 · .113888 + .75 · .011458
    (lambda s, t: per_position_jsd(s, t, beta=0.25), 0.037065),
    # the limits are the two KLs exactly
    (lambda s, t: per_position_jsd(s, t, beta=0.0), 0.193795),
    (lambda s, t: per_position_jsd(s, t, beta=1.0), 0.223804),
])
def test_hand_computed_values_on_three_tokens(fn, expected):
    out = fn(S3, T3)
    assert out.shape == (1, 1)
    assert out.item() == pytest.approx(expected, abs=2e-6)


def test_cross_entropy_hand_computed():
    targets = torch.tensor([[1]])
    assert per_position_ce(S3, targets).item() == pytest.approx(1.203973, abs=1e-6)  # -ln .3
    assert per_position_ce(S3, torch.tensor([[-100]])).item() == 0.0                 # ignored


# --------------------------------------------------------------------------- naive reference

def ref_topk_rkl(s_row, t_row, k=None, renormalize=False, tail=False):
    """Per-position Python loop over the vocabulary, float64 math, no torch ops."""
    ps = [math.exp(x) for x in s_row]
    zs, zt = sum(ps), sum(math.exp(x) for x in t_row)
    ps = [p / zs for p in ps]
    pt = [math.exp(x) / zt for x in t_row]
    top = sorted(range(len(ps)), key=lambda v: -ps[v])[: (k or len(ps))]
    a, b = [ps[v] for v in top], [pt[v] for v in top]
    if tail:
        a, b = a + [1 - sum(a)], b + [1 - sum(b)]
    elif renormalize:
        a, b = [x / sum(a) for x in a], [x / sum(b) for x in b]
    return sum(x * (math.log(x) - math.log(y)) for x, y in zip(a, b))


def ref_fkl(s_row, t_row):
    return ref_topk_rkl(t_row, s_row)


def _loop(ref, s, t, **kw):
    return torch.tensor([[ref(s[b, i].tolist(), t[b, i].tolist(), **kw) for i in range(s.shape[1])]
                         for b in range(s.shape[0])], dtype=torch.float64)


def _rand(*shape, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


@pytest.mark.parametrize("kw", [dict(k=3), dict(k=3, renormalize=True),
                                dict(k=3, renormalize=True, tail_bucket=True), dict(k=7)])
def test_topk_matches_naive_loop(kw):
    s, t = _rand(2, 5, 7, seed=1), _rand(2, 5, 7, seed=2)
    got = per_position_topk_rkl(s, t, **kw)
    ref = _loop(ref_topk_rkl, s, t, k=kw["k"], renormalize=kw.get("renormalize", False),
                tail=kw.get("tail_bucket", False))
    torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=1e-5)


def test_full_rkl_and_fkl_match_naive_loop():
    s, t = _rand(2, 5, 7, seed=3), _rand(2, 5, 7, seed=4)
    torch.testing.assert_close(per_position_full_rkl(s, t).double(), _loop(ref_topk_rkl, s, t),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(per_position_fkl(s, t).double(), _loop(ref_fkl, s, t),
                               atol=1e-5, rtol=1e-5)


def test_topk_at_full_vocab_equals_full_rkl_unrenormalised():
    s, t = _rand(3, 4, 11, seed=5), _rand(3, 4, 11, seed=6)
    torch.testing.assert_close(per_position_topk_rkl(s, t, k=11), per_position_full_rkl(s, t))
    # ... and a smaller k gives a different (truncated) value
    assert not torch.allclose(per_position_topk_rkl(s, t, k=4), per_position_full_rkl(s, t))


def test_tail_bucket_requires_renormalize():
    with pytest.raises(ValueError, match="renormalize"):
        per_position_topk_rkl(S3, T3, k=2, tail_bucket=True)


def test_bf16_inputs_are_computed_in_fp32():
    s, t = _rand(2, 3, 50, seed=7).bfloat16(), _rand(2, 3, 50, seed=8).bfloat16()
    out = per_position_full_rkl(s, t)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, per_position_full_rkl(s.float(), t.float()))


# Every name a spec may use, with its value on the 3-token example (top_k=2, jsd_beta=.5):
# a swap in the name table (full_rkl <-> fkl, say) changes the value.
NAME_VALUES = {"fkl": 0.193795, "full_rkl": 0.223804, "jsd": 0.050875, "topk_rkl": 0.304898,
               "topk_rkl_renorm": 0.247591, "topk_rkl_tail": 0.223804}


def test_every_loss_name_gives_its_hand_computed_value():
    assert set(NAME_VALUES) == set(LOSSES.names())
    for name, expected in NAME_VALUES.items():
        assert loss_for(Train(loss=name, top_k=2, jsd_beta=0.5, teacher_temperature=1.0))(S3, T3).item() == \
            pytest.approx(expected, abs=2e-6), name
    with pytest.raises(ValueError, match="unknown loss"):
        Train(loss="kl")


def ref_jsd(s_row, t_row, beta):
    ps = [math.exp(x) for x in s_row]
    pt = [math.exp(x) for x in t_row]
    ps, pt = [p / sum(ps) for p in ps], [p / sum(pt) for p in pt]
    m = [beta * b + (1 - beta) * a for a, b in zip(ps, pt)]
    kl = lambda p, q: sum(x * math.log(x / y) for x, y in zip(p, q))   # noqa: E731
    return beta * kl(pt, m) + (1 - beta) * kl(ps, m)


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_jsd_matches_naive_loop_and_is_bounded(beta):
    s, t = _rand(2, 3, 7, seed=21), _rand(2, 3, 7, seed=22)
    torch.testing.assert_close(per_position_jsd(s, t, beta), _loop(ref_jsd, s, t, beta=beta))
    wild = per_position_jsd(torch.tensor([[50.0, 0, 0]]), torch.tensor([[0, 0, 50.0]]), beta)
    assert 0 < wild.item() <= math.log(2) + 1e-6


def test_forward_kl_pulls_up_a_token_the_student_never_samples_and_reverse_kl_does_not():
    # The first round's failure in one position: the teacher puts .54 on " p", the student
    # 1e-5. Forward KL's gradient on that logit is p_S - p_T ~ -.54; reverse KL's ~ -1e-4.
    p_t = torch.tensor([0.54, 0.46 - 1e-3, 1e-3]).log()
    p_s = torch.tensor([1e-5, 0.5, 0.5 - 1e-5]).log()
    grads = {}
    for name in ("fkl", "full_rkl", "jsd"):
        s = p_s.clone().requires_grad_()
        loss_for(Train(loss=name, jsd_beta=0.5, teacher_temperature=1.0))(s, p_t).backward()
        grads[name] = s.grad[0].item()
    assert grads["fkl"] == pytest.approx(1e-5 - 0.54, abs=1e-4)
    # Any β > 0 weighs the gradient on a logit by the student's own probability of it: the
    # generalised JSD (β = .5) is as blind there as reverse KL.
    assert abs(grads["full_rkl"]) < 1e-3 and abs(grads["jsd"]) < 1e-3


# --------------------------------------------------------------------------- gradients

def test_gradient_reaches_student_not_teacher():
    s = _rand(2, 3, 6, seed=11).requires_grad_()
    t = _rand(2, 3, 6, seed=12).requires_grad_()
    for fn in (per_position_full_rkl, per_position_fkl, lambda a, b: per_position_topk_rkl(a, b, 2),
               lambda a, b: per_position_topk_rkl(a, b, 2, renormalize=True, tail_bucket=True)):
        s.grad = None
        fn(s, t).sum().backward()
        assert s.grad is not None and s.grad.abs().sum() > 0
        assert t.grad is None


def test_rkl_gradient_matches_analytic_form():
    # d KL(π_S||π_T) / d z_S = π_S ⊙ (a − Σ π_S a), a = log π_S − log π_T
    s = S3.clone().requires_grad_()
    per_position_full_rkl(s, T3).sum().backward()
    a = [math.log(x / y) for x, y in zip(P_S, P_T)]
    mean_a = sum(p * x for p, x in zip(P_S, a))
    expected = torch.tensor([[[p * (x - mean_a) for p, x in zip(P_S, a)]]], dtype=torch.float64)
    torch.testing.assert_close(s.grad.double(), expected, atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------- reductions

def test_masked_mean_token_level_and_split_invariant():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    m = torch.tensor([[True, False, True], [False, False, True]])
    assert masked_mean(x, m).item() == pytest.approx((1 + 3 + 6) / 3)  # not mean of row means
    n = int(m.sum())
    halves = masked_mean(x[:1], m[:1], num_positions=n) + masked_mean(x[1:], m[1:], num_positions=n)
    assert halves.item() == pytest.approx(masked_mean(x, m).item())


def test_masked_mean_ignores_nonfinite_unselected_values():
    x = torch.tensor([[1.0, float("inf"), float("nan")]], requires_grad=True)
    m = torch.tensor([[True, False, False]])
    out = masked_mean(x, m)
    out.backward()
    assert out.item() == 1.0
    assert torch.equal(x.grad, torch.tensor([[1.0, 0.0, 0.0]]))


def test_all_masked_gives_exact_zero_and_zero_grads():
    s = _rand(2, 4, 5, seed=13).float().requires_grad_()
    t = _rand(2, 4, 5, seed=14).float()
    mask = torch.zeros(2, 4, dtype=torch.bool)
    loss = masked_mean(per_position_topk_rkl(s, t, 3), mask)
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.isfinite(s.grad).all() and (s.grad == 0).all()


def test_single_position():
    s, t = S3.clone().requires_grad_(), T3
    loss = masked_mean(per_position_full_rkl(s, t), torch.ones(1, 1, dtype=torch.bool))
    assert loss.item() == pytest.approx(0.223804, abs=2e-6)
    loss.backward()
    assert torch.isfinite(s.grad).all()


def test_importance_weight_clipped_and_detached():
    lp = torch.tensor([[math.log(0.5), math.log(0.9), math.log(0.2)]], requires_grad=True)
    old = torch.tensor([[math.log(0.5), math.log(0.3), math.log(0.4)]])
    w = importance_weight(lp, old)
    torch.testing.assert_close(w, torch.tensor([[1.0, 2.0, 0.5]]))  # 1, min(3, 2), .5
    assert w.grad_fn is None and not w.requires_grad
    torch.testing.assert_close(importance_weight(lp, old, clip=10.0), torch.tensor([[1.0, 3.0, 0.5]]))


# --------------------------------------------------------------------------- chunking

CHUNK_FNS = [
    ("topk", lambda a, b: per_position_topk_rkl(a, b, 5)),
    ("topk_renorm_tail", lambda a, b: per_position_topk_rkl(a, b, 5, renormalize=True, tail_bucket=True)),
    ("full_rkl", per_position_full_rkl),
    ("fkl", per_position_fkl),
]


@pytest.mark.parametrize("name, fn", CHUNK_FNS)
@pytest.mark.parametrize("chunk", [1, 4, 1000])
def test_chunked_equals_unchunked_values_and_grads(name, fn, chunk):
    s0, t = _rand(2, 7, 13, seed=15).float(), _rand(2, 7, 13, seed=16).float()
    mask = torch.rand(2, 7, generator=torch.Generator().manual_seed(0)) > 0.3
    s1, s2 = s0.clone().requires_grad_(), s0.clone().requires_grad_()
    ref = fn(s1, t)
    got = chunked_per_position(fn, s2, t, chunk=chunk)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    masked_mean(ref, mask).backward()
    masked_mean(got, mask).backward()
    torch.testing.assert_close(s2.grad, s1.grad, atol=1e-5, rtol=1e-5)


def test_chunked_ce_and_kwargs():
    s, ids = _rand(2, 5, 9, seed=17).float(), torch.randint(0, 9, (2, 5), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(chunked_per_position(per_position_ce, s, ids, chunk=3), per_position_ce(s, ids))
    t = _rand(2, 5, 9, seed=18).float()
    torch.testing.assert_close(chunked_per_position(per_position_topk_rkl, s, t, chunk=2, k=3),
                               per_position_topk_rkl(s, t, 3))


def _hidden_case(seed=20, b=2, length=6, h=8, v=17):
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(b, length, h, generator=g)
    ht = torch.randn(b, length, h, generator=g)
    w = torch.randn(v, h, generator=g)
    mask = torch.rand(b, length, generator=g) > 0.4
    mask[0, 0] = True
    return hs, ht, w, mask


@pytest.mark.parametrize("chunk", [1, 3, 64])
@pytest.mark.parametrize("kw", [dict(k=4), dict(k=4, renormalize=True, tail_bucket=True), dict(k=17)])
def test_chunked_from_hidden_equals_logits_based(chunk, kw):
    hs, ht, w, mask = _hidden_case()
    hs1, w1 = hs.clone().requires_grad_(), w.clone().requires_grad_()
    hs2, w2 = hs.clone().requires_grad_(), w.clone().requires_grad_()
    ht2 = ht.clone().requires_grad_()
    ref = per_position_topk_rkl(hs1 @ w1.T, ht @ w1.T.detach(), **kw)
    got = chunked_topk_rkl_from_hidden(hs2, ht2, w2, mask, chunk=chunk, **kw)
    torch.testing.assert_close(got, torch.where(mask, ref, 0.0), atol=1e-5, rtol=1e-5)
    masked_mean(ref, mask).backward()
    masked_mean(got, mask).backward()
    torch.testing.assert_close(hs2.grad, hs1.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w2.grad, w1.grad, atol=1e-5, rtol=1e-5)
    assert ht2.grad is None                      # the teacher never receives gradient


def test_chunked_from_hidden_frozen_head_and_full_rkl():
    hs, ht, w, mask = _hidden_case(seed=21)
    hs1, hs2 = hs.clone().requires_grad_(), hs.clone().requires_grad_()
    ref = per_position_full_rkl(hs1 @ w.T, ht @ w.T)
    got = chunked_from_hidden(per_position_full_rkl, hs2, ht, w, mask, chunk=2)
    torch.testing.assert_close(got, torch.where(mask, ref, 0.0), atol=1e-5, rtol=1e-5)
    masked_mean(ref, mask).backward()
    masked_mean(got, mask).backward()
    torch.testing.assert_close(hs2.grad, hs1.grad, atol=1e-5, rtol=1e-5)
    assert w.grad is None


def test_chunked_from_hidden_no_positions_is_zero_with_zero_grads():
    hs, ht, w, mask = _hidden_case(seed=22)
    hs, w = hs.requires_grad_(), w.requires_grad_()
    none = torch.zeros_like(mask)
    loss = masked_mean(chunked_topk_rkl_from_hidden(hs, ht, w, none, k=4), none)
    assert loss.item() == 0.0
    loss.backward()
    assert (hs.grad == 0).all() and (w.grad == 0).all()
    s = torch.zeros(0, 5, requires_grad=True)
    out = chunked_per_position(per_position_full_rkl, s, torch.zeros(0, 5))
    assert out.shape == (0,)


@pytest.mark.parametrize("train_head", [False, True])
def test_chunked_from_hidden_weighted_upstream_gradients(train_head):
    # Per-position upstream weights (importance ratios) must scale each row's gradient.
    hs, ht, w, mask = _hidden_case(seed=23)
    weights = torch.rand(mask.shape, generator=torch.Generator().manual_seed(3)) * 2
    hs1, hs2 = hs.clone().requires_grad_(), hs.clone().requires_grad_()
    w1, w2 = w.clone().requires_grad_(train_head), w.clone().requires_grad_(train_head)
    ref = per_position_topk_rkl(hs1 @ w1.T, ht @ w.T, k=5)
    got = chunked_topk_rkl_from_hidden(hs2, ht, w2, mask, k=5, chunk=2)
    masked_mean(ref * weights, mask).backward()
    masked_mean(got * weights, mask).backward()
    torch.testing.assert_close(hs2.grad, hs1.grad, atol=1e-5, rtol=1e-5)
    if train_head:
        torch.testing.assert_close(w2.grad, w1.grad, atol=1e-5, rtol=1e-5)


def test_chunked_from_hidden_without_grad():
    hs, ht, w, mask = _hidden_case(seed=24)
    with torch.no_grad():
        got = chunked_topk_rkl_from_hidden(hs.requires_grad_(), ht, w, mask, k=3, chunk=4)
    assert got.grad_fn is None
    torch.testing.assert_close(got, torch.where(mask, per_position_topk_rkl(hs @ w.T, ht @ w.T, 3), 0.0))


def test_chunked_accepts_response_slices_and_odd_shapes():
    full, t_full = _rand(2, 9, 6, seed=25).float(), _rand(2, 9, 6, seed=26).float()
    s, t = full[:, 2:-1], t_full[:, 2:-1]                 # non-contiguous, like an aligned slice
    assert not s.is_contiguous()
    torch.testing.assert_close(chunked_per_position(per_position_fkl, s, t, chunk=4),
                               per_position_fkl(s, t))
    for shape in [(6,), (5, 6), (2, 3, 4, 6)]:             # one position, flat, extra lead dim
        a, b = _rand(*shape, seed=27).float(), _rand(*shape, seed=28).float()
        torch.testing.assert_close(chunked_per_position(per_position_full_rkl, a, b, chunk=2),
                                   per_position_full_rkl(a, b))
