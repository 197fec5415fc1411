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


def chat_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Prompt ids ending with the assistant header, as the model's chat template renders them."""
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    # transformers 5 returns a BatchEncoding; older versions a list (or a tensor).
    if hasattr(out, "keys"):
        out = out["input_ids"]
    if hasattr(out, "tolist"):
        out = out.tolist()
    if out and isinstance(out[0], list):
        out = out[0]
    return [int(i) for i in out]
