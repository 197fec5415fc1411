"""The behavior spec: a closed pydantic model of ``behaviors/*.yaml`` (docs/ARCHITECTURE.md).

Field names are a contract read by the engine. Every problem found while loading a spec
becomes a :class:`SpecError` that names the file, the 1-based line and a fix: the YAML is
read with ruamel's round-trip loader, which remembers where each key and item sits, and a
pydantic error's ``loc`` is walked through that tree to find the line.

Validation runs in two phases: pydantic checks the shape and each value (no I/O), then
:func:`load_spec` checks what needs the spec's folder (prompt files) or several fields at
once (a hint leaking into a student prompt).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (AfterValidator, BaseModel, ConfigDict, Discriminator, Field, PlainValidator, Tag,
                      ValidationError, field_validator, model_validator)
from pydantic_core import PydanticCustomError

from engrain.registry import LOSSES, METHODS, PROMPT_SETS, SAMPLERS, SUITES, TEACHERS

SLUG = re.compile(r"[a-z0-9][a-z0-9_-]*")
RESERVED_SUITES = ("behavior", "behavior_hinted", "specificity", "well_formed")   # checks.py's figures
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
PROMPT_FILE_SUFFIXES = (".jsonl", ".txt")
# A spec is configuration: prompts in bulk belong in a prompts file. Both bounds keep a
# hostile spec (a billion-laughs chain of YAML aliases ran `cl validate` past 100 s) from
# costing more than a moment and a few MB.
MAX_SPEC_BYTES = 1_000_000
MAX_SPEC_VALUES = 100_000
MAX_FLOW_DEPTH = 64          # [ and { nesting; the YAML parser recurses once a level


class SpecError(Exception):
    """One problem in a spec file: where it is, what is wrong, how to fix it."""

    def __init__(self, path: str | Path, line: int | None, message: str, fix: str):
        self.path, self.line = str(path), line
        self.message, self.fix = message.rstrip("."), fix.rstrip(".")
        super().__init__(str(self))

    @property
    def errors(self) -> list[SpecError]:
        return [self]

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.message}. Fix: {self.fix}."


class SpecErrors(SpecError):
    """Several problems at once; behaves like its first error, prints all of them."""

    def __init__(self, errors: list[SpecError]):
        first = errors[0]
        self._errors = list(errors)
        super().__init__(first.path, first.line, first.message, first.fix)

    @property
    def errors(self) -> list[SpecError]:
        return self._errors

    def __str__(self) -> str:
        return "\n".join(SpecError.__str__(e) for e in self._errors)


def _raise(errors: list[SpecError]) -> None:
    if errors:
        raise errors[0] if len(errors) == 1 else SpecErrors(errors)


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
    pool_size: int = Field(128, gt=0, description=(
        "Base-model answers sampled before training (builtin sets: from their train split)."))


class Learned(_Closed):
    """What "learned" means: the behavior rate without the hint on held-out prompts.

    Both ``exists`` and ``only`` (exists and no forbidden pattern) must reach it; an
    adapter below it is "not learned" (exit 4), whatever else it kept."""
    min_share_of_hinted: float | None = Field(0.5, ge=0, description=(
        "At least this share of the base model's own rate *with* the hint, on the same "
        "held-out prompts (the teacher's ceiling). null: no relative bar."))
    min_rate: float | None = Field(None, ge=0, le=1, description=(
        "At least this absolute rate. null: no absolute bar."))


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
        declared = next((s for s in self.suites if not isinstance(s, str) and s.name == suite), None)
        return declared.max_drop if declared is not None and declared.max_drop is not None else self.max_drop


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
    max_new_tokens: int = Field(48, gt=0, description="Rollout length cap.")
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
    qlora: bool = Field(False, description="Load the base model in 4 bits (needs bitsandbytes).")
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
        'null: the rule judge (patterns); "self": the base model; else a litellm model string.'))
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
    model: Text = Field("lab", description='"lab" (embedded), a local folder, or a hub id.')
    prompts: Prompts = Field(description="What the student sees.")
    hints: Hints = Field(description="What only the teacher sees.")
    patterns: Patterns = Field(description="Regexes for the pre-filter and the graders.")
    probes: Probes | None = Field(None, description="Prompts where the behavior must not show.")
    anchor: Anchor | None = Field(None, description="Prompts the model must keep answering as before.")
    regression: Regression = Field(default_factory=Regression, description="Forgetting checks.")
    learned: Learned = Field(default_factory=Learned, description="The behavior rate the adapter must reach.")
    train: Train = Field(default_factory=Train, description="The training recipe.")
    judge: Judge = Field(default_factory=Judge, description="The position judge.")


# --- prompt files ----------------------------------------------------------------------

class PromptFileError(ValueError):
    """A prompts file that cannot be read; ``line`` is 1-based, or None for the whole file."""

    def __init__(self, line: int | None, message: str):
        self.line, self.message = line, message
        super().__init__(f"line {line}: {message}" if line else message)


def read_prompts_file(path: str | Path) -> list[str]:
    """The prompts in a .jsonl (``{"prompt": "..."}`` a line) or .txt (a prompt a line) file."""
    return [prompt for _, prompt in numbered_prompts(path)]


def numbered_prompts(path: str | Path) -> list[tuple[int, str]]:
    """(1-based line, prompt) for each prompt in a prompts file; blank lines are skipped."""
    return [(number, prompt) for number, prompt, _ in _numbered_records(path)]


def read_suite_file(path: str | Path) -> list[tuple[int, str, str | None]]:
    """(1-based line, prompt, expect or None) for each item of a declared suite's file."""
    out = []
    for number, prompt, record in _numbered_records(path):
        expect = record.get("expect") if record else None
        if expect is not None and not isinstance(expect, str):
            raise PromptFileError(number, '"expect" must be a string')
        out.append((number, prompt, expect))
    return out


