"""The ``self`` judge: the base model (adapter off) judges its own student's rollouts.

It goes through litellm like any other judge (same prompt, parser, validation, cache,
fallbacks): a litellm custom provider ``engrain-self`` runs a local ``generate``
callable instead of an HTTP call.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable

from engrain.judge.llm import LiteLLMJudge, _litellm

PROVIDER = "engrain-self"

Generate = Callable[[list[dict[str, str]]], str]

_lock = threading.Lock()
_handler: Any = None  # one provider object per process; generators keyed by model name


def register(name: str, generate: Generate) -> str:
    """Route litellm model ``engrain-self/<name>`` to ``generate``; returns that model string.

    ``custom_provider_map`` is process-global, so one handler serves every self judge
    and picks the callable by model name (registering a name again replaces it).
    """
    global _handler
    litellm = _litellm()
    with _lock:
        if _handler is None:
            _handler = _make_handler(litellm)
        _handler.generators[name] = generate
        others = [p for p in litellm.custom_provider_map if p.get("provider") != PROVIDER]
        litellm.custom_provider_map = others + [{"provider": PROVIDER, "custom_handler": _handler}]
    return f"{PROVIDER}/{name}"


def _make_handler(litellm: Any) -> Any:
    class SelfProvider(litellm.CustomLLM):
        def __init__(self) -> None:
            super().__init__()
            self.generators: dict[str, Generate] = {}

        def completion(self, model: str, messages: list, *args: Any, **kwargs: Any) -> Any:
            name = model.split("/", 1)[1] if model.startswith(PROVIDER + "/") else model
            text = self.generators[name](messages)
            response = kwargs.get("model_response") or litellm.ModelResponse()
            response.choices[0].message.content = text
            response.model = f"{PROVIDER}/{name}"
            return response

    return SelfProvider()


class SelfJudge(LiteLLMJudge):
    """A LiteLLMJudge whose model is ``engrain-self/<name>``: ``generate(messages) -> str``.

    ``name`` should identify the base model (it is part of the cache key, so two base
    models must not share one). ``max_concurrency`` defaults to 1: a local model is one
    device, and ``generate`` need not be thread-safe. Timeouts are not enforced on a
    local call (litellm only passes them on).
    """

    def __init__(self, generate: Generate, *, name: str = "base", cache_path: Path | None = None,
                 max_concurrency: int = 1, timeout_s: float = 300.0):
        super().__init__(register(name, generate), api_base=None, api_key_env=None,
                         timeout_s=timeout_s, max_retries=0, max_concurrency=max_concurrency,
                         cache_path=cache_path, structured=False)
