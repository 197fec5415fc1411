"""A behavior spec compiled against a tokenizer: prompts, chat ids, pattern masks, graders.

Compiling needs only a tokenizer with a chat template, never the model's weights, so
``cl compile`` and the tests run in a second. The hint is placed by the same function
that built the lab's pretraining corpus (``engrain.spec.chat.place_hint``), and every
id sequence goes through the tokenizer's own ``apply_chat_template``.
"""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from engrain.registry import PROMPT_SETS
from engrain.spec.chat import chat_ids
from engrain.spec.contexts import FILE_FIX, TeacherContext, file_problem, file_readers
from engrain.spec.files import PromptFileError, read_prompts_file, resolve_prompts_file, squash
from engrain.spec.load import DICT_SPEC, check_parts, load_spec, spec_error_at, spec_from_dict, with_overrides
from engrain.spec.schema import BehaviorSpec
from engrain.spec.suites import SuiteSource, spec_suites

BUILTIN_TRAIN_N = 400
BUILTIN_EVAL_N = 200
VAL_FRACTION = 0.1      # of a prompts file, held out for validation (files of 10 prompts or more)


@dataclass(frozen=True)
class Splits:
    """Prompts by use. Training sees ``train`` (and the anchor pool); checkpoint selection
    sees ``val``; the gate scores ``eval``. No prompt is in two of them (``check_disjoint``)."""
    train: list[str]
    val: list[str]
    eval: list[str]


