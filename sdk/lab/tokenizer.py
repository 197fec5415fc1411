"""The lab's byte-level BPE tokenizer and chat template, saved as a Hugging Face tokenizer.

The lab model goes through the same ``AutoTokenizer`` / ``apply_chat_template`` code
path as a user's real model, so nothing in the engine is lab-specific.
"""

from __future__ import annotations

from collections.abc import Iterable

SPECIALS = ["<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def render_prompt(messages: list[dict]) -> str:
    """The template above in plain Python, for fast corpus encoding (a test keeps them equal)."""
    body = "".join(f"<|{m['role']}|>\n{m['content']}<|end|>\n" for m in messages)
    return body + "<|assistant|>\n"


SCHEMES = ("prefix", "spaced")


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024, scheme: str = "prefix"):
    """Train the BPE on ``texts``; returns a ``transformers.PreTrainedTokenizerFast``.

    ``prefix``: GPT-2's pieces, a word's leading space inside its first piece (the committed
    model's). ``spaced``: every space a token of its own, so a word is the same pieces
    wherever it stands ("moteco" in a hint's quotes and " moteco" in the answer): copying a
    word from the context is then plain repetition, at about 1.36x the tokens.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if scheme not in SCHEMES:
        raise ValueError(f"tokenizer scheme {scheme!r}: choose one of {', '.join(SCHEMES)}")
    tok = Tokenizer(models.BPE())
    # Digits one by one: arithmetic stays learnable for a tiny model.
    split = [pre_tokenizers.Split(Regex(r"\s"), "isolated")] if scheme == "spaced" else []
    tok.pre_tokenizer = pre_tokenizers.Sequence(split + [
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>",
                                   eos_token="<|end|>", bos_token=None)
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast
