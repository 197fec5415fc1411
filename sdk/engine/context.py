"""What a training step works with, built once per run: the ``StepContext``.

The step never looks a part up or checks a mode string: the spec's choices (method,
teacher, loss, sampler, judge) are turned into objects here, by the registered parts'
factories, each of which takes the train section.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from engrain.engine.anchor import AnchorSet
from engrain.engine.losses import PerPositionFn, with_teacher_temperature
from engrain.engine.mask import Mask
from engrain.engine.models import STUDENT, LoadedModel
from engrain.engine.parallel import Ranks
from engrain.engine.reuse import RolloutReuse
from engrain.engine.rollout import Rollouts, Sampler
from engrain.engine.scoring import Scores
from engrain.engine.teacher import TeacherPolicy
from engrain.engine.update import Updater
from engrain.judge import Judge, make_judge
from engrain.registry import LOSSES, METHODS, SAMPLERS, TEACHERS
from engrain.spec.behavior import CompiledBehavior
from engrain.spec.chat import chat_ids
from engrain.spec.schema import BehaviorSpec, Train


@dataclass
class StepContext:
    """Everything a step needs. ``mask`` is None for a method that picks no positions (SFT);
    ``anchor`` is None until the base answers are sampled, or when the spec turns it off."""
    train: Train                # the spec's train section, overrides applied
    behavior: CompiledBehavior
    loaded: LoadedModel         # the one base model: student (adapter on) and teacher (off)
    sampler: Sampler
    teacher: TeacherPolicy
    judge: Judge | None
    mask: Callable[[Rollouts, Scores], Mask] | None
    loss_fn: PerPositionFn
    updater: Updater
    anchor: AnchorSet | None = None
    needs_base: bool = False    # the mask's guard reads the base model's scores
    earlier: list[CompiledBehavior] = field(default_factory=list)   # behaviors merged in (--on), to keep
    reuse: RolloutReuse = field(default_factory=RolloutReuse)       # the rollouts a later step re-scores
    ranks: Ranks = field(default_factory=Ranks)     # this process among a data-parallel fit's

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    def adapter_changed(self) -> None:
        """Tell the sampler the adapter's weights changed outside an update (a checkpoint
        or the best adapter loaded), so it never samples a stale version."""
        if hasattr(self.sampler, "adapter_changed"):
            self.sampler.adapter_changed()


def loss_for(train: Train) -> PerPositionFn:
    """The spec's divergence against the teacher at ``train.teacher_temperature``."""
    return with_teacher_temperature(LOSSES.get(train.loss).make(train), train.teacher_temperature)


def teacher_for(train: Train) -> TeacherPolicy:
    return TEACHERS.get(train.teacher.kind).make(train)


def build_context(spec: BehaviorSpec, cb: CompiledBehavior, loaded: LoadedModel,
                  earlier: list[CompiledBehavior] = (), exclude=None, updater: Updater | None = None,
                  ranks: Ranks | None = None) -> StepContext:
    """The step's context for one behavior. ``exclude``: positions its mask may never pick
    (another behavior's claims, when several share one adapter: composition.py); ``updater``:
    one shared with other contexts (default: its own, on the train section's schedule)."""
    train, ranks = spec.train, ranks or Ranks()
    sampler = SAMPLERS.get(train.sampler).make(loaded.model, loaded.tokenizer)
    method = METHODS.get(train.method)
    judge = None
    if method.mask is not None:
        j = spec.judge
        judge = make_judge(j.model, api_base=j.api_base, api_key_env=j.api_key_env, timeout_s=j.timeout_s,
                           max_retries=j.max_retries, max_concurrency=j.max_concurrency,
                           self_generate=self_generate(loaded, sampler, spec.chat) if j.model == "self" else None)
    return StepContext(
        train=train, behavior=cb, loaded=loaded, sampler=sampler, teacher=teacher_for(train), judge=judge,
        mask=(method.mask(cb, loaded.tokenizer, judge, train, list(earlier),
                          **({} if exclude is None else {"exclude": exclude})) if method.mask else None),
        loss_fn=loss_for(train),
        updater=updater or Updater(loaded.model, STUDENT, train.lr, train.steps, train.warmup, train.min_lr_ratio,
                                   on_update=getattr(sampler, "adapter_changed", None), sync=ranks.sum_grads),
        needs_base=method.needs_base(train), earlier=list(earlier), reuse=RolloutReuse(train.steps_per_rollout),
        ranks=ranks)


def self_generate(loaded: LoadedModel, sampler: Sampler, chat=None,
                  max_new_tokens: int = 128) -> Callable[[list[dict]], str]:
    """The ``self`` judge's model: the base (adapter off) answering greedily."""

    def generate(messages: list[dict]) -> str:
        ids = chat_ids(loaded.tokenizer, messages, chat)
        with torch.no_grad(), loaded.model.disable_adapter():
            out = sampler.sample([ids], max_new_tokens, 0.0)
        return loaded.tokenizer.decode(out[0], skip_special_tokens=True)
    return generate