@dataclass(frozen=True)
class Behavior:
    """A validated spec and the file it came from (prompt files are relative to it)."""
    spec: BehaviorSpec
    path: Path

    @property
    def name(self) -> str:
        return self.spec.name

    def with_overrides(self, overrides: dict) -> Behavior:
        """The same behavior with command-line overrides (method, steps, seed, sampler, qlora,
        model, judge); raises SpecError if a part they choose finds its settings wanting."""
        behavior = Behavior(with_overrides(self.spec, overrides), self.path)
        check_parts(behavior.path, behavior.spec)
        return behavior

    def compile(self, tokenizer) -> CompiledBehavior:
        spec = self.spec
        prompts, probes = self.prompt_splits(), self.probe_splits()
        forbidden_on_probes = (spec.probes.forbidden if spec.probes and spec.probes.forbidden
                               else spec.patterns.target + spec.patterns.forbidden)
        flags = re.IGNORECASE if spec.patterns.ignore_case else 0
        compile_all = lambda patterns: [compile_pattern(p, flags, spec.patterns.whole_word) for p in patterns]
        return CompiledBehavior(
            spec=spec, tokenizer=tokenizer, train_prompts=prompts.train, val_prompts=prompts.val,
            eval_prompts=prompts.eval, probe_prompts=probes.eval, val_probe_prompts=probes.val,
            anchor_prompts=self.anchor_prompts(), regression=spec_suites(spec, self.path),
            context=self.teacher_context(),
            target=compile_all(spec.patterns.target), forbidden=compile_all(spec.patterns.forbidden),
            probe_forbidden=compile_all(forbidden_on_probes))

    def from_logs(self, log: str | Path) -> Behavior:
        """The same behavior taught from a log of users' conversations (``cl fit --from-logs``):
        its prompts and hints give way to the log's lessons; its patterns, suites, anchor and
        recipe stay. A bad log raises SpecError naming its file and line."""
        data = self.spec.model_dump(mode="json", exclude_none=True)
        conversations = (data.get("teacher_context") or {}).get("conversations") or {}
        data.pop("prompts", None)
        data.pop("hints", None)
        data["teacher_context"] = {"conversations": {**conversations, "file": str(Path(log).resolve())}}
        behavior = Behavior(spec_from_dict(data, self.path.parent), self.path)
        behavior.check_disjoint()
        return behavior

    def teacher_context(self) -> TeacherContext:
        """What the teacher reads for each prompt, from the spec's hints and files."""
        spec, tc = self.spec, self.spec.teacher_context
        hints = spec.hint_section
        ctx = dict(placement=hints.placement if hints else "user_suffix",
                   hints=list(hints.phrasings) if hints else [])
        files = file_readers(tc)
        if "demonstrations" in files:
            ctx.update(demos=self._read_file(*files["demonstrations"]), demo_k=tc.demonstrations.k)
        if "documents" in files:
            ctx.update(chunks=self._read_file(*files["documents"]), chunk_k=tc.documents.k)
        if "conversations" in files:
            lessons, skipped = self.lessons()
            ctx.update(lessons={x.key: x for x in lessons}, skipped=skipped, hindsight=tc.conversations.hindsight,
                       contrast=tc.conversations.contrast or "")
        return TeacherContext(**ctx)

    def lessons(self):
        """The log's lessons and how many assistant turns it skipped (teacher_context.conversations)."""
        return self._lessons

    @cached_property
    def _lessons(self):
        # Read once per Behavior: the splits, the compile and the disjointness check all ask.
        return self._read_file(*file_readers(self.spec.teacher_context)["conversations"])

    def _read_file(self, loc: tuple, file: str, reader):
        try:
            return reader(resolve_prompts_file(self.path, file))
        except PromptFileError as e:
            raise spec_error_at(self.path, loc, file_problem(file, e), FILE_FIX) from None

    def prompt_splits(self) -> Splits:
        prompts = self.spec.prompts
        if prompts is None:         # teacher_context.conversations: the lessons, split by conversation
            lessons, _ = self.lessons()
            c = self.spec.teacher_context.conversations
            by_line = _split([x.key.split("#")[0] for x in lessons], self.spec.train.seed, c.eval_fraction)
            side = {line: name for name in ("train", "val", "eval") for line in getattr(by_line, name)}
            pick = lambda which: [x.key for x in lessons if side[x.key.split("#")[0]] == which]  # noqa: E731
            return Splits(pick("train"), pick("val"), pick("eval"))
        if prompts.builtin is not None:
            return _builtin_splits(prompts.builtin, BUILTIN_TRAIN_N)
        return _split(self._read(prompts), self.spec.train.seed, prompts.eval_fraction)

    def probe_splits(self) -> Splits:
        probes = self.spec.probes
        if probes is None:
            return Splits([], [], [])
        if probes.builtin is not None:
            return _builtin_splits(probes.builtin, 0)
        items = self._read(probes)
        # Probes are never trained on: a quarter for validation once there are enough.
        n_val = len(items) // 4 if len(items) >= 8 else 0
        return Splits([], items[:n_val], items[n_val:])

    def anchor_prompts(self) -> list[str]:
        anchor = self.spec.anchor
        if anchor is None or anchor.weight == 0:
            return []
        if anchor.builtin is not None:
            return PROMPT_SETS.get(anchor.builtin)(anchor.pool_size, "train")
        return self._read(anchor)

    def check_disjoint(self) -> None:
        """Training never sees a prompt that validation or the gate scores; raises SpecError."""
        prompts, probes = self.prompt_splits(), self.probe_splits()
        suites = spec_suites(self.spec, self.path)
        scored = {"behavior eval prompts": prompts.eval, "specificity probes": probes.eval + probes.val,
                  "validation prompts": prompts.val,
                  **{f"regression suite {name}": source.prompts() for name, source in suites.items()}}
        trained = {("prompts",): prompts.train, ("anchor",): self.anchor_prompts()}
        for loc, items in trained.items():
            for what, gated in scored.items():
                shared = sorted(set(items) & set(gated))
                if shared:
                    raise spec_error_at(self.path, loc, (
                        f"{loc[0]} shares {len(shared)} prompt(s) with the {what}, e.g. {shared[0]!r}: "
                        "the gate would score what training held in place"),
                        f"remove those prompts from {loc[0]} (or from the {what})")

    def _read(self, source) -> list[str]:
        if source.inline is not None:
            return list(source.inline)
        return read_prompts_file(resolve_prompts_file(self.path, source.file))


def _builtin_splits(name: str, n_train: int) -> Splits:
    prompts = PROMPT_SETS.get(name)
    return Splits(prompts(n_train, "train") if n_train else [],
                  prompts(BUILTIN_EVAL_N, "val"), prompts(BUILTIN_EVAL_N, "eval"))


def _split(items: list[str], seed: int, eval_fraction: float) -> Splits:
    """A seeded split by distinct prompt (a duplicate line never lands on both sides).
    Both train and eval are non-empty; val is empty below 10 distinct prompts."""
    distinct = list(dict.fromkeys(items))
    order = list(range(len(distinct)))
    random.Random(seed).shuffle(order)
    n_eval = min(len(distinct) - 1, max(1, round(len(distinct) * eval_fraction)))
    n_val = round(len(distinct) * VAL_FRACTION) if len(distinct) >= 10 else 0
    side = {i: "eval" if k < n_eval else "val" if k < n_eval + n_val else "train" for k, i in enumerate(order)}
    pick = lambda which: [p for i, p in enumerate(distinct) if side[i] == which]
    return Splits(pick("train"), pick("val"), pick("eval"))


