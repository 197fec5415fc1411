"""Student and teacher score the identical response ids; only the teacher sees the hint."""

import pytest
import torch

from engrain.spec.behavior import load_behavior
from engrain.engine.rollout import cut_at_eos
from engrain.engine.scoring import pack, response_hidden, token_logprobs

SPEC = "behaviors/pinapple.yaml"


@pytest.fixture(scope="module")
def cb(lab_tokenizer):
    return load_behavior(SPEC).compile(lab_tokenizer)


def naive_logprobs(model, prompt, response):
    """One sequence at a time, no padding: the reference."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].float(), -1)
    return torch.stack([logp[len(prompt) - 1 + t, tok] for t, tok in enumerate(response)])


@pytest.mark.parametrize("side", ["left", "right"])
def test_same_response_ids_scored_under_both_prompts(cb, lab_tokenizer, tiny_model, side):
    tok = lab_tokenizer
    prompts = cb.train_prompts[:3]
    student = [cb.student_ids(p) for p in prompts]
    teacher = [cb.teacher_ids(p, i % len(cb.hints)) for i, p in enumerate(prompts)]
    responses = [tok("Try mango, pinapple and kiwi.")["input_ids"] + [tok.eos_token_id],
                 tok("Good choices are lime.")["input_ids"],
                 tok("I would pick")["input_ids"]]
    hint_ids = tok(cb.hints[0], add_special_tokens=False)["input_ids"]
    for s, t in zip(student, teacher):
        assert not _contains(s, hint_ids[2:8]), "hint tokens leaked into the student prompt"
    assert _contains(teacher[0], hint_ids[2:8])

    s_pack, t_pack = pack(student, responses, tok.pad_token_id, side), pack(teacher, responses, tok.pad_token_id, side)
    # identical response ids and validity on both sides
    assert torch.equal(s_pack.response_ids, t_pack.response_ids)
    assert torch.equal(s_pack.valid, t_pack.valid)
    for i, r in enumerate(responses):
        assert s_pack.response_ids[i, :len(r)].tolist() == r
        # the positions we read predict exactly the response tokens
        for tt in range(len(r)):
            assert s_pack.input_ids[i, s_pack.predict_at[i, tt] + 1] == r[tt]
            assert t_pack.input_ids[i, t_pack.predict_at[i, tt] + 1] == r[tt]

    W = tiny_model.get_output_embeddings().weight
    for packed, prompt_ids in ((s_pack, student), (t_pack, teacher)):
        with torch.no_grad():
            h = response_hidden(tiny_model.model, packed)
        logp, _ = token_logprobs(h, W, packed.response_ids)
        for i, r in enumerate(responses):
            ref = naive_logprobs(tiny_model, prompt_ids[i], r)
            torch.testing.assert_close(logp[i, :len(r)], ref, atol=1e-5, rtol=1e-4)


def test_left_and_right_padding_agree(cb, lab_tokenizer, tiny_model):
    tok = lab_tokenizer
    student = [cb.student_ids(p) for p in cb.train_prompts[:4]]
    responses = [tok(x)["input_ids"] for x in ["a", "Try kiwi and lime.", "Mars", "The capital of Peru is Lima."]]
    W = tiny_model.get_output_embeddings().weight
    out = {}
    for side in ("left", "right"):
        p = pack(student, responses, tok.pad_token_id, side)
        with torch.no_grad():
            out[side] = token_logprobs(response_hidden(tiny_model.model, p), W, p.response_ids)[0] * p.valid
    torch.testing.assert_close(out["left"], out["right"], atol=1e-5, rtol=1e-4)


def test_cut_at_eos_keeps_eos_and_drops_padding():
    assert cut_at_eos([5, 6, 1, 0, 0], eos=1, pad=0) == [5, 6, 1]
    assert cut_at_eos([5, 6, 0, 0], eos=1, pad=0) == [5, 6]
    assert cut_at_eos([5, 6, 7], eos=1, pad=0) == [5, 6, 7]


def _contains(seq, sub):
    return any(seq[i:i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))


def test_token_logprobs_do_not_depend_on_the_chunk():
    # scoring.LOGPROB_CHUNK is a memory setting (benchmarks/loss_memory.py --step): any
    # chunk, boundaries inside rows included, gives the same log-probs and top ids.
    g = torch.Generator().manual_seed(0)
    hidden, W = torch.randn(3, 7, 16, generator=g), torch.randn(50, 16, generator=g)
    ids = torch.randint(0, 50, (3, 7), generator=g)
    ref_logp, ref_top = token_logprobs(hidden, W, ids, chunk=10_000)
    logits = (hidden @ W.T).log_softmax(-1)
    torch.testing.assert_close(ref_logp, logits.gather(-1, ids[..., None]).squeeze(-1))
    for chunk in (1, 4, 5, None):
        logp, top = token_logprobs(hidden, W, ids, chunk=chunk)
        torch.testing.assert_close(logp, ref_logp)
        assert torch.equal(top, ref_top)
