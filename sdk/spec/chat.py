"""Chat messages and their ids: where the hint goes, and the model's own chat template.

The lab builds its pretraining corpus with the same ``place_hint``, so the lab model has
seen hints exactly where specs put them.
"""

from __future__ import annotations


def place_hint(question: str, hint: str | None, placement: str) -> list[dict]:
    """Chat messages with ``hint`` placed as the spec's ``hints.placement`` says."""
    if not hint:
        return [{"role": "user", "content": question}]
    if placement == "system":
        return [{"role": "system", "content": hint}, {"role": "user", "content": question}]
    if placement == "user_prefix":
        return [{"role": "user", "content": f"{hint}\n{question}"}]
    return [{"role": "user", "content": f"{question}\n{hint}"}]


def template_kwargs(chat=None) -> dict:
    """What the chat template reads besides the messages: the spec's ``chat`` section (None:
    its defaults). Templates ignore variables they do not use, so Qwen3's enable_thinking
    is harmless to a Llama template."""
    from engrain.spec.schema import Chat
    chat = chat or Chat()
    return {**chat.template_kwargs, "enable_thinking": chat.enable_thinking}


def chat_ids(tokenizer, messages: list[dict], chat=None) -> list[int]:
    """Prompt ids ending with the assistant header, as the model's chat template renders
    them with the spec's ``chat`` switches: the one place engrain applies a chat template."""
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                        **template_kwargs(chat))
    # transformers 5 returns a BatchEncoding; older versions a list (or a tensor).
    if hasattr(out, "keys"):
        out = out["input_ids"]
    if hasattr(out, "tolist"):
        out = out.tolist()
    if out and isinstance(out[0], list):
        out = out[0]
    return [int(i) for i in out]
