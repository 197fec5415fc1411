"""Loading a spec. Every problem becomes a :class:`SpecError` naming the file, the 1-based
line and a fix: ruamel's round-trip loader remembers where each key and item sits, and a
pydantic error's ``loc`` is walked through that tree to find the line.

Three phases: pydantic checks the shape and each value (:mod:`engrain.spec.schema`, no
I/O); :func:`load_spec` then checks what needs the spec's folder (prompt files) or several
fields at once (a hint leaking into a student prompt); and each part the spec chooses
checks its own settings (:func:`part_problems`). ``cl validate`` reports all of it before
any model loads.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from engrain.errors import EngrainError
from engrain.registry import LOSSES, METHODS, PROMPT_SETS, SAMPLERS, TEACHERS
from engrain.spec.files import PromptFileError, numbered_prompts, read_or_report, read_suite_file, squash
from engrain.spec.schema import BehaviorSpec, _model_in, suite_item_problem

# A spec is configuration: prompts in bulk belong in a prompts file. Both bounds keep a
# hostile spec (a billion-laughs chain of YAML aliases ran `cl validate` past 100 s) from
# costing more than a moment and a few MB.
MAX_SPEC_BYTES = 1_000_000
MAX_SPEC_VALUES = 100_000
MAX_FLOW_DEPTH = 64          # [ and { nesting; the YAML parser recurses once a level


class SpecError(EngrainError):
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


def load_spec(path: str | Path) -> BehaviorSpec:
    """Read and validate a spec file; raises :class:`SpecError` (or :class:`SpecErrors`)."""
    path = Path(path)
    tree = _read_yaml(path)
    try:
        spec = BehaviorSpec.model_validate(_plain(tree))
    except ValidationError as e:
        errors = [_from_pydantic(path, tree, err) for err in _dedupe(e.errors())]
        _raise(sorted(errors, key=lambda err: err.line or 0))
    problems = _cross_checks(spec, path.parent) + part_problems(spec.train)
    _raise([SpecError(path, _line_of(tree, loc), f"{_dotted(loc)}: {msg}", fix) for loc, msg, fix in problems])
    return spec


DICT_SPEC = "<spec dict>"     # the file name errors give a spec built in code


def spec_from_dict(data: dict, base_dir: str | Path = ".") -> BehaviorSpec:
    """Validate a spec given as a plain dict (a tool builds it from a form, not a file),
    with the same checks and messages as :func:`load_spec`; relative files in it resolve
    against ``base_dir``. Errors name the field (there is no line to point at)."""
    path = Path(base_dir) / DICT_SPEC
    if not isinstance(data, dict):
        raise SpecError(path, None, f"the spec must be a dict, got {_kind(data)}", "pass a dict of the spec's keys")
    try:
        spec = BehaviorSpec.model_validate(data)
    except ValidationError as e:
        _raise([_from_pydantic(path, None, err) for err in _dedupe(e.errors())])
    problems = _cross_checks(spec, path.parent) + part_problems(spec.train)
    _raise([SpecError(path, None, f"{_dotted(loc)}: {msg}", fix) for loc, msg, fix in problems])
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


def _line_of(tree: Any, loc: tuple) -> int | None:
    """The line of the deepest part of ``loc`` present in the YAML (1 for the top level;
    None for a spec given as a dict, which has no lines)."""
    if tree is None:
        return None
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


# --- checks across fields, and the parts' own -------------------------------------

def _cross_checks(spec: BehaviorSpec, base: Path) -> list[tuple[tuple, str, str]]:
    """Checks that need the spec's folder or several fields: (loc, message, fix) each."""
    problems = []
    student: list[tuple[tuple, str, str]] = []   # (loc, where in a prompts file, prompt)
    for section in ("prompts", "probes", "anchor"):
        source = getattr(spec, section)
        if source is None or source.file is None:
            continue
        loc = (section, "file")
        numbered = read_or_report(base, source.file, loc, numbered_prompts, problems)
        if numbered is not None and section == "prompts":
            student += [(loc, f"{source.file}:{n}: ", p) for n, p in numbered]
    for i, entry in enumerate(spec.regression.suites):
        if isinstance(entry, str) or entry.file is None:
            continue
        loc = ("regression", "suites", i, "file")
        rows = read_or_report(base, entry.file, loc, read_suite_file, problems)
        if rows is None:
            continue
        bad = next(((n, why) for n, _, expect in rows
                    if (why := suite_item_problem(entry.grader, entry.pattern, expect))), None)
        if bad is not None:
            problems.append((loc, f"{entry.file}:{bad[0]}: {bad[1]}",
                             'give each line an "expect" (or the suite a pattern: for regex)'))
    if spec.prompts is not None and spec.prompts.inline is not None:
        student += [(("prompts", "inline", i), "", p) for i, p in enumerate(spec.prompts.inline)]
    elif spec.prompts is not None and spec.prompts.builtin is not None:
        student += [(("prompts", "builtin"), "", p) for p in PROMPT_SETS.get(spec.prompts.builtin)(400, "train")]
    if spec.prompts is not None and spec.prompts.builtin is None and 0 < len(student) < 2:
        problems.append((("prompts", spec.prompts.source), "needs at least 2 prompts",
                         "add prompts: at least one to train on and one held out for evals"))
    problems += _context_file_problems(spec, base)
    for i, hint in enumerate(spec.hint_section.phrasings if spec.hint_section else []):
        needle = squash(hint)
        leak = next(((loc, where) for loc, where, p in student if needle in squash(p)), None)
        if leak is not None:
            problems.append((leak[0], f"{leak[1]}contains hints.phrasings[{i}] {hint!r}, so the student "
                                      "would see the hint",
                             "remove the hint text from the student prompt; hints are for the teacher only"))
    return problems


