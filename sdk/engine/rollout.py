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
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
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


def cut_at_eos(row: list[int], eos: int, pad: int) -> list[int]:
    """Keep tokens up to and including the first end-of-turn; drop the padding after it."""
    if eos in row:
        return row[:row.index(eos) + 1]
    while row and row[-1] == pad and pad != eos:
        row = row[:-1]
    return row


def rollout(sampler: Sampler, behavior, tokenizer, prompts: list[str], hint_index: list[int],
            max_new_tokens: int, temperature: float, from_teacher: bool = False) -> Rollouts:
    """Sample from the student's prompts (never the hint) and pair each with its teacher
    prompt. ``from_teacher``: sample from the teacher prompts instead (the SFT baseline)."""
    student = [behavior.student_ids(p) for p in prompts]
    teacher = [behavior.teacher_ids(p, h) for p, h in zip(prompts, hint_index)]
    source, logprobs = teacher if from_teacher else student, None
    if hasattr(sampler, "sample_with_logprobs") and not from_teacher:
        responses, logprobs = sampler.sample_with_logprobs(source, max_new_tokens, temperature)
    else:
        responses = sampler.sample(source, max_new_tokens, temperature)
    texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
    return Rollouts(list(prompts), list(hint_index), student, teacher, responses, texts, logprobs)
