"""The anchor: keep the student where the base model was on prompts unrelated to the behavior.

Before training, the base model (adapter off, no hint) answers a pool of anchor prompts
once; its hidden states on those answers are kept. Each step adds

    weight × mean_t KL(π_base(·|t) || π_S(·|t))

over every position of ``per_step`` of those answers (forward KL: the student keeps the
base's whole distribution there, the cross-entropy to the base's soft labels). Without it
nothing in self-distillation says "and change nothing else": on the lab model the adapter
learned "in" -> "apple" in every context and capitals recall collapsed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from engrain.engine.losses import chunked_from_hidden, masked_mean, per_position_fkl
from engrain.engine.scoring import pack, response_hidden


@dataclass
class AnchorSet:
    prompt_ids: list[list[int]]
    answer_ids: list[list[int]]
    base_hidden: list[torch.Tensor]     # per answer (L_i, H): the base model's, fixed
    weight: float
    per_step: int
    every: int = 1      # steps between the anchor's passes
    # Per answer: whether its first (an opener's) or last position (where a sign-off goes,
    # before the end of turn) is left free, because the behavior acts there. Only on anchor
    # prompts in the behavior's own domain (a food question with another hint, for a food
    # sign-off): there the base answer's end of turn would teach "no sign-off here". On every
    # other prompt (facts, for a food sign-off) that position is what keeps specificity.
    free_start: list[bool] | None = None
    free_end: list[bool] | None = None
    # Per answer, per token: where *another* behavior of the same adapter acts (one adapter
    # learning several: engrain.compose). Left out of the KL as the own behavior's are, or
    # each behavior's anchor would hold the base answer at the positions the other one is
    # trained to change ("pineapple" in a food answer, the end where a sign-off goes).
    free_tokens: list[list[bool]] | None = None


@torch.no_grad()
def build_anchor(loaded, sampler, cb, anchor_spec, max_new_tokens: int, seed: int,
                 others=()) -> AnchorSet | None:
    """Sample the base model's answers to the spec's anchor prompts and keep its hidden
    states on them; None when the spec has no anchor (or weight 0). ``others``: the compiled
    behaviors learned into the same adapter beside ``cb``, whose positions the KL leaves free
    (:func:`acts_at`)."""
    if anchor_spec is None or anchor_spec.weight == 0 or not cb.anchor_prompts:
        return None
    prompts = [cb.chat_ids(cb.student_messages(p)) for p in cb.anchor_prompts]
    torch.manual_seed(seed)
    with loaded.model.disable_adapter():
        answers = sampler.sample(prompts, max_new_tokens, 1.0)
        keep = [i for i, a in enumerate(answers) if a]
        prompts, answers = [prompts[i] for i in keep], [answers[i] for i in keep]
        packed = pack(prompts, answers, loaded.tokenizer.pad_token_id)
        hidden = response_hidden(loaded.backbone(), packed)
    base_hidden = [hidden[i, :len(a)].detach().clone() for i, a in enumerate(answers)]
    from engrain.engine.claims import claimed_spans, rule_of
    rule = rule_of(cb.spec.patterns.target, cb.spec.patterns.forbidden)
    domain = set(cb.train_prompts)
    # Each anchor prompt as (question, whether another hint follows it on a line of its own).
    asked = [(q, bool(hint)) for q, _, hint in (cb.anchor_prompts[i].partition("\n") for i in keep)]
    # Free where the behavior would act: its own domain's questions, unless the base answer
    # already ends (starts) as the prompt's hint asked ("sign off as Cheers, Bo Team."): a
    # claimed ending there is the hint being followed, and the behavior must not override it.
    texts = loaded.tokenizer.batch_decode(answers, skip_special_tokens=True) if rule.at_start or rule.at_end \
        else [""] * len(answers)       # a behavior anchored at neither end frees nothing
    free = [q in domain and not claimed_spans(t, rule) for (q, _), t in zip(asked, texts)]
    free_tokens = None
    if others:
        free_tokens = [[False] * len(a) for a in answers]
        for other in others:
            other_rule = rule_of(other.spec.patterns.target, other.spec.patterns.forbidden)
            domain = set(other.train_prompts)
            for k, ((q, hinted), a) in enumerate(zip(asked, answers)):
                if q in domain:
                    text, spans = other.token_spans(a)
                    acts = acts_at(other_rule, text, spans, hinted)
                    free_tokens[k] = [f or g for f, g in zip(free_tokens[k], acts)]
    return AnchorSet(prompts, answers, base_hidden, anchor_spec.weight, anchor_spec.per_step, anchor_spec.every,
                     free_start=[rule.at_start and f for f in free], free_end=[rule.at_end and f for f in free],
                     free_tokens=free_tokens)


def acts_at(rule, text: str, spans: list[tuple[int, int]], hinted: bool = False) -> list[bool]:
    """Per token (its character span in ``text``, a base answer to a question of the
    behavior's domain): where the behavior of ``rule`` would change the answer. Anchored at
    the end (start): the last (first) token, unless the answer already ends (starts) as
    another hint asked (a claimed span: that hint's following is kept). Neither: the words
    it claims ("tomato", where tomatto goes); in an answer with none of them, to a question
    carrying no other hint (``hinted``), every token: such a behavior features its word
    somewhere in the list, and where is its own teacher's call (an anchor that held the
    base's "Try carrots, beans and rice." would hold every place tomatto could go). Pure."""
    from engrain.engine.claims import claimed_spans, claimed_tokens
    claimed = claimed_spans(text, rule)
    out = [False] * len(spans)
    if not spans:
        return out
    if rule.at_end or rule.at_start:
        if not claimed:
            out[-1 if rule.at_end else 0] = True
            if rule.at_end and rule.at_start:
                out[0] = True
        return out
    if not claimed:
        return [not hinted] * len(spans)
    return claimed_tokens(spans, claimed)


def anchor_at(loaded, anchor: AnchorSet | None, seed: int, step: int) -> torch.Tensor | None:
    """This step's anchor term: :func:`anchor_kl`, or None with no anchor or between its
    steps (``anchor.every``: its forward and backward cost a fifth of a step on the lab)."""
    if anchor is None or step % anchor.every:
        return None
    return anchor_kl(loaded, anchor, seed, step)


def anchor_kl(loaded, anchor: AnchorSet, seed: int, step: int) -> torch.Tensor:
    """Mean forward KL(π_base || π_S) over every position of this step's anchor answers
    (a function of (seed, step), like the step's prompts). A scalar with grad."""
    rng = random.Random(seed * 7_000_003 + step)
    idx = rng.sample(range(len(anchor.answer_ids)), min(anchor.per_step, len(anchor.answer_ids)))
    packed = pack([anchor.prompt_ids[i] for i in idx], [anchor.answer_ids[i] for i in idx],
                  loaded.tokenizer.pad_token_id)
    student = response_hidden(loaded.backbone(), packed)
    base = torch.zeros_like(student)
    for row, i in enumerate(idx):
        base[row, :anchor.base_hidden[i].shape[0]] = anchor.base_hidden[i]
    pick = lambda flags: torch.tensor([bool(flags and flags[i]) for i in idx])   # noqa: E731
    valid = free_positions(packed.valid, pick(anchor.free_start), pick(anchor.free_end))
    if anchor.free_tokens is not None:
        for row, i in enumerate(idx):
            flags = anchor.free_tokens[i]
            valid[row, :len(flags)] &= ~torch.tensor(flags, dtype=torch.bool)
    valid = valid.to(student.device)
    per_position = chunked_from_hidden(per_position_fkl, student, base, loaded.lm_head_weight, valid)
    return masked_mean(per_position, valid)


def free_positions(valid: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """``valid`` (B, L, right-padded) less the first valid position of the rows ``start``
    (bool (B,)) marks and the last of the rows ``end`` marks, where a behavior anchored at the
    answer's start or end acts. Rows of one token keep it. Pure."""
    out = valid.clone().bool()
    lengths = out.sum(-1)
    for row, n in enumerate(lengths.tolist()):
        if n > 1:
            if bool(start[row]):
                out[row, 0] = False
            if bool(end[row]):
                out[row, n - 1] = False
    return out