def _numbered_records(path: str | Path) -> list[tuple[int, str, dict | None]]:
    path = Path(path)
    if path.suffix not in PROMPT_FILE_SUFFIXES:
        raise PromptFileError(None, f"unsupported file type {path.suffix or '(none)'!r}")
    if not path.is_file():
        raise PromptFileError(None, "file not found")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise PromptFileError(None, f"not UTF-8 text ({e.reason})")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if path.suffix == ".txt":
            records.append((number, line.strip(), None))
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise PromptFileError(number, f"not valid JSON ({e.msg})")
        prompt = record.get("prompt") if isinstance(record, dict) else None
        if not isinstance(prompt, str) or not prompt.strip():
            raise PromptFileError(number, 'expected an object with a non-empty "prompt" string')
        records.append((number, prompt, record))
    if not records:
        raise PromptFileError(None, "no prompts in the file")
    return records


# --- loading -------------------------------------------------------------------------

def load_spec(path: str | Path) -> BehaviorSpec:
    """Read and validate a spec file; raises :class:`SpecError` (or :class:`SpecErrors`)."""
    path = Path(path)
    tree = _read_yaml(path)
    try:
        spec = BehaviorSpec.model_validate(_plain(tree))
    except ValidationError as e:
        errors = [_from_pydantic(path, tree, err) for err in _dedupe(e.errors())]
        _raise(sorted(errors, key=lambda err: err.line or 0))
    _raise([SpecError(path, _line_of(tree, loc), f"{_dotted(loc)}: {msg}", fix)
            for loc, msg, fix in _cross_checks(spec, path.parent)])
    return spec


def check_unique_names(specs: Iterable[tuple[str | Path, BehaviorSpec]]) -> None:
    """Raise a :class:`SpecError` for each behavior name used by more than one file."""
    seen: dict[str, Path] = {}
    errors = []
    for path, spec in specs:
        path = Path(path)
        if spec.name in seen:
            first = seen[spec.name]
            message = f"name: {spec.name!r} is also the name in {first}:{_name_line(first)}"
            errors.append(SpecError(path, _name_line(path), message,
                                    "give each behavior a unique name (it names the adapter and its runs)"))
        else:
            seen[spec.name] = path
    _raise(errors)


