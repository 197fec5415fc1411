"""Steps 3-4: score the same response ids under the student and the teacher prompts.

Both passes see the identical response token ids; only the prompts differ (the teacher's
carries the hint). Everything is aligned on the response: index ``t`` of every tensor is
the ``t``-th response token. The passes return hidden states, not logits, so memory
never grows as positions x vocabulary; token log-probs are computed in chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Scores:
    student_hidden: torch.Tensor   # (B, L, H), carries grad into the adapter
    teacher_hidden: torch.Tensor   # (B, L, H), no grad
    student_logp: torch.Tensor     # (B, L) log π_S(y_t), detached
    teacher_logp: torch.Tensor     # (B, L) log π_T(y_t)
    teacher_top: torch.Tensor      # (B, L, 3) the teacher's preferred token ids
    response_ids: torch.Tensor     # (B, L), pad where not valid
    valid: torch.Tensor            # (B, L) bool: a real response token
    base_logp: torch.Tensor | None = None   # (B, L) log π_base(y_t) on the student prompt, if asked
    baseline_logp: torch.Tensor | None = None   # (B, L) the teacher's log π(y_t) with a neutral reply, if any

    @property
    def delta(self) -> torch.Tensor:
        """Δ_t = log π_T(y_t) − log π_S(y_t); zero at padding."""
        return (self.teacher_logp - self.student_logp) * self.valid

    @property
    def relevance(self) -> torch.Tensor:
        """What the mask ranks positions by: Δ, or where a log lesson has a contrast teacher,
        Δ'_t = log π_T(y_t) − log π_T'(y_t), the shift the user's reply causes beyond a
        neutral one read in the same note (an unrelated reply: ~0 everywhere)."""
        if self.baseline_logp is None:
            return self.delta
        return (self.teacher_logp - self.baseline_logp) * self.valid

    @property
    def base_delta(self) -> torch.Tensor:
        """log π_base(y_t) − log π_S(y_t): how far the student's choice is from the base's."""
        if self.base_logp is None:
            raise ValueError("these scores were computed without the base pass (score(..., base=True))")
        return (self.base_logp - self.student_logp) * self.valid


@dataclass(frozen=True)
class Packed:
    input_ids: torch.Tensor        # (B, W)
    attention_mask: torch.Tensor   # (B, W)
    position_ids: torch.Tensor     # (B, W)
    predict_at: torch.Tensor       # (B, L) index of the hidden state that predicts y_t
    response_ids: torch.Tensor     # (B, L)
    valid: torch.Tensor            # (B, L)


def pack(prompts: list[list[int]], responses: list[list[int]], pad_id: int,
         side: str = "right") -> Packed:
    """Concatenate prompt ⊕ response per row and pad on ``side``.

    The hidden state at position ``len(prompt) + t - 1`` predicts response token ``t``
    (the off-by-one the field keeps getting wrong); ``predict_at`` records it per row so
    left and right padding give identical scores. Position ids restart at 0 on the first
    real token, so left padding does not shift them.
    """
    B = len(prompts)
    W = max(len(p) + len(r) for p, r in zip(prompts, responses))
    L = max(1, max(len(r) for r in responses))
    ids = torch.full((B, W), pad_id, dtype=torch.long)
    attn = torch.zeros((B, W), dtype=torch.long)
    pos = torch.zeros((B, W), dtype=torch.long)
    predict_at = torch.zeros((B, L), dtype=torch.long)
    resp = torch.full((B, L), pad_id, dtype=torch.long)
    valid = torch.zeros((B, L), dtype=torch.bool)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        n = len(p) + len(r)
        start = 0 if side == "right" else W - n
        ids[i, start:start + n] = torch.tensor(p + r)
        attn[i, start:start + n] = 1
        pos[i, start:start + n] = torch.arange(n)
        predict_at[i, :len(r)] = start + len(p) - 1 + torch.arange(len(r))
        resp[i, :len(r)] = torch.tensor(r)
        valid[i, :len(r)] = True
    return Packed(ids, attn, pos, predict_at, resp, valid)


def response_hidden(backbone, packed: Packed) -> torch.Tensor:
    """Final hidden states at the positions that predict each response token: (B, L, H)."""
    device = next(backbone.parameters()).device
    out = backbone(input_ids=packed.input_ids.to(device),
                   attention_mask=packed.attention_mask.to(device),
                   position_ids=packed.position_ids.to(device), use_cache=False)
    h = out.last_hidden_state
    idx = packed.predict_at.to(device).unsqueeze(-1).expand(-1, -1, h.shape[-1])
    return torch.gather(h, 1, idx)


# Positions per chunk of token_logprobs: its transient memory is about 2 x chunk x V x 4
# bytes (the fp32 logits and their log-softmax), read when called so benchmarks can vary it.
# At a 151,936-token vocabulary 1024 made scoring the step's peak (2,048 positions: 2.2 GiB
# above the model against 1.6 GiB at 256, the same seconds; benchmarks/loss_memory.py --step).
LOGPROB_CHUNK = 256


@torch.no_grad()
def token_logprobs(hidden: torch.Tensor, lm_head_weight: torch.Tensor, ids: torch.Tensor,
                   top: int = 3, chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(ids) and the ``top`` most likely ids, in chunks of positions (fp32 softmax)."""
    chunk = chunk or LOGPROB_CHUNK
    B, L, H = hidden.shape
    flat_h, flat_ids = hidden.reshape(-1, H), ids.reshape(-1).to(hidden.device)
    logps, tops = [], []
    for s in range(0, flat_h.shape[0], chunk):
        logits = (flat_h[s:s + chunk] @ lm_head_weight.T).float()
        lp = torch.log_softmax(logits, dim=-1)
        logps.append(lp.gather(-1, flat_ids[s:s + chunk, None]).squeeze(-1))
        tops.append(lp.topk(top, dim=-1).indices)
    return torch.cat(logps).view(B, L), torch.cat(tops).view(B, L, top)


