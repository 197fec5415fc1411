"""Step 2: sample responses and keep their exact token ids.

``Sampler`` is the backend interface: anything that turns prompt ids into sampled
response ids. ``HFSampler`` uses transformers' ``generate`` on the trainer's own weights.
A backend whose policy can lag the trainer's (a vLLM engine holding an older adapter)
also implements ``sample_with_logprobs``: its own log-probability of each sampled token
lets the step weight each position by the clipped importance ratio π_S / π_sampler.
Backends are registered by name (``registry.SAMPLERS``) and chosen by ``train.sampler``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Rollouts:
    """A batch of on-policy samples. Response ids are exactly what was sampled: no
    re-tokenisation of decoded text, no padding, the end-of-turn token kept if sampled."""
    prompts: list[str]
    hint_index: list[int]
    student_prompt_ids: list[list[int]]
    teacher_prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    texts: list[str]
    sampler_logprobs: list[list[float]] | None = None   # the sampler's log π of each token, if it lags
    baseline_prompt_ids: list[list[int]] | None = None  # a log lesson's teacher with a neutral reply


@dataclass(frozen=True)
class Share:
    """The rows of a training step's whole batch that one sampler call holds (one rank's
    share of a data-parallel step; one process holds every row). Each row is then sampled
    with the draws it gets in the whole batch, so N processes sample what one would."""
    rows: tuple[int, ...]
    of: int


class Sampler(Protocol):
    def sample(self, prompt_ids: list[list[int]], max_new_tokens: int,
               temperature: float, share: Share | None = None) -> list[list[int]]: ...


class LaggingSampler(Sampler, Protocol):
    def sample_with_logprobs(self, prompt_ids: list[list[int]], max_new_tokens: int, temperature: float,
                             share: Share | None = None) -> tuple[list[list[int]], list[list[float]]]: ...


def left_pad(seqs: list[list[int]], pad_id: int):
    """Left-padded ids and attention mask: generation appends on the right."""
    import torch
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s)
        attn[i, width - len(s):] = 1
    return ids, attn


class SharedDraws:
    """Ancestral sampling as ``torch.multinomial`` does it for one sample (argmax of p / q,
    q ~ Exp(1) drawn for the whole [batch, vocab]), with q drawn for the step's whole batch
    and these rows' lines of it taken. A logits processor for greedy ``generate``: its
    argmax is then the sample, the very one ``do_sample`` draws for the whole batch."""

    def __init__(self, temperature: float, rows: list[int], of: int):
        self.temperature, self.rows, self.of = temperature, rows, of

    def __call__(self, input_ids, scores):
        import torch
        probs = torch.softmax(scores / self.temperature, dim=-1)
        q = torch.empty((self.of, scores.shape[-1]), dtype=probs.dtype, device=probs.device).exponential_(1)
        return probs / q[self.rows]


class HFSampler:
    """Pure ancestral sampling with ``generate``: top_k=0 and top_p=1 so the samples
    follow π_S exactly (what on-policy distillation assumes)."""

    def __init__(self, model, tokenizer, batch_size: int = 64):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    def sample(self, prompt_ids, max_new_tokens, temperature, share: Share | None = None):
        """``share``: a training step's rows. Its batch is cut into generate calls of
        ``batch_size`` rows as the whole batch would be; a call after the first starts from
        a seed of its own (its draws cannot depend on how long the call before it ran, which
        another rank may not know)."""
        import torch
        was_training = self.model.training
        self.model.eval()
        try:
            if share is None or temperature <= 0:
                return [row for s in range(0, len(prompt_ids), self.batch_size)
                        for row in self._generate(prompt_ids[s:s + self.batch_size], max_new_tokens, temperature)]
            out, seed = {}, torch.initial_seed()
            for c, start in enumerate(range(0, share.of, self.batch_size)):
                if c:
                    torch.manual_seed(seed * 8191 + c)
                size = min(self.batch_size, share.of - start)
                mine = [k for k, r in enumerate(share.rows) if start <= r < start + size]
                if mine:
                    draws = SharedDraws(temperature, [share.rows[k] - start for k in mine], size)
                    rows = self._generate([prompt_ids[k] for k in mine], max_new_tokens, temperature, draws)
                    out.update(zip(mine, rows))
            return [out[k] for k in range(len(prompt_ids))]
        finally:
            self.model.train(was_training)

    def _generate(self, prompt_ids, max_new_tokens, temperature, draws: SharedDraws | None = None):
        import torch
        from transformers import LogitsProcessorList
        eos, pad = stop_ids(self.model, self.tokenizer), self.tokenizer.pad_token_id
        device = next(self.model.parameters()).device
        if draws is not None:       # greedy over p / q: the sample, from the whole batch's draws
            how = dict(do_sample=False, logits_processor=LogitsProcessorList([draws]))
        else:
            how = dict(do_sample=temperature > 0, temperature=temperature if temperature > 0 else None,
                       top_k=0, top_p=1.0)
        ids, attn = left_pad(prompt_ids, pad)
        with torch.no_grad():
            gen = self.model.generate(input_ids=ids.to(device), attention_mask=attn.to(device),
                                      max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos, **how)
        return [cut_at_eos(row, eos, pad) for row in gen[:, ids.shape[1]:].tolist()]


def stop_ids(model, tokenizer) -> list[int]:
    """Every id that ends a turn: the model's ``generation_config.eos_token_id`` (a list for
    most chat models: Llama 3 ends turns with <|eot_id|> while its tokenizer's eos is
    <|end_of_text|>; Qwen3 lists <|im_end|> and <|endoftext|>) and the tokenizer's eos."""
    config = getattr(model, "generation_config", None)
    if config is None and hasattr(model, "get_base_model"):
        config = getattr(model.get_base_model(), "generation_config", None)
    declared = getattr(config, "eos_token_id", None)
    declared = [] if declared is None else [declared] if isinstance(declared, int) else list(declared)
    own = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    return list(dict.fromkeys(int(i) for i in declared + own))