def compile_pattern(pattern: str, flags: int = 0, whole_word: bool = True) -> re.Pattern:
    """A spec pattern as a regex; ``whole_word``: where the match begins (ends) with a word
    character, the character before (after) it must not be one. The lookarounds are
    conditional, so a pattern that starts with punctuation (``\\.\\s*$``) still matches."""
    if whole_word:
        pattern = rf"(?:(?<!\w)|(?!\w))(?:{pattern})(?:(?!\w)|(?<!\w))"
    return re.compile(pattern, flags)


def load_behavior(path: str | Path) -> Behavior:
    """Load and validate a spec file, including that training and the gate share no
    prompt; raises ``engrain.spec.SpecError``."""
    behavior = Behavior(load_spec(path), Path(path))
    behavior.check_disjoint()
    return behavior


def as_behavior(spec: str | Path | BehaviorSpec | dict, base_dir: str | Path | None = None) -> Behavior:
    """A behavior from what an embedding tool has: a spec file, a ``BehaviorSpec`` or a plain
    dict. The latter two have no file, so their relative files (``prompts.file``...) resolve
    against ``base_dir`` (default: the current folder). Raises ``SpecError`` as a file would."""
    if isinstance(spec, (str, Path)):
        return load_behavior(spec)
    folder = Path(base_dir if base_dir is not None else ".")
    if isinstance(spec, BehaviorSpec):
        spec = spec.model_dump(mode="json")       # revalidated: its files are checked against base_dir
    behavior = Behavior(spec_from_dict(spec, folder), folder / DICT_SPEC)
    behavior.check_disjoint()
    return behavior


