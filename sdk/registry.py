"""One registry per kind of part: the spec validator, the engine, the CLI and the docs
all read the same table, so a new loss, sampler, prompt set or suite is one
``REGISTRY.register(name, part)`` call, anywhere (methods, teachers, losses, samplers,
prompt sets, regression suites, named models). Each registry is typed by the part it holds;
the engine's parts are small records whose factories take the spec's train section, and
whose ``check(train)`` names what is wrong with their settings before any model loads.

Parts come from plugins: modules whose import registers them. ``engrain.engine.parts`` (the
core's own losses and samplers) and ``engrain.lab.parts`` (the lab's prompt sets and
suites) load first, then any module a package declares under the ``engrain.parts``
entry point group. They load on the first lookup, so importing the core never imports
the lab, and ``cl --help`` stays instant.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from importlib.metadata import entry_points
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Generic, TypeVar

if TYPE_CHECKING:       # the part types name the records they make; no import at run time
    from engrain.spec.suites import SuiteSource

T = TypeVar("T")
PLUGINS = ("engrain.engine.parts", "engrain.lab.parts")
ENTRY_POINT_GROUP = "engrain.parts"
_loaded = False


def load_plugins() -> None:
    """Import every plugin once (the built-in ones, then entry points)."""
    global _loaded
    if _loaded:
        return
    _loaded = True      # before importing: a plugin may look a part up while registering
    for module in PLUGINS:
        importlib.import_module(module)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        ep.load()


class Registry(Generic[T]):
    """Named parts of one kind, e.g. ``LOSSES.get("fkl")``."""

    def __init__(self, kind: str):
        self.kind = kind
        self._parts: dict[str, T] = {}

    def register(self, name: str, part: T, replace: bool = False) -> T:
        if name in self._parts and not replace:
            raise ValueError(f"a {self.kind} named {name!r} is already registered "
                             "(pass replace=True to override it)")
        self._parts[name] = part
        return part

    def unregister(self, name: str) -> None:
        self._parts.pop(name, None)

    def get(self, name: str) -> T:
        load_plugins()
        if name not in self._parts:
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {', '.join(self.names())}")
        return self._parts[name]

    def names(self) -> tuple[str, ...]:
        load_plugins()
        return tuple(sorted(self._parts))

    def __contains__(self, name: object) -> bool:
        load_plugins()
        return name in self._parts

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


# A problem a part finds in its own settings: (where in the spec, e.g. ("train", "teacher"),
# what is wrong, how to fix it). ``cl validate`` turns each into file:line + fix.
Problem = tuple[tuple, str, str]


def no_problems(train) -> list[Problem]:
    return []


@dataclass(frozen=True)
class Method:
    """A training method (``train.method``): ``step(ctx, i) -> StepResult`` (engine/step.py);
    ``mask(cb, tokenizer, judge, train, protect[, exclude=]) -> (rollouts, scores) -> Mask``
    (None: the step picks no positions; ``protect``: earlier behaviors, compiled, whose
    positions it may leave out; ``exclude``, passed only when one adapter learns several
    behaviors: (rollouts, shape) -> positions other behaviors claim); and whether that mask
    reads the base model's scores."""
    description: str
    step: Callable
    mask: Callable | None = None
    needs_base: Callable[[Any], bool] = lambda train: False
    check: Callable[[Any], list[Problem]] = no_problems


@dataclass(frozen=True)
class Teacher:
    """A teacher policy (``train.teacher.kind``): ``make(train)`` -> engine.teacher.TeacherPolicy."""
    description: str
    make: Callable
    check: Callable[[Any], list[Problem]] = no_problems


@dataclass(frozen=True)
class Loss:
    """A per-position divergence (``train.loss``): ``make(train)`` ->
    ``(student_logits, teacher_logits) -> (...)``; the description gives its direction. A
    loss with a setting of its own reads it from the train section."""
    description: str
    make: Callable
    check: Callable[[Any], list[Problem]] = no_problems


@dataclass(frozen=True)
class Sampler:
    """A rollout backend (``train.sampler``): ``make(model, tokenizer)`` -> engine.rollout.Sampler."""
    description: str
    make: Callable
    check: Callable[[Any], list[Problem]] = no_problems


METHODS: Registry[Method] = Registry("method")
TEACHERS: Registry[Teacher] = Registry("teacher")
LOSSES: Registry[Loss] = Registry("loss")
SAMPLERS: Registry[Sampler] = Registry("sampler")
PROMPT_SETS: Registry[Callable[[int, str], list[str]]] = Registry("prompt set")   # (n, split) -> prompts
SUITES: Registry["SuiteSource"] = Registry("regression suite")
MODELS: Registry[Callable[[], Any]] = Registry("model")      # a model name -> () -> its folder
