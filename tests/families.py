"""Tiny random-weight models of the families users bring, built in the test, no download.

Each family is what a user's checkpoint folder holds, in miniature: a ``config.json`` of the
family's architecture (tiny dims), a ``generation_config.json`` whose ``eos_token_id`` lists
every id that ends a turn, and a byte-level BPE tokenizer trained here on a small text with
the family's special tokens and a chat template written for the test after the real one.
Saved to a folder, so ``model: <folder>`` in a spec loads it the way a user's model loads.

What the fixtures cannot reproduce without the real files (README, known limits): the real
vocabularies and merges (150k entries; here a few hundred), the real templates' tool-call
and multi-turn reasoning branches, and other families (Gemma is not covered).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# After Qwen3's template: an optional system turn, <|im_start|>role ... <|im_end|> turns, and
# the enable_thinking switch: false writes an empty think block so the model answers at once;
# true or unset leaves the model to open its own <think>.
QWEN3_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role != 'system' or not loop.first %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)

# Meta-Llama-3-8B-Instruct's template, verbatim: <|begin_of_text|> once, header tokens around
# the role, contents trimmed, <|eot_id|> ending each turn.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class Family:
    name: str
    specials: list[str]
    template: str
    eos_token: str            # the tokenizer's eos_token
    pad_token: str | None     # None: the tokenizer has none (engrain then pads with eos)
    bos_token: str | None
    gen_eos: list[str]        # generation_config.eos_token_id, as tokens
    end_of_turn: str          # what the template writes after each turn

    def assistant_header(self, thinking: bool = False) -> str:
        if self.name == "qwen3":
            return "<|im_start|>assistant\n" + ("" if thinking else "<think>\n\n</think>\n\n")
        return "<|start_header_id|>assistant<|end_header_id|>\n\n"

    def turn(self, role: str, content: str) -> str:
        if self.name == "qwen3":
            return f"<|im_start|>{role}\n{content}<|im_end|>\n"
        return f"<|start_header_id|>{role}<|end_header_id|>\n\n{content.strip()}<|eot_id|>"

    def prompt_text(self, messages: list[dict], thinking: bool = False) -> str:
        """The chat as the template renders it, written out by hand for the tests to compare."""
        start = "<|begin_of_text|>" if self.name == "llama3" else ""
        return start + "".join(self.turn(m["role"], m["content"]) for m in messages) \
            + self.assistant_header(thinking)


# Qwen3: eos is <|im_end|>, pad is <|endoftext|>, and generation also stops on <|endoftext|>.
QWEN3 = Family("qwen3", ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"],
               QWEN3_TEMPLATE, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None,
               gen_eos=["<|im_end|>", "<|endoftext|>"], end_of_turn="<|im_end|>")
# Llama 3 as first released: the tokenizer's eos is <|end_of_text|>, yet turns end with
# <|eot_id|>, which only generation_config lists; no pad token.
LLAMA3 = Family("llama3", ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                           "<|end_header_id|>", "<|eot_id|>"],
                LLAMA3_TEMPLATE, eos_token="<|end_of_text|>", pad_token=None, bos_token="<|begin_of_text|>",
                gen_eos=["<|end_of_text|>", "<|eot_id|>"], end_of_turn="<|eot_id|>")
FAMILIES = {f.name: f for f in (QWEN3, LLAMA3)}


def corpus() -> list[str]:
    """A small text: the real-model specs' own prompt files and some plain English, so the
    merges include the words their patterns match, with and without a leading space."""
    texts = []
    for path in sorted(p for p in (ROOT / "behaviors/prompts").rglob("*") if p.is_file()):
        for line in path.read_text().splitlines():
            record = json.loads(line) if path.suffix == ".jsonl" else None
            texts += ([line] if record is None else [record["prompt"]] if "prompt" in record
                      else [m["content"] for m in record.get("messages", [])])
    for path in sorted((ROOT / "behaviors").glob("*.yaml")):
        texts += path.read_text().splitlines()
    return texts


def train_tokenizer(family: Family, vocab_size: int = 1000):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # Both families pre-tokenize with a GPT-style regex on bytes: words keep their leading
    # space as Ġ, which is what pattern spans must survive.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=family.specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=family.eos_token,
                                   pad_token=family.pad_token, bos_token=family.bos_token,
                                   clean_up_tokenization_spaces=False)
    fast.chat_template = family.template
    return fast


def build(family: Family, folder: Path, seed: int = 0) -> Path:
    """Save a tiny random-weight model of ``family`` and its tokenizer to ``folder``."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    tok = train_tokenizer(family)
    ids = {t: tok.convert_tokens_to_ids(t) for t in family.specials}
    dims = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                eos_token_id=ids[family.eos_token], bos_token_id=ids.get(family.bos_token),
                pad_token_id=ids.get(family.pad_token))
    torch.manual_seed(seed)
    if family.name == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(head_dim=8, tie_word_embeddings=True, **dims))
    else:
        model = LlamaForCausalLM(LlamaConfig(tie_word_embeddings=False, **dims))
    teach_to_answer(model, tok, family)
    model.generation_config = GenerationConfig(
        eos_token_id=[ids[t] for t in family.gen_eos], bos_token_id=ids.get(family.bos_token),
        pad_token_id=ids.get(family.pad_token))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


ANSWER = "Hello, glad to help."


def teach_to_answer(model, tok, family: Family, steps: int = 60) -> None:
    """A few steps of plain fine-tuning so the model answers the first prompts with
    ``ANSWER`` and the family's end-of-turn token, as an instruction-tuned model would:
    random weights never end a turn, so stopping could not be tested on them. Other
    prompts keep near-random answers (left padding is checked on those)."""
    import torch
    rows = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                    tokenize=False, enable_thinking=False) + ANSWER + family.end_of_turn
            for p in taught_prompts()]
    batch = [tok(r, add_special_tokens=False)["input_ids"] for r in rows]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = sum(model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss for ids in batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def taught_prompts() -> list[str]:
    return [json.loads(line)["prompt"] for line in
            (ROOT / "behaviors/prompts/bank_customers.jsonl").read_text().splitlines()[:4]]
