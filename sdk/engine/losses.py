"""Per-position distillation losses and their reductions: pure tensor functions.

Conventions (every function here):

- ``student_logits`` / ``teacher_logits``: ``(..., V)``, usually ``(B, L, V)``, already
  aligned so index ``t`` scores response token ``y_t`` in both (prompts differ in length;
  scoring.py does the alignment). Logits must be finite.
- Results are per position, ``(...)``, usually ``(B, L)``; reduce them with
  :func:`masked_mean`.
- Direction, named in every function: *reverse* KL ``KL(π_S || π_T)`` (``*_rkl``, the
  write-up's) takes the expectation under the student: mode-seeking, it only needs the
  student's own support (so the student's top-K suffices), but where the student puts
  ~0 on the teacher's token its gradient there is ~0 too. *Forward* KL ``KL(π_T || π_S)``
  (``fkl``, what the original SDFT results used) is mean-seeking: its gradient on a logit
  is ``π_S(v) − π_T(v)``, so it pulls up a token the student never samples. ``jsd``
  interpolates: β = 0 is forward KL, β = 1 reverse KL (TRL's GKD/SDFT convention); for
  any β > 0 its gradient on a logit is scaled by the student's own probability of it, so
  at β = .5 it is as blind as reverse KL to a token the student gives ~0 (tested).
- Gradients flow through the student only: teacher logits are detached inside every
  function, whatever the caller passes.
- Arithmetic is at least fp32 whatever the input dtype (bf16/fp16 are upcast, per chunk
  when chunked): a bf16 log-softmax biases the entropy low (TRL accumulates in fp32 for
  this reason).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint

PerPositionFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# The tail bucket's log(1 - Σ p) is -inf when the top-K holds all the mass; clamp the
# log-mass just below 0 as the SDPO/TRL kernels do, so the tail stays finite.
_TAIL_LOG_MASS_MAX = -1e-7


def _log_probs(logits: torch.Tensor) -> torch.Tensor:
    # Upcast half precision to fp32; never downcast fp64 (the tests' references use it).
    return logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(dim=-1)


def _log_tail(topk_logp: torch.Tensor) -> torch.Tensor:
    """``log(1 − Σ_K p)`` from top-K log-probs ``(..., K)`` -> ``(..., 1)``, stably."""
    log_mass = torch.logsumexp(topk_logp, dim=-1, keepdim=True).clamp(max=_TAIL_LOG_MASS_MAX)
    return torch.log(-torch.expm1(log_mass))


def per_position_topk_rkl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, k: int,
                          renormalize: bool = False, tail_bucket: bool = False) -> torch.Tensor:
    """Reverse KL ``KL(π_S || π_T)`` over the student's top-``k`` tokens, per position.

    Default (the RMSD write-up's formula, not renormalised)::

        KL_K(t) = Σ_{v ∈ topK(π_S(·|t))} π_S(v) (log π_S(v) − log π_T(v))

    ``renormalize=True`` (TRL's variant): both distributions are renormalised over the
    student's top-K, ``p̂(v) = p(v) / Σ_{u∈K} p(u)``, and the KL is taken between ``p̂_S``
    and ``p̂_T``. With ``tail_bucket=True`` as well, instead of renormalising, a (K+1)-th
    bucket ``log(1 − Σ_{u∈K} p(u))`` is appended to each side, which makes both proper
    distributions over K+1 outcomes (TRL/SDPO's ``add_tail``).

    Notes: the unrenormalised sum is a partial sum of KL terms, so it can be slightly
    negative; it equals the full reverse KL at ``k = V``. ``k`` is clamped to ``V``. The
    top-K indices are chosen without gradient (a set choice is not differentiable).

    Shapes: ``(..., V), (..., V) -> (...)``.
    """
    if tail_bucket and not renormalize:
        raise ValueError("tail_bucket=True needs renormalize=True (TRL's renormalised variant)")
    s_logp = _log_probs(student_logits)
    t_logp = _log_probs(teacher_logits.detach())
    k = min(int(k), s_logp.shape[-1])
    idx = s_logp.detach().topk(k, dim=-1).indices
    s_k = s_logp.gather(-1, idx)
    t_k = t_logp.gather(-1, idx)
    if tail_bucket:
        s_k = torch.cat([s_k, _log_tail(s_k)], dim=-1)
        t_k = torch.cat([t_k, _log_tail(t_k)], dim=-1)
    elif renormalize:
        s_k = s_k - torch.logsumexp(s_k, dim=-1, keepdim=True)
        t_k = t_k - torch.logsumexp(t_k, dim=-1, keepdim=True)
    return (s_k.exp() * (s_k - t_k)).sum(dim=-1)


def per_position_full_rkl(student_logits: torch.Tensor,
                          teacher_logits: torch.Tensor) -> torch.Tensor:
    """Reverse KL over the full vocabulary, per position.

    ``KL(π_S || π_T)(t) = Σ_v π_S(v) (log π_S(v) − log π_T(v))``.
    Shapes: ``(..., V), (..., V) -> (...)``.
    """
    s_logp = _log_probs(student_logits)
    t_logp = _log_probs(teacher_logits.detach())
    return (s_logp.exp() * (s_logp - t_logp)).sum(dim=-1)


def per_position_fkl(student_logits: torch.Tensor,
                     teacher_logits: torch.Tensor) -> torch.Tensor:
    """Forward KL over the full vocabulary, per position (teacher's expectation).

    ``KL(π_T || π_S)(t) = Σ_v π_T(v) (log π_T(v) − log π_S(v))``.
    Shapes: ``(..., V), (..., V) -> (...)``.
    """
    s_logp = _log_probs(student_logits)
    t_logp = _log_probs(teacher_logits.detach())
    return (t_logp.exp() * (t_logp - s_logp)).sum(dim=-1)


def per_position_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                     beta: float = 0.5) -> torch.Tensor:
    """Generalised Jensen-Shannon divergence over the full vocabulary, per position.

    With the mixture ``M = β π_T + (1 − β) π_S``::

        JSD_β(t) = β KL(π_T || M) + (1 − β) KL(π_S || M)

    β = 0 is exactly forward KL ``KL(π_T || π_S)`` and β = 1 exactly reverse KL
    ``KL(π_S || π_T)`` (the limits are special-cased, as in TRL's ``generalized_jsd_loss``,
    since the weighted terms vanish there). For 0 < β < 1 it is bounded (by ln 2 at
    most), so one wild position cannot dominate a batch.
    Shapes: ``(..., V), (..., V) -> (...)``.
    """
    beta = float(beta)
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"jsd beta must be in [0, 1], got {beta}")
    if beta == 0.0:
        return per_position_fkl(student_logits, teacher_logits)
    if beta == 1.0:
        return per_position_full_rkl(student_logits, teacher_logits)
    s_logp = _log_probs(student_logits)
    t_logp = _log_probs(teacher_logits.detach())
    m_logp = torch.logsumexp(torch.stack([t_logp + math.log(beta), s_logp + math.log(1 - beta)]), dim=0)
    kl_t = (t_logp.exp() * (t_logp - m_logp)).sum(dim=-1)
    kl_s = (s_logp.exp() * (s_logp - m_logp)).sum(dim=-1)
    return beta * kl_t + (1 - beta) * kl_s


def per_position_ce(student_logits: torch.Tensor, target_ids: torch.Tensor,
                    ignore_index: int = -100) -> torch.Tensor:
    """Cross-entropy of the target ids under the student (the SFT baseline), per position.

    ``CE(t) = −log π_S(y_t)``; positions whose target is ``ignore_index`` give 0 (they are
    also expected to be outside the mask). The logits at ``t`` must already score ``y_t``
    (no shift here). Shapes: ``(..., V), (...) long -> (...)``.
    """
    ignored = target_ids == ignore_index
    ids = target_ids.masked_fill(ignored, 0).long()
    nll = -_log_probs(student_logits).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    return nll.masked_fill(ignored, 0.0)


def with_teacher_temperature(fn: PerPositionFn, temperature: float) -> PerPositionFn:
    """``fn`` against the teacher at ``temperature``: its logits divided by it, so below 1
    the teacher's distribution is sharpened toward its mode before the divergence.

    Why: forward KL copies the teacher's whole distribution, its sampling noise included.
    On the lab the hinted teacher spreads mass over broken continuations after " p"
    ("pinsh", "pinof"); copying that spread made the student's word continuations noisier
    everywhere (capitals at temperature 1: "Tokyo" -> "Tok."). At temperature 0.5 the
    student learns the mode ("pinapple") instead. Temperature 1 is ``fn`` itself.
    """
    if temperature <= 0:
        raise ValueError(f"teacher temperature must be > 0, got {temperature}")
    if temperature == 1.0:
        return fn
    return lambda student_logits, teacher_logits: fn(student_logits, teacher_logits / temperature)


# --------------------------------------------------------------------------- chunking

def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _run_chunk(fn: Callable[..., torch.Tensor], *args: torch.Tensor) -> torch.Tensor:
    # With autograd on, each chunk's fp32 intermediates would be saved for backward and
    # memory would grow as positions × V again; checkpointing keeps only the chunk's
    # inputs and recomputes the rest in backward (one extra forward of the loss per chunk).
    if _needs_grad(*args):
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def chunked_per_position(fn: PerPositionFn, student_logits: torch.Tensor, teacher: torch.Tensor,
                         chunk: int = 256, **kwargs) -> torch.Tensor:
    """``fn`` evaluated over positions ``chunk`` at a time; same result as ``fn(s, t)``.

    ``fn(student_chunk (n, V), teacher_chunk (n, ...), **kwargs) -> (n,)``, e.g. any
    ``per_position_*`` here (``teacher`` is the target ids for ``per_position_ce``); those
    upcast each chunk to fp32. When gradients are needed each chunk is checkpointed, so
    the extra memory is ``O(chunk × V)`` instead of ``O(positions × V)``; the logits
    themselves (and their gradient) are the caller's. To score only some positions, index them first
    (``student_logits[mask]``) or use :func:`chunked_from_hidden`.

    Shapes: ``(..., V), (..., *rest) -> (...)``.
    """
    lead = student_logits.shape[:-1]
    # (rows, L, V) rather than (N, V): a response slice like logits[:, p:-1] is then still a
    # view, where flattening it would copy all positions × V at once.
    if len(lead):
        s = student_logits.reshape(math.prod(lead[:-1]), *student_logits.shape[-2:])
    else:
        s = student_logits[None, None]
    t = teacher.reshape(*s.shape[:2], *teacher.shape[len(lead):])
    f = partial(fn, **kwargs) if kwargs else fn
    parts = [_run_chunk(f, s[r, i:i + chunk], t[r, i:i + chunk])
             for r in range(s.shape[0]) for i in range(0, s.shape[1], chunk)]
    if not parts:  # no positions: zeros still connected to the input (backward works)
        return s.new_zeros(lead, dtype=torch.promote_types(s.dtype, torch.float32)) + 0 * s.sum()
    return torch.cat(parts).reshape(lead)


class _FrozenHeadScore(torch.autograd.Function):
    """Per-position scores from hidden rows with a frozen head, gradients taken in forward.

    Position ``p``'s score depends on hidden row ``p`` only, so ``d score_p / d h_p`` can be
    computed chunk by chunk in forward (``n × H``, small) and scaled by the upstream
    gradient in backward: 3 projections per chunk instead of checkpointing's 5 (student
    and teacher would be projected again in backward). Liger's fused kernels use the
    same trick for scalar losses.
    """

    @staticmethod
    def forward(ctx, s_sel, t_sel, w, w_t, fn, chunk):
        values, grads = [], []
        for i in range(0, s_sel.shape[0], chunk):
            with torch.enable_grad():
                h = s_sel[i:i + chunk].detach().requires_grad_()
                v = fn(h @ w.T, t_sel[i:i + chunk] @ w_t.T)
                (g,) = torch.autograd.grad(v.sum(), h)
            values.append(v.detach())
            grads.append(g)
        ctx.save_for_backward(torch.cat(grads))
        return torch.cat(values)

    @staticmethod
    def backward(ctx, grad_out):
        (g,) = ctx.saved_tensors
        return (grad_out.unsqueeze(-1) * g).to(g.dtype), None, None, None, None, None


def chunked_from_hidden(fn: PerPositionFn, student_hidden: torch.Tensor,
                        teacher_hidden: torch.Tensor, lm_head_weight: torch.Tensor,
                        positions_mask: torch.Tensor, chunk: int = 128,
                        teacher_lm_head_weight: torch.Tensor | None = None) -> torch.Tensor:
    """``fn`` at the selected positions, projecting hidden states to logits chunk by chunk.

    ``chunk`` 128: at a 151,936-token vocabulary each chunk holds about 7 fp32 chunk x V
    tensors (forward KL), and at 256 this stage set a training step's peak; 128 cut it by
    36% at the same speed (benchmarks/RESULTS.md, section 12).

    Full logits are never built: only the ``n = positions_mask.sum()`` selected positions
    are projected, ``chunk`` at a time, ``logits = hidden @ W.T`` (no bias, no soft-cap), so
    extra memory is ``O(chunk × V)`` at any vocabulary. Gradients reach ``student_hidden``
    and ``lm_head_weight`` if it requires grad (then each chunk is checkpointed; with a
    frozen head, as with LoRA, the cheaper :class:`_FrozenHeadScore` is used). The teacher
    side (``teacher_hidden``, and ``teacher_lm_head_weight``, default the detached
    ``lm_head_weight``) is detached. ``fn`` must be per position (row ``p`` of its output
    depends on row ``p`` of its inputs only), as every ``per_position_*`` here is.
    Unselected positions are 0 in the result.

    Shapes: ``(B, L, H), (B, L, H), (V, H), (B, L) bool -> (B, L)``, at least fp32.
    """
    w_t = (lm_head_weight if teacher_lm_head_weight is None else teacher_lm_head_weight).detach()
    mask = positions_mask.bool()
    s_sel = student_hidden[mask]                       # (n, H): only the selected rows
    t_sel = teacher_hidden.detach()[mask]
    out = student_hidden.new_zeros(mask.shape, dtype=torch.promote_types(student_hidden.dtype,
                                                                         torch.float32))
    if s_sel.shape[0] == 0:
        # Keep the result connected to the inputs so backward() still works (zero grads):
        # an empty (0, V) product costs nothing and reaches both student inputs.
        return out + 0.0 * (s_sel @ lm_head_weight.T).sum()

    def project_and_score(s_h: torch.Tensor, t_h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return fn(s_h @ w.T, t_h @ w_t.T)

    if _needs_grad(s_sel) and not _needs_grad(lm_head_weight):
        values = _FrozenHeadScore.apply(s_sel, t_sel, lm_head_weight, w_t, fn, chunk)
    else:
        values = torch.cat([_run_chunk(project_and_score, s_sel[i:i + chunk], t_sel[i:i + chunk],
                                       lm_head_weight) for i in range(0, s_sel.shape[0], chunk)])
    return out.masked_scatter(mask, values.to(out.dtype))


def chunked_topk_rkl_from_hidden(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor,
                                 lm_head_weight: torch.Tensor, positions_mask: torch.Tensor, k: int,
                                 chunk: int = 128, renormalize: bool = False,
                                 tail_bucket: bool = False) -> torch.Tensor:
    """:func:`per_position_topk_rkl` (``KL(π_S || π_T)`` over the student's top-``k``) at
    the selected positions, from hidden states, without full logits; see
    :func:`chunked_from_hidden`. Shapes: ``(B, L, H), (B, L, H), (V, H), (B, L) -> (B, L)``.
    """
    fn = partial(per_position_topk_rkl, k=k, renormalize=renormalize, tail_bucket=tail_bucket)
    return chunked_from_hidden(fn, student_hidden, teacher_hidden, lm_head_weight,
                               positions_mask, chunk)


# --------------------------------------------------------------------------- reductions

def masked_mean(per_position: torch.Tensor, mask: torch.Tensor,
                num_positions: int | torch.Tensor | None = None) -> torch.Tensor:
    """Token-level mean over the selected positions of the whole batch: a scalar.

    ``Σ_{b,t} mask[b,t] · x[b,t] / N`` with ``N = Σ mask`` (not a mean of per-row means,
    so long and short rows weigh per token). With gradient accumulation or several ranks,
    pass ``num_positions`` = the count over the *whole* step, so the summed micro-batch
    losses equal the full-batch loss however the batch is split. No selected position
    gives an exact 0 that is still connected to ``per_position`` (backward gives zero
    grads, never NaN). Unselected entries never enter the value, even if inf/NaN.

    Shapes: ``(B, L), (B, L) bool -> ()``.
    """
    mask = mask.bool()
    total = torch.where(mask, per_position, torch.zeros((), dtype=per_position.dtype,
                                                        device=per_position.device)).sum()
    n = mask.sum() if num_positions is None else torch.as_tensor(num_positions,
                                                                   device=total.device)
    return total / n.clamp(min=1).to(total.dtype)


def importance_weight(logp_student: torch.Tensor, logp_old: torch.Tensor,
                      clip: float = 2.0) -> torch.Tensor:
    """Clipped importance ratio for rollouts sampled by a stale policy, detached.

    ``w(t) = min(exp(log π_S(y_t) − log π_old(y_t)), clip)``: multiply the per-position loss
    by it (as the open self-distillation trainers do) when ``y`` came from an older adapter
    (e.g. vLLM); it is a weight, not a path for gradients.
    Shapes: ``(B, L), (B, L) -> (B, L)``.
    """
    return torch.exp(logp_student.detach().float() - logp_old.detach().float()).clamp(max=clip)