def spec_error_at(path: str | Path, loc: tuple, message: str, fix: str) -> SpecError:
    """A SpecError at the line of ``loc`` (e.g. ``("anchor", "builtin")``) in the spec file."""
    path = Path(path)
    try:
        line = _line_of(_read_yaml(path), loc)
    except SpecError:
        line = None
    return SpecError(path, line, f"{_dotted(loc)}: {message}", fix)


def resolve_prompts_file(spec_path: str | Path, file: str) -> Path:
    """A ``prompts.file`` / ``probes.file`` path, taken relative to the spec file."""
    return Path(spec_path).parent / file


def _read_yaml(path: Path):
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError
    from ruamel.yaml.comments import CommentedMap

    try:
        if path.stat().st_size > MAX_SPEC_BYTES:
            raise SpecError(path, None, f"the file is larger than {MAX_SPEC_BYTES:,} bytes",
                            "move prompts into a prompts file (prompts.file) and keep the spec short")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(path, None, "file not found", "check the path")
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(path, None, f"cannot read the file ({e})", "save the spec as UTF-8 text")
    depth, line = _flow_depth(text)
    if depth > MAX_FLOW_DEPTH:
        raise SpecError(path, line, f"brackets nest more than {MAX_FLOW_DEPTH} levels deep",
                        "flatten the value; a spec never needs that depth")
    try:
        tree = YAML(typ="rt").load(text)
    except RecursionError:
        raise SpecError(path, 1, "the YAML nests too deeply to read", "flatten the spec")
    except MarkedYAMLError as e:
        raise _yaml_error(path, e)
    except YAMLError as e:
        raise SpecError(path, 1, f"invalid YAML: {e}", "fix the YAML syntax")
    if tree is None:
        raise SpecError(path, 1, "the file is empty",
                        "write a spec (see docs/ARCHITECTURE.md or behaviors/pinapple.yaml)")
    if not isinstance(tree, CommentedMap):
        raise SpecError(path, _node_line(tree), f"the top level must be a mapping, not {_kind(tree)}",
                        "start the file with keys like `name: my-behavior`")
    try:
        size = _expanded_size(tree, {}, set())
    except RecursionError:
        size = None
    if size is None or size > MAX_SPEC_VALUES:
        what = "refers to itself or nests too deeply" if size is None else \
            f"expands to more than {MAX_SPEC_VALUES:,} values"
        raise SpecError(path, 1, f"the spec {what} (YAML anchors and aliases repeat what they point at)",
                        "write the values out, without aliases that point at themselves or chain")
    return tree


def _flow_depth(text: str) -> tuple[int, int]:
    """(the deepest [ / { nesting in ``text``, the line where it is reached); quotes are
    ignored, so an over-count only errs on the side of refusing."""
    depth, deepest, at, line = 0, 0, 1, 1
    for ch in text:
        if ch == "\n":
            line += 1
        elif ch in "[{":
            depth += 1
            if depth > deepest:
                deepest, at = depth, line
        elif ch in "]}":
            depth = max(0, depth - 1)
    return deepest, at


def _expanded_size(node: Any, memo: dict, open_: set) -> int | None:
    """How many values the YAML holds once every alias is expanded, in time linear in the
    file (an alias is the same object as its anchor: each object is sized once); None if
    an alias points into itself, which would expand forever."""
    if id(node) in open_:
        return None
    if id(node) in memo:
        return memo[id(node)]
    children = list(node.values()) if isinstance(node, dict) else node if isinstance(node, list) else []
    open_.add(id(node))
    sizes = [_expanded_size(c, memo, open_) for c in children]
    open_.discard(id(node))
    memo[id(node)] = None if None in sizes else 1 + sum(sizes)
    return memo[id(node)]


def _yaml_error(path: Path, e) -> SpecError:
    mark = e.problem_mark or e.context_mark
    line = mark.line + 1 if mark else 1
    context = e.context or ""
    if e.context_mark and mark and e.context_mark.line != mark.line:
        context += f" (from line {e.context_mark.line + 1})"
    problem = " ".join(p for p in (context.strip(), e.problem) if p) or "malformed YAML"
    fix = ("keep one of the two keys" if "duplicate key" in problem else
           "fix the YAML syntax here (indentation, a missing ':' or an unclosed quote)")
    return SpecError(path, line, f"invalid YAML: {problem}", fix)


