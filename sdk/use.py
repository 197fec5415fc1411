"""``engrain.load`` / ``engrain.generate``: talk to an adapted model (``cl generate``, ``cl chat``).

``load`` puts the asked adapters on one copy of their base model: each as a named peft
adapter, all active at once (peft sums their deltas). An adapter trained ``cl fit B --on A``
was trained on the base with A merged in, so it is loaded that way: the user asks for B and
gets its lineage. Adapters of different behaviors trained apart are refused unless
``ungated=True``: benchmarks/RESULTS.md section 11 measured that applied together each
keeps under half of its behavior, and no gate has checked the pair.

``generate`` builds each prompt exactly as training showed the student its prompts
(``spec.chat``: no hint, the model's own chat template) and samples with the engine's own
sampler, so what the user sees is what the gate measured.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

from engrain.engine.models import ModelError, load_base, load_tokenizer, merge_adapters
from engrain.engine.rollout import HFSampler
from engrain.errors import EngrainError
from engrain.rundir import Adapter, describe
from engrain.spec.chat import chat_ids, place_hint

# benchmarks/RESULTS.md section 11, quoted by the refusal.
COMPOSED = "pinapple 0.96 -> 0.42, sign-off 0.745 -> 0.225"


class UseError(EngrainError):
    """Adapters that cannot be loaded as asked; the message says what to do instead."""


@dataclass
class Loaded:
    model: object               # a peft.PeftModel with every adapter active, or the bare base
    tokenizer: object
    source: str                 # the base model as named: "lab", a folder, a hub id
    adapters: tuple[Adapter, ...]
    merged: tuple[Path, ...] = ()   # lineage adapters merged into the base weights

    @property
    def behaviors(self) -> tuple[str, ...]:
        return tuple(a.behavior for a in self.adapters)


def load(model: str | None = None, *, adapters=(), behaviors=(), store=None, device: str | None = None,
         ungated: bool = False, out_dir: str | Path = "adapters") -> Loaded:
    """The base model with the asked adapters on it, and its tokenizer.

    ``adapters``: adapter folders or run ids (any unique prefix, under ``out_dir``);
    ``behaviors``: behavior names, each meaning its current adapter in the store's library.
    ``model``: the base; defaults to the adapters' own (their run's ``spec.model``), and an
    adapter trained on another base is refused. ``ungated``: apply adapters of different
    behaviors together even though no gate checked them together.
    """
    asked = [describe(ref, out_dir) for ref in adapters] + [_current(name, store) for name in behaviors]
    source = _base(model, asked)
    # An adapter already in another's lineage comes with it: don't apply it twice.
    lineage = _ordered(p for a in asked for p in a.lineage)
    top = _unique([a for a in asked if a.path not in lineage])
    _refuse_ungated(top, ungated)
    base, device = load_base(source, device=device)
    base = merge_adapters(base, lineage).to(device)
    net = _attach(base, top).eval()
    return Loaded(net, load_tokenizer(source), source, tuple(top), tuple(lineage))


def _current(behavior: str, store) -> Adapter:
    """The behavior's current adapter in the library (``cl adapters``)."""
    from engrain.library import current
    return describe(current(store, behavior).path)


def _base(model: str | None, asked: list[Adapter]) -> str:
    """The base model: the one asked for, else the adapters' own; never a mismatch."""
    known = {a.model for a in asked if a.model is not None}
    if model is None:
        if len(known) > 1:
            raise UseError(f"these adapters were trained on different base models ({', '.join(sorted(known))}); "
                           "load the adapters of one base at a time")
        if not known and asked:
            raise UseError(f"{asked[0].path} has no run.json to say its base model; pass model=... (--model)")
        return known.pop() if known else "lab"
    wrong = [a for a in asked if a.model is not None and a.model != model]
    if wrong:
        raise UseError(f"{wrong[0].path} was trained on model {wrong[0].model!r}, not {model!r}: a LoRA adapter "
                       "only fits the base it was trained on; drop --model (it defaults to the adapter's base)")
    return model