def cut_at_eos(row: list[int], eos: int | list[int], pad: int) -> list[int]:
    """Keep tokens up to and including the first end-of-turn (any of ``eos``); drop the
    padding after it."""
    stops = {eos} if isinstance(eos, int) else set(eos)
    end = next((k for k, t in enumerate(row) if t in stops), None)
    if end is not None:
        return row[:end + 1]
    while row and row[-1] == pad and pad not in stops:
        row = row[:-1]
    return row


def rollout(sampler: Sampler, behavior, tokenizer, prompts: list[str], hint_index: list[int],
            max_new_tokens: int, temperature: float, from_teacher: bool = False,
            share: Share | None = None) -> Rollouts:
    """Sample from the student's prompts (never the hint) and pair each with its teacher
    prompt. ``from_teacher``: sample from the teacher prompts instead (the SFT baseline).
    Lessons from a log (teacher_context.conversations) are not sampled: their response is
    the answer the log holds. ``share``: which rows of the step's batch these prompts are."""
    student = [behavior.student_ids(p) for p in prompts]
    teacher = [behavior.teacher_ids(p, h) for p, h in zip(prompts, hint_index)]
    source, logprobs = teacher if from_teacher else student, None
    if behavior.context.lessons and not from_teacher:
        # Lessons from a log: the answer trained on is the one the log holds (capped like a sample).
        responses = [behavior.logged_answer_ids(p)[:max_new_tokens] for p in prompts]
    elif hasattr(sampler, "sample_with_logprobs") and not from_teacher:
        responses, logprobs = sampler.sample_with_logprobs(source, max_new_tokens, temperature, share)
    else:
        responses = sampler.sample(source, max_new_tokens, temperature, share)
    texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
    baseline = ([behavior.baseline_ids(p) for p in prompts]
                if behavior.context.lessons and behavior.context.contrast else None)
    return Rollouts(list(prompts), list(hint_index), student, teacher, responses, texts, logprobs, baseline)
