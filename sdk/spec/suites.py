"""Regression suites: what the gate re-runs on the base model and the adapter.

A suite is prompts (as chat messages) and a grader. A spec names registered suites
(``lab/capitals``: ``registry.SUITES``) or declares its own (prompts with expected
answers and a grader: exact, contains or regex); both become a :class:`SuiteSource`,
which builds the suite on a split and lists every prompt it may score, so training can
be kept off them.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engrain.registry import SUITES
from engrain.spec.chat import place_hint
from engrain.spec.files import read_suite_file, resolve_prompts_file


@dataclass(frozen=True)
class Suite:
    name: str                               # e.g. "behavior", "specificity", "lab/arithmetic"
    metric: str                             # e.g. "exists", "accuracy"
    messages: list[list[dict]]
    grade: Callable[[int, str], bool]       # (index, answer text) -> pass


@dataclass(frozen=True)
class SuiteSource:
    """A regression suite by name: ``build(n, split)`` on the ``val`` split (checkpoint
    selection) or the ``eval`` split (the gate); ``prompts()`` every prompt either may
    score; ``max_drop`` its own largest allowed drop (None: the spec's regression.max_drop);
    ``hint_of`` the behavior whose hint its prompts carry, for a suite of hint following (not
    gated on an adapter that already carries that behavior). What ``registry.SUITES`` holds."""
    metric: str
    build: Callable[[int, str], Suite]
    prompts: Callable[[], list[str]]
    max_drop: float | None = None
    hint_of: str | None = None


@dataclass(frozen=True)
class Item:
    prompt: str
    expect: str | None


def grader(kind: str, pattern: str | None, ignore_case: bool) -> Callable[[Item, str], bool]:
    """(item, answer) -> pass. exact: the stripped answer is ``expect``; contains: ``expect``
    is in the answer; regex: ``expect`` (or the suite's ``pattern``) matches somewhere."""
    fold = (lambda s: s.casefold()) if ignore_case else (lambda s: s)
    flags = re.IGNORECASE if ignore_case else 0
    if kind == "exact":
        return lambda item, text: fold(text.strip()) == fold(item.expect.strip())
    if kind == "contains":
        return lambda item, text: fold(item.expect) in fold(text)
    if kind == "regex":
        return lambda item, text: re.search(item.expect or pattern, text, flags) is not None
    raise ValueError(f"unknown grader {kind!r}; expected exact, contains or regex")


def split_items(items: list[Item]) -> dict[str, list[Item]]:
    """A quarter of the prompts (by a hash of the prompt, so stable across runs and
    machines) for checkpoint selection, the rest for the gate; a suite too small to split
    (under 8 prompts, or a hash that leaves a side empty) uses all of them for both."""
    val = [it for it in items if zlib.crc32(it.prompt.encode()) % 4 == 0]
    rest = [it for it in items if zlib.crc32(it.prompt.encode()) % 4 != 0]
    if len(items) < 8 or not val or not rest:
        return {"val": items, "eval": items}
    return {"val": val, "eval": rest}


def declared_suite(name: str, items: list[Item], kind: str, pattern: str | None = None,
                   ignore_case: bool = False) -> SuiteSource:
    """A user-declared suite: prompts with expected answers, graded by ``kind``."""
    check = grader(kind, pattern, ignore_case)
    splits = split_items(items)

    def build(n: int, split: str) -> Suite:
        # n answers, cycling through the prompts: a small suite is sampled several times a
        # prompt, so one unlucky sample does not move its rate by a whole 1/len.
        pool = splits[split]
        chosen = [pool[i % len(pool)] for i in range(n)]
        return Suite(name, "accuracy", [place_hint(it.prompt, None, "user_suffix") for it in chosen],
                     lambda i, text: check(chosen[i], text))
    return SuiteSource("accuracy", build, lambda: [it.prompt for it in items])


def spec_suites(spec, spec_path: str | Path) -> dict[str, SuiteSource]:
    """The spec's regression suites by name, in the spec's order (files read relative to it)."""
    out: dict[str, SuiteSource] = {}
    for entry in spec.regression.suites:
        if isinstance(entry, str):
            out[entry] = SUITES.get(entry)
            continue
        rows = (read_suite_file(resolve_prompts_file(spec_path, entry.file)) if entry.file is not None
                else [(i + 1, it.prompt, it.expect) for i, it in enumerate(entry.inline)])
        items = [Item(prompt, expect) for _, prompt, expect in rows]
        out[entry.name] = declared_suite(entry.name, items, entry.grader, entry.pattern, entry.ignore_case)
    return out
