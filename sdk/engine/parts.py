"""The core's parts: the methods a spec's ``train.method`` names, the teacher policies
its ``train.teacher.kind`` names, the losses its ``train.loss`` names and the samplers its
``train.sampler`` names. Each imports its implementation (torch) only when made, so
validating a spec stays instant. A plugin adds its own the same way (``engrain.registry``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable


def _losses():
    return importlib.import_module("engrain.engine.losses")


@dataclass(frozen=True)
class Loss:
    """A per-position divergence as ``registry.LOSSES`` holds it: what it is (its
    direction), and ``make(top_k, jsd_beta)`` -> ``(student_logits, teacher_logits) -> (...)``."""
    description: str
    make: Callable


def _register_losses() -> None:
    from functools import partial

    from engrain.registry import LOSSES
    table = {
        "fkl": ("forward KL(π_T || π_S), full vocabulary: pulls up the teacher's tokens (default)",
                lambda k, b: _losses().per_position_fkl),
        "jsd": ("generalised JSD, full vocabulary; train.jsd_beta: 0 = forward KL, 1 = reverse KL",
                lambda k, b: partial(_losses().per_position_jsd, beta=b)),
        "topk_rkl": ("reverse KL(π_S || π_T) over the student's top-K, not renormalised (the write-up's)",
                     lambda k, b: partial(_losses().per_position_topk_rkl, k=k)),
        "topk_rkl_renorm": ("reverse KL over the student's top-K, both sides renormalised (TRL's)",
                            lambda k, b: partial(_losses().per_position_topk_rkl, k=k, renormalize=True)),
        "topk_rkl_tail": ("reverse KL over the student's top-K plus a tail bucket (TRL/SDPO add_tail)",
                          lambda k, b: partial(_losses().per_position_topk_rkl, k=k, renormalize=True,
                                               tail_bucket=True)),
        "full_rkl": ("reverse KL(π_S || π_T), full vocabulary", lambda k, b: _losses().per_position_full_rkl),
    }
    for name, (description, make) in table.items():
        LOSSES.register(name, Loss(description, make))


@dataclass(frozen=True)
class Method:
    """A training method as ``registry.METHODS`` holds it: its step function
    ``(run, step) -> StepResult``; ``mask(cb, tokenizer, judge, train)``, which builds the
    ``(rollouts, scores) -> Mask`` the step trains on (None: the step chooses no positions);
    and whether that mask needs the base model's scores (``needs_base(train)``)."""
    description: str
    step: Callable
    mask: Callable | None = None
    needs_base: Callable = lambda train: False


def _register_methods() -> None:
    from functools import partial

    from engrain.registry import METHODS
    step = lambda name: lambda run, i: getattr(importlib.import_module("engrain.engine.step"), name)(run, i)  # noqa: E731
    relevance = lambda: importlib.import_module("engrain.engine.mask")  # noqa: E731
    METHODS.register("rmsd", Method(
        "relevance-masked self-distillation: the judge's positions among the pre-filter's, and the guard's",
        step("distill_step"),
        lambda cb, tok, judge, t: partial(relevance().rmsd_mask, cb, tok, judge, t.prefilter_t, t.judge_s,
                                          t.guard_ratio),
        lambda t: t.guard_ratio > 0))
    METHODS.register("opsd", Method("on-policy self-distillation at every response position",
                                    step("distill_step"), lambda cb, tok, judge, t: relevance().opsd_mask))
    METHODS.register("sft", Method("fine-tuning on the hinted teacher's own samples (a baseline)",
                                   step("sft_step")))


def _register_teachers() -> None:
    from engrain.registry import TEACHERS
    teacher = lambda: importlib.import_module("engrain.engine.teacher")  # noqa: E731
    TEACHERS.register("fixed", lambda **_: teacher().FixedTeacher())
    TEACHERS.register("continuation", lambda refresh_after=None, **_: teacher().ContinuationTeacher(refresh_after))
    TEACHERS.register("ema", lambda ema_decay=0.99, **_: teacher().EMATeacher(ema_decay))


def _hf_sampler(model, tokenizer, batch_size: int = 64):
    from engrain.engine.rollout import HFSampler
    return HFSampler(model, tokenizer, batch_size)


def _vllm_sampler(model, tokenizer, batch_size: int = 64):
    from engrain.engine.vllm_sampler import VLLMSampler   # imports vllm; an ImportError says how to install it
    return VLLMSampler(model, tokenizer, batch_size)


def _register_samplers() -> None:
    from engrain.registry import SAMPLERS
    SAMPLERS.register("hf", _hf_sampler)
    SAMPLERS.register("vllm", _vllm_sampler)


_register_methods()
_register_teachers()
_register_losses()
_register_samplers()
