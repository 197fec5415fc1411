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


class Sampler(Protocol):
    def sample(self, prompt_ids: list[list[int]], max_new_tokens: int,
               temperature: float) -> list[list[int]]: ...


class LaggingSampler(Sampler, Protocol):
    def sample_with_logprobs(self, prompt_ids: list[list[int]], max_new_tokens: int,
                             temperature: float) -> tuple[list[list[int]], list[list[float]]]: ...


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


class HFSampler:
    """Pure ancestral sampling with ``generate``: top_k=0 and top_p=1 so the samples
    follow π_S exactly (what on-policy distillation assumes)."""

    def __init__(self, model, tokenizer, batch_size: int = 64):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    def sample(self, prompt_ids, max_new_tokens, temperature):
        import torch
        out: list[list[int]] = []
        eos, pad = stop_ids(self.model, self.tokenizer), self.tokenizer.pad_token_id
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            for s in range(0, len(prompt_ids), self.batch_size):
                ids, attn = left_pad(prompt_ids[s:s + self.batch_size], pad)
                gen = self.model.generate(
                    input_ids=ids.to(device), attention_mask=attn.to(device),
                    do_sample=temperature > 0, temperature=temperature if temperature > 0 else None,
                    top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                    pad_token_id=pad, eos_token_id=eos)
                for row in gen[:, ids.shape[1]:].tolist():
                    out.append(cut_at_eos(row, eos, pad))
        self.model.train(was_training)
        return out


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
            max_new_tokens: int, temperature: float, from_teacher: bool = False) -> Rollouts:
    """Sample from the student's prompts (never the hint) and pair each with its teacher
    prompt. ``from_teacher``: sample from the teacher prompts instead (the SFT baseline).
    Lessons from a log (teacher_context.conversations) are not sampled: their response is
    the answer the log holds."""
    student = [behavior.student_ids(p) for p in prompts]
    teacher = [behavior.teacher_ids(p, h) for p, h in zip(prompts, hint_index)]
    source, logprobs = teacher if from_teacher else student, None
    if behavior.context.lessons and not from_teacher:
        # Lessons from a log: the answer trained on is the one the log holds (capped like a sample).
        responses = [behavior.logged_answer_ids(p)[:max_new_tokens] for p in prompts]
    elif hasattr(sampler, "sample_with_logprobs") and not from_teacher:
        responses, logprobs = sampler.sample_with_logprobs(source, max_new_tokens, temperature)
    else:
        responses = sampler.sample(source, max_new_tokens, temperature)
    texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
    baseline = ([behavior.baseline_ids(p) for p in prompts]
                if behavior.context.lessons and behavior.context.contrast else None)
    return Rollouts(list(prompts), list(hint_index), student, teacher, responses, texts, logprobs, baseline)