def _context_file_problems(spec: BehaviorSpec, base: Path) -> list[tuple[tuple, str, str]]:
    """teacher_context's files, read as training will read them (bounded): each problem at
    its file and line."""
    from engrain.spec.contexts import FILE_FIX, file_problem, file_readers
    problems = []
    for loc, file, reader in file_readers(spec.teacher_context).values():
        try:
            reader(base / file)
        except PromptFileError as e:
            problems.append((loc, file_problem(file, e), FILE_FIX))
    return problems


def part_problems(train) -> list[tuple[tuple, str, str]]:
    """What the parts ``train`` chooses say about their own settings.

    Any part in ``registry.METHODS``, ``TEACHERS``, ``LOSSES`` or ``SAMPLERS`` may carry
    ``check(train) -> list[(loc, message, fix)]``, ``loc`` the field's path in the spec,
    e.g. ``("train", "teacher", "refresh_after")``; where that key is not written in the
    YAML, the error points at the nearest key above it that is. A check that raises is
    reported as a problem of its part, not as a traceback."""
    chosen = ((METHODS, train.method, ("train", "method")),
              (TEACHERS, train.teacher.kind, ("train", "teacher", "kind")),
              (LOSSES, train.loss, ("train", "loss")),
              (SAMPLERS, train.sampler, ("train", "sampler")))
    problems = []
    for registry, name, loc in chosen:
        check = getattr(registry.get(name), "check", None)
        if check is None:
            continue
        try:
            found = [(tuple(where), message, fix) for where, message, fix in check(train) or ()]
        except Exception as e:      # noqa: BLE001 - a plugin's bug, reported where its name is
            found = [(loc, f"the {registry.kind} {name!r} could not check its settings "
                           f"({type(e).__name__}: {e})", f"fix that {registry.kind}'s check(train)")]
        problems += found
    return problems


def check_parts(path: str | Path, spec: BehaviorSpec) -> None:
    """Raise :func:`part_problems` as SpecErrors at their lines in ``path``: for a spec
    changed after loading (command-line overrides may choose another part)."""
    _raise([spec_error_at(path, loc, message, fix) for loc, message, fix in part_problems(spec.train)])


def with_overrides(spec: BehaviorSpec, overrides: dict) -> BehaviorSpec:
    """The spec with command-line overrides applied: method, steps, seed, sampler, qlora,
    model, judge."""
    train = spec.train.model_copy(update={k: v for k, v in overrides.items()
                                          if k in ("method", "steps", "seed", "sampler", "qlora")})
    update: dict = {"train": train}
    if "model" in overrides:
        update["model"] = overrides["model"]
    if "judge" in overrides:
        update["judge"] = spec.judge.model_copy(update={"model": overrides["judge"]})
    return spec.model_copy(update=update)
