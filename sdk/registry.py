"""One registry per kind of part: the spec validator, the engine, the CLI and the docs
all read the same table, so a new loss, sampler, prompt set or suite is one
``REGISTRY.register(name, part)`` call, anywhere (methods, teachers, losses, samplers,
prompt sets, regression suites).

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
from typing import Generic, TypeVar

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


# The kinds, and what each holds: parts.Method; a (refresh_after=, ema_decay=) -> teacher
# policy factory (teacher.py); parts.Loss; a (model, tokenizer, batch_size) -> Sampler
# factory (rollout.Sampler); a (n, split) -> list[str] prompt set; suites.SuiteSource.
METHODS: Registry = Registry("method")
TEACHERS: Registry = Registry("teacher")
LOSSES: Registry = Registry("loss")
SAMPLERS: Registry = Registry("sampler")
PROMPT_SETS: Registry = Registry("prompt set")
SUITES: Registry = Registry("regression suite")