def _plain(node: Any) -> Any:
    """ruamel's round-trip types as plain Python, so strict validation sees real types."""
    from ruamel.yaml.scalarbool import ScalarBoolean
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    if isinstance(node, (bool, ScalarBoolean)):
        return bool(node)
    for kind in (int, float, str):
        if isinstance(node, kind):
            return kind(node)
    return node


def _node_line(node: Any) -> int:
    lc = getattr(node, "lc", None)
    return lc.line + 1 if lc is not None and lc.line is not None else 1


def _line_of(tree: Any, loc: tuple) -> int:
    """The line of the deepest part of ``loc`` present in the YAML (1 for the top level)."""
    node, line = tree, 1
    for part in loc:
        if isinstance(node, dict) and part in node:
            line, node = node.lc.key(part)[0] + 1, node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            line, node = node.lc.item(part)[0] + 1, node[part]
        else:
            break
    return line


def _name_line(path: Path) -> int:
    try:
        return _line_of(_read_yaml(path), ("name",))
    except SpecError:
        return 1


def _dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out or "(top level)"


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number"}.get(type(_plain(value)), type(value).__name__)


def _dedupe(errors: list[dict]) -> list[dict]:
    seen, out = set(), []
    for err in errors:
        key = (tuple(err["loc"]), err["type"])
        if key not in seen:
            seen.add(key)
            out.append(err)
    return out


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The spec model class that validates the mapping at ``loc``."""
    model: Any = BehaviorSpec
    annotation = None
    for part in loc:
        if isinstance(part, int) and annotation is not None:
            continue        # an item of a list field: its model is found in the annotation below
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        annotation = field.annotation
        model = _model_in(annotation)
        if model is None:
            return None
    return model


def _model_in(annotation: Any) -> type[BaseModel] | None:
    # The first spec model inside list[...], X | None, Annotated[...] and the like.
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for a in get_args(annotation) if (m := _model_in(a)) is not None), None)


def _untagged(loc: tuple) -> tuple:
    # A tagged union (regression.suites) adds the tag after the item's index; the YAML has none.
    return tuple(p for i, p in enumerate(loc)
                 if not (p in ("name", "declared") and i >= 1 and isinstance(loc[i - 1], int)
                         and loc[:i - 1] == ("regression", "suites")))


TYPE_FIXES = {
    "int_type": "write a whole number, without quotes",
    "float_type": "write a number, without quotes",
    "bool_type": "write true or false, without quotes",
    "string_type": "write text (quote it if YAML reads it as something else)",
    "list_type": "write a list, e.g. [a, b] or one '- item' a line",
    "model_type": "write a mapping of keys here",
    "model_attributes_type": "write a mapping of keys here",
    "dict_type": "write a mapping of keys here",
}


def _from_pydantic(path: Path, tree: Any, err: dict) -> SpecError:
    loc, kind, ctx = _untagged(tuple(err["loc"])), err["type"], err.get("ctx") or {}
    where = _dotted(loc)
    if kind == "spec":
        message, fix = ctx["message"], ctx["fix"]
    elif kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        allowed = ", ".join(model.model_fields) if model else ""
        message = "unknown key"
        fix = f"remove it or fix its spelling; allowed here: {allowed}" if allowed else "remove it"
    elif kind == "missing":
        parent = f"under {_dotted(loc[:-1])}" if len(loc) > 1 else "at the top level"
        message, fix = "missing key", f"add `{loc[-1]}:` {parent}"
    elif kind == "literal_error":
        message = f"{err['input']!r} is not allowed"
        fix = f"use one of: {ctx.get('expected', '')}".replace("'", "")
    elif kind in ("too_short", "too_long"):
        message = err["msg"].replace("List should", "must").replace("String should", "must")
        fix = "add items" if kind == "too_short" else "remove items"
    elif kind in TYPE_FIXES:
        wanted = "must be a mapping" if TYPE_FIXES[kind].endswith("mapping of keys here") else \
            err["msg"].replace("Input should be", "must be")
        message = f"{wanted}, got {_kind(err['input'])}"
        if not isinstance(err["input"], (dict, list)) and err["input"] is not None:
            message += f" {err['input']!r}"
        fix = TYPE_FIXES[kind]
    else:
        message = f"{err['msg'].replace('Input should be', 'must be')}, got {err['input']!r}"
        fix = "change the value"
    return SpecError(path, _line_of(tree, loc), f"{where}: {message}", fix)


def _cross_checks(spec: BehaviorSpec, base: Path) -> list[tuple[tuple, str, str]]:
    """Checks that need the spec's folder or several fields: (loc, message, fix) each."""
    problems = []
    student: list[tuple[tuple, str, str]] = []   # (loc, where in a prompts file, prompt)
    for section in ("prompts", "probes", "anchor"):
        source = getattr(spec, section)
        if source is None or source.file is None:
            continue
        loc = (section, "file")
        numbered = _read_file(base, source.file, loc, numbered_prompts, problems)
        if numbered is not None and section == "prompts":
            student += [(loc, f"{source.file}:{n}: ", p) for n, p in numbered]
    for i, entry in enumerate(spec.regression.suites):
        if isinstance(entry, str) or entry.file is None:
            continue
        loc = ("regression", "suites", i, "file")
        rows = _read_file(base, entry.file, loc, read_suite_file, problems)
        if rows is None:
            continue
        bad = next(((n, why) for n, _, expect in rows
                    if (why := suite_item_problem(entry.grader, entry.pattern, expect))), None)
        if bad is not None:
            problems.append((loc, f"{entry.file}:{bad[0]}: {bad[1]}",
                             'give each line an "expect" (or the suite a pattern: for regex)'))
    if spec.prompts.inline is not None:
        student += [(("prompts", "inline", i), "", p) for i, p in enumerate(spec.prompts.inline)]
    elif spec.prompts.builtin is not None:
        student += [(("prompts", "builtin"), "", p) for p in PROMPT_SETS.get(spec.prompts.builtin)(400, "train")]
    if spec.prompts.builtin is None and 0 < len(student) < 2:
        problems.append((("prompts", spec.prompts.source), "needs at least 2 prompts",
                         "add prompts: at least one to train on and one held out for evals"))
    for i, hint in enumerate(spec.hints.phrasings):
        needle = _squash(hint)
        leak = next(((loc, where) for loc, where, p in student if needle in _squash(p)), None)
        if leak is not None:
            problems.append((leak[0], f"{leak[1]}contains hints.phrasings[{i}] {hint!r}, so the student "
                                      "would see the hint",
                             "remove the hint text from the student prompt; hints are for the teacher only"))
    return problems