def _refuse_ungated(top: list[Adapter], ungated: bool) -> None:
    names = sorted({a.behavior for a in top})
    if len(names) > 1 and not ungated:
        raise UseError(
            f"{' and '.join(names)} were trained apart and no gate checked them together; applied together "
            f"each keeps under half of its behavior (benchmarks/RESULTS.md section 11: {COMPOSED}). "
            f"Train one on the other (`cl fit <{names[-1]} spec> --on <{names[0]} run>`), or pass "
            "ungated=True (`--ungated`) to apply them anyway")


def _attach(base, top: list[Adapter]):
    """Each adapter as a named peft adapter on the one base, all active."""
    if not top:
        return base
    from peft import PeftModel
    names = [_name(a, i) for i, a in enumerate(top)]
    try:
        net = PeftModel.from_pretrained(base, str(top[0].path), adapter_name=names[0])
        for a, name in zip(top[1:], names[1:]):
            net.load_adapter(str(a.path), adapter_name=name)
    except (OSError, ValueError) as e:
        raise ModelError(f"could not load an adapter: {e}") from e
    # PeftModel.set_adapter takes one name; the LoRA layer's own takes a list: all active.
    net.base_model.set_adapter(names)
    return net


def _name(a: Adapter, i: int) -> str:
    return f"{a.behavior}-{i}".replace(".", "_")


def _ordered(paths) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p not in out:
            out.append(p)
    return out


def _unique(adapters: list[Adapter]) -> list[Adapter]:
    seen: set[Path] = set()
    return [a for a in adapters if not (a.path in seen or seen.add(a.path))]


# --- generating ---------------------------------------------------------------------

def prompt_ids(tokenizer, prompt: str | list[dict]) -> list[int]:
    """A question as training showed it to the student (no hint), or a chat's messages."""
    messages = place_hint(prompt, None, "user_suffix") if isinstance(prompt, str) else prompt
    return chat_ids(tokenizer, messages)


def generate(loaded: Loaded, prompts, *, greedy: bool = False, temperature: float = 1.0,
             max_new_tokens: int = 128, seed: int = 0, base: bool = False) -> list[str]:
    """One answer per prompt (a question, or a list of chat messages), sampled at
    ``temperature`` (the gate's figures are at 1.0) or ``greedy``; ``base=True``: with the
    adapters switched off (the lineage merged into the base stays)."""
    import torch
    if isinstance(prompts, str):
        raise TypeError("generate takes a list of prompts; wrap one prompt in a list")
    torch.manual_seed(seed)
    ids = [prompt_ids(loaded.tokenizer, p) for p in prompts]
    off = loaded.model.disable_adapter() if base and loaded.adapters else contextlib.nullcontext()
    with off:
        out = HFSampler(loaded.model, loaded.tokenizer).sample(ids, max_new_tokens, 0.0 if greedy else temperature)
    return [t.strip() for t in loaded.tokenizer.batch_decode(out, skip_special_tokens=True)]


def context_length(loaded: Loaded) -> int:
    """The most tokens the model reads at once (its config's, else the tokenizer's)."""
    config = getattr(loaded.model, "config", None)
    n = getattr(config, "max_position_embeddings", None)
    return int(n or min(getattr(loaded.tokenizer, "model_max_length", 2048), 1 << 20))


def trim_history(loaded: Loaded, messages: list[dict], max_new_tokens: int) -> list[dict]:
    """The chat's latest turns that fit the context with room for the answer: the oldest
    exchanges go first, the last user message always stays."""
    limit = context_length(loaded) - max_new_tokens
    while len(messages) > 1 and len(prompt_ids(loaded.tokenizer, messages)) > limit:
        messages = messages[2:] if len(messages) > 2 else messages[1:]
    return messages


def read_prompts(path: str | Path) -> list[str]:
    """A .jsonl file of {"prompt": ...} objects, or a text file with one prompt a line."""
    path = Path(path)
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix != ".jsonl":
        return lines
    prompts = []
    for n, line in enumerate(lines, 1):
        try:
            prompts.append(json.loads(line)["prompt"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UseError(f'{path}:{n}: expected a JSON object with a "prompt" key') from None
    return prompts
