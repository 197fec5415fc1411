"""Build the judge a spec's ``judge:`` section names."""

from __future__ import annotations

from pathlib import Path

from engrain.judge.rule import DeltaJudge, FirstJudge, RuleJudge
from engrain.judge.types import Judge


def make_judge(model: str | None, *, api_base: str | None = None, api_key_env: str | None = None,
               timeout_s: float = 30, max_retries: int = 2, max_concurrency: int = 8,
               cache_path: Path | None = None, self_generate=None) -> Judge:
    """None -> RuleJudge; "delta" -> DeltaJudge; "first" -> FirstJudge; "self" ->
    SelfJudge(self_generate); else LiteLLMJudge(model).

    ``self_generate(messages) -> str`` samples from the base model with the adapter off;
    the engine supplies it, and "self" without it is a configuration error.
    """
    if model is None:
        return RuleJudge()
    if model == "delta":
        return DeltaJudge()
    if model == "first":
        return FirstJudge()
    if model == "self":
        if self_generate is None:
            raise ValueError('judge model "self" needs self_generate (the engine passes the base model)')
        from engrain.judge.self_judge import SelfJudge
        return SelfJudge(self_generate, cache_path=cache_path, timeout_s=timeout_s)
    from engrain.judge.llm import LiteLLMJudge
    return LiteLLMJudge(model, api_base=api_base, api_key_env=api_key_env, timeout_s=timeout_s,
                        max_retries=max_retries, max_concurrency=max_concurrency,
                        cache_path=cache_path)