def _read_file(base: Path, file: str, loc: tuple, reader, problems: list):
    """``reader(base / file)``, or None once the problem (file:line, message, fix) is added."""
    try:
        return reader(base / file)
    except PromptFileError as e:
        where = f"{file}:{e.line}" if e.line else file
        problems.append((loc, f"{where}: {e.message}", _file_fix(e)))
        return None


def _squash(text: str) -> str:
    return " ".join(text.split()).casefold()


def _file_fix(e: PromptFileError) -> str:
    if e.message == "file not found":
        return "write the file, or fix the path (it is relative to the spec file)"
    if e.message.startswith("unsupported"):
        return "use a .jsonl or a .txt prompts file"
    if e.line:
        return 'make each line a JSON object like {"prompt": "..."}'
    return "add prompts: one JSON object a line (.jsonl) or one prompt a line (.txt)"


def with_overrides(spec: BehaviorSpec, overrides: dict) -> BehaviorSpec:
    """The spec with command-line overrides applied: method, steps, seed, sampler, model, judge."""
    train = spec.train.model_copy(update={k: v for k, v in overrides.items()
                                          if k in ("method", "steps", "seed", "sampler")})
    update: dict = {"train": train}
    if "model" in overrides:
        update["model"] = overrides["model"]
    if "judge" in overrides:
        update["judge"] = spec.judge.model_copy(update={"model": overrides["judge"]})
    return spec.model_copy(update=update)