def score(loaded, teacher, rollouts, pad_side: str = "right", base: bool = False,
          one_base_pass: bool = False) -> Scores:
    """Student pass with grad (adapter on), teacher pass without (``teacher.scoring``);
    ``base``: also the base model (adapter off) on the student prompt, without grad. Log
    lessons with a contrast reply get one more teacher pass (``Scores.relevance``).
    ``one_base_pass``: where the teacher is the base model too, its rows and the base's go
    through one forward of twice the batch (fewer, larger matmuls)."""
    pad = loaded.tokenizer.pad_token_id
    s_pack = pack(rollouts.student_prompt_ids, rollouts.response_ids, pad, pad_side)
    backbone, W = loaded.backbone(), loaded.lm_head_weight
    s_hidden = response_hidden(backbone, s_pack)
    valid = s_pack.valid.to(s_hidden.device)
    s_logp, _ = token_logprobs(s_hidden.detach(), W, s_pack.response_ids)
    b_hidden = None
    if base and one_base_pass and teacher.adapter_off:
        both = pack(rollouts.teacher_prompt_ids + rollouts.student_prompt_ids, rollouts.response_ids * 2,
                    pad, pad_side)
        with torch.no_grad(), loaded.model.disable_adapter():
            t_hidden, b_hidden = response_hidden(backbone, both).chunk(2)
    else:
        with torch.no_grad(), teacher.scoring(loaded.model):
            t_hidden = response_hidden(backbone, pack(rollouts.teacher_prompt_ids, rollouts.response_ids,
                                                      pad, pad_side))
        if base:
            with torch.no_grad(), loaded.model.disable_adapter():
                b_hidden = response_hidden(backbone, s_pack)
    t_logp, t_top = token_logprobs(t_hidden, W, s_pack.response_ids)
    c_logp = None
    if rollouts.baseline_prompt_ids is not None:
        with torch.no_grad(), teacher.scoring(loaded.model):
            c_hidden = response_hidden(backbone, pack(rollouts.baseline_prompt_ids, rollouts.response_ids,
                                                      pad, pad_side))
        c_logp = token_logprobs(c_hidden, W, s_pack.response_ids)[0] * valid
    b_logp = None
    if b_hidden is not None:
        b_logp = token_logprobs(b_hidden, W, s_pack.response_ids)[0] * valid
    return Scores(s_hidden, t_hidden, s_logp * valid, t_logp * valid, t_top,
                  s_pack.response_ids.to(s_hidden.device), valid, b_logp, c_logp)


def aligned(rows: list[list[float]], valid: torch.Tensor) -> torch.Tensor:
    """Per-response-token values (e.g. a sampler's log-probabilities) as a ``valid``-shaped
    (B, L) tensor: index t is the t-th response token, as in every tensor of a step; 0 at padding."""
    out = torch.zeros(valid.shape, dtype=torch.float32, device=valid.device)
    for b, row in enumerate(rows):
        out[b, :len(row)] = torch.tensor(row, dtype=torch.float32, device=valid.device)
    return out