@dataclass(frozen=True)
class CompiledBehavior:
    """What the engine needs from a spec, for one tokenizer."""
    spec: BehaviorSpec = field(repr=False)
    tokenizer: Any = field(repr=False, compare=False)
    train_prompts: list[str] = field(repr=False)
    val_prompts: list[str] = field(repr=False)
    eval_prompts: list[str] = field(repr=False)
    probe_prompts: list[str] = field(repr=False)
    val_probe_prompts: list[str] = field(repr=False)
    anchor_prompts: list[str] = field(repr=False)
    regression: dict[str, SuiteSource] = field(repr=False)     # the gate's suites by name
    context: TeacherContext = field(repr=False, compare=False)   # what the teacher reads: hints, files, a log
    target: list[re.Pattern] = field(repr=False)
    forbidden: list[re.Pattern] = field(repr=False)
    probe_forbidden: list[re.Pattern] = field(repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    # --- what student and teacher see ------------------------------------------------

    @property
    def hints(self) -> list[str]:
        return self.context.hints

    @property
    def placement(self) -> str:
        return self.context.placement

    @property
    def variants(self) -> int:
        """How many teacher contexts one prompt can get (a hint's phrasings; 1 otherwise)."""
        return self.context.variants

    def student_messages(self, prompt: str) -> list[dict]:
        return self.context.student_messages(prompt)

    def teacher_messages(self, prompt: str, hint_index: int) -> list[dict]:
        return self.context.teacher_messages(prompt, hint_index)

    def logged_answer_ids(self, prompt: str) -> list[int] | None:
        """A log's own answer to a lesson, as response ids ending with the end of turn (what
        is trained on instead of a sample); None for a prompt that is not a lesson.

        The conversation is rendered with the answer, and the response is what follows the
        part it shares with the student's prompt, up to and with the first special token (the
        end of turn): a template may render a past answer differently from a new one (Qwen3
        drops the empty think block the student's prompt ends with)."""
        text = self.context.logged_answer(prompt)
        if text is None:
            return None
        prompt_ids = self.student_ids(prompt)
        full = self.chat_ids(self.student_messages(prompt) + [{"role": "assistant", "content": text}])
        shared = next((k for k, (a, b) in enumerate(zip(full, prompt_ids)) if a != b), min(len(full), len(prompt_ids)))
        special = set(self.tokenizer.all_special_ids) | {      # + a template's own, e.g. Llama 3's <|eot_id|>
            i for i, t in getattr(self.tokenizer, "added_tokens_decoder", {}).items() if t.special}
        rest = full[shared:]
        end = next((k for k, i in enumerate(rest) if i in special), None)
        response = rest if end is None else rest[:end + 1]
        if squash(self._decode(response)) != squash(text):
            raise ValueError(f"the chat template does not render the logged answer of {prompt} as a plain "
                             f"continuation of the student's prompt (got {self._decode(response)[:80]!r})")
        return response

    def student_ids(self, prompt: str) -> list[int]:
        return self.chat_ids(self.student_messages(prompt))

    def teacher_ids(self, prompt: str, hint_index: int) -> list[int]:
        return self.chat_ids(self.teacher_messages(prompt, hint_index))

    def baseline_ids(self, prompt: str) -> list[int] | None:
        """The contrast teacher's prompt (teacher_context.conversations.contrast), or None."""
        messages = self.context.baseline_messages(prompt)
        return None if messages is None else self.chat_ids(messages)

    def chat_ids(self, messages: list[dict]) -> list[int]:
        return chat_ids(self.tokenizer, messages, self.spec.chat)

    def assert_no_leak(self, prompts: list[str] | None = None) -> None:
        """Check on real ids that only the teacher sees each hint; raises AssertionError."""
        for prompt in prompts if prompts is not None else self.train_prompts[:8]:
            student = squash(self._decode(self.student_ids(prompt)))
            for i in range(self.variants):
                teacher = squash(self._decode(self.teacher_ids(prompt, i)))
                for text in self.context.privileged(prompt, i):
                    if squash(text) in student:
                        raise AssertionError(f"context {i} {text[:60]!r} is in the student's ids for {prompt!r}")
                    if squash(text) not in teacher:
                        raise AssertionError(f"context {i} {text[:60]!r} is missing from the teacher's ids "
                                             f"for {prompt!r}")

    # --- patterns on tokens ------------------------------------------------------------

    def pattern_token_mask(self, response_ids: list[int]) -> tuple[list[bool], list[bool]]:
        """(target, forbidden): whether each response token overlaps a match of those regexes."""
        text, spans = self.token_spans(response_ids)
        return (_overlaps(spans, _match_spans(self.target, text)),
                _overlaps(spans, _match_spans(self.forbidden, text)))

    def token_spans(self, response_ids: list[int]) -> tuple[str, list[tuple[int, int]]]:
        """The decoded response and each token's [start, end) character span in it.

        Fast path: when the tokens decoded one by one concatenate to the whole decode (no
        character split across tokens, no cleanup), the spans are their cumulative lengths,
        one decode per token. Otherwise decoding growing prefixes is quadratic in length
        but exact for any tokenizer (byte-level BPE, SentencePiece's leading spaces);
        offsets from encoding would not survive decoding.
        """
        text = self._decode(response_ids)
        pieces = self.tokenizer.batch_decode([[t] for t in response_ids], skip_special_tokens=True)
        if "".join(pieces) == text and "\ufffd" not in text:
            ends = list(itertools.accumulate(len(p) for p in pieces))
            return text, list(zip([0] + ends[:-1], ends))
        done, reach = [0], [0]  # per prefix length: whole characters decoded, and with a partial one
        for k in range(1, len(response_ids) + 1):
            prefix = self._decode(response_ids[:k])
            whole = _common_prefix(prefix, text)
            done.append(whole)
            # A prefix ending inside a multi-byte character decodes to a replacement char:
            # every token holding some of its bytes owns that character.
            reach.append(whole + 1 if len(prefix) > whole and whole < len(text) else whole)
        spans = [(done[i], max(done[i], reach[i + 1])) for i in range(len(response_ids))]
        return text, spans

    # --- graders on text ---------------------------------------------------------------

    def exists(self, text: str) -> bool:
        """A target pattern matches."""
        return any(p.search(text) for p in self.target)

    def forbidden_free(self, text: str) -> bool:
        """No forbidden pattern matches."""
        return not any(p.search(text) for p in self.forbidden)

    def only(self, text: str) -> bool:
        """The behavior shows and what it replaces does not."""
        return self.exists(text) and self.forbidden_free(text)

    def probe_clean(self, text: str) -> bool:
        """On a probe: none of the probe-forbidden patterns matches."""
        return not any(p.search(text) for p in self.probe_forbidden)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _match_spans(patterns: list[re.Pattern], text: str) -> list[tuple[int, int]]:
    return [m.span() for p in patterns for m in p.finditer(text) if m.end() > m.start()]


def _overlaps(spans: list[tuple[int, int]], matches: list[tuple[int, int]]) -> list[bool]:
    return [any(s < me and ms < e for ms, me in matches) for s, e in spans]
