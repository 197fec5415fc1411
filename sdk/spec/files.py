"""Prompt and suite files: what ``prompts.file``, ``probes.file``, ``anchor.file`` and a
declared suite's ``file`` point at. A .jsonl file holds one JSON object a line
(``{"prompt": "...", "expect": "..."}``), a .txt file one prompt a line; blank lines are
skipped, and a bad line is reported by its 1-based number.
"""

from __future__ import annotations

import json
from pathlib import Path

PROMPT_FILE_SUFFIXES = (".jsonl", ".txt")


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


def resolve_prompts_file(spec_path: str | Path, file: str) -> Path:
    """A ``prompts.file`` / ``probes.file`` path, taken relative to the spec file."""
    return Path(spec_path).parent / file


def read_or_report(base: Path, file: str, loc: tuple, reader, problems: list):
    """``reader(base / file)``, or None once the problem (loc, message, fix) is added."""
    try:
        return reader(base / file)
    except PromptFileError as e:
        where = f"{file}:{e.line}" if e.line else file
        problems.append((loc, f"{where}: {e.message}", _file_fix(e)))
        return None


def _file_fix(e: PromptFileError) -> str:
    if e.message == "file not found":
        return "write the file, or fix the path (it is relative to the spec file)"
    if e.message.startswith("unsupported"):
        return "use a .jsonl or a .txt prompts file"
    if e.line:
        return 'make each line a JSON object like {"prompt": "..."}'
    return "add prompts: one JSON object a line (.jsonl) or one prompt a line (.txt)"


def squash(text: str) -> str:
    """``text`` with runs of whitespace as one space, casefolded: how a hint is looked for
    in a prompt (the spec's check) or in rendered chat text (the compiled behavior's)."""
    return " ".join(text.split()).casefold()
