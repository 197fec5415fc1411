"""``cl validate`` and ``cl compile``: check specs, and show what student and teacher see.

Bad input never shows a traceback: a spec problem prints as ``file:line: message. Fix: ...``
and the command exits 1.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from engrain.spec.load import SpecError, check_unique_names


@click.command(help="Check behavior specs; exit 0 if all are valid, 1 if not.")
@click.argument("specs", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
def validate(specs: tuple[Path, ...]) -> None:
    """Check each SPEC file, and that no two of them share a name."""
    specs = tuple(dict.fromkeys(specs))  # the same file twice is not a duplicate name
    problems: dict[Path, list[str]] = {path: [] for path in specs}
    loaded = []
    from engrain.spec.behavior import load_behavior
    for path in specs:
        try:
            loaded.append((path, load_behavior(path).spec))   # the spec, and disjoint prompt splits
        except SpecError as e:
            problems[path].append(str(e))
    try:
        check_unique_names(loaded)
    except SpecError as e:
        for err in e.errors:
            problems[Path(err.path)].append(str(err))
    for path, errors in problems.items():
        click.echo("\n".join(errors) if errors else f"ok  {path}")
    sys.exit(1 if any(problems.values()) else 0)


@click.command("compile", help="Show what the student and the teacher will see for a spec.")
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--show", is_flag=True, help="Print the chat text of a few prompts.")
@click.option("-n", "n", default=3, show_default=True, type=click.IntRange(min=1),
              help="How many prompts to show.")
@click.option("--model", default=None, metavar="NAME|PATH",
              help='Tokenizer to compile with: a name ("lab", "smollm2-135m"), a .gguf file, a '
                   "local folder or a hub id (default: the spec's model).")
def compile_cmd(spec: Path, show: bool, n: int, model: str | None) -> None:
    """Compile SPEC with its model's tokenizer; with --show, print student and teacher chats."""
    from rich.console import Console
    from engrain.spec.behavior import load_behavior

    console = Console(soft_wrap=True, highlight=False)
    try:
        behavior = load_behavior(spec)
    except SpecError as e:
        click.echo(str(e))
        sys.exit(1)
    tokenizer = _load_tokenizer(model or behavior.spec.model)
    compiled = behavior.compile(tokenizer)
    try:
        compiled.assert_no_leak(compiled.train_prompts[:n])
    except AssertionError as e:
        click.echo(f"{spec}: {e}")
        sys.exit(1)

    console.print(f"[bold]{compiled.name}[/]  {len(compiled.train_prompts)} train, "
                  f"{len(compiled.eval_prompts)} eval, {len(compiled.probe_prompts)} probe prompts; "
                  f"teacher context: {_context_line(compiled)}")
    if not show:
        return
    for i, prompt in enumerate(compiled.train_prompts[:n]):
        variant = i % compiled.variants
        console.rule(f"prompt {i + 1}" + (f": {prompt}" if compiled.context.lessons else ""))
        console.print("[bold cyan]student[/]")
        console.print(_chat_text(tokenizer, compiled.student_ids(prompt)))
        console.print(f"[bold magenta]teacher[/]" + (f" (hint {variant})" if compiled.hints else ""))
        console.print(_chat_text(tokenizer, compiled.teacher_ids(prompt, variant),
                                 highlight=compiled.context.privileged(prompt, variant)))
        if (answer := compiled.context.logged_answer(prompt)) is not None:
            console.print("[bold green]logged answer[/] (trained on)")
            console.print(answer)


def _context_line(compiled) -> str:
    """'3 hint phrasings (user_suffix)', '40 demonstrations (2 a prompt)', ... joined."""
    c = compiled.context
    parts = []
    if c.hints:
        parts.append(f"{len(c.hints)} hint phrasings ({c.placement})")
    if c.demos:
        parts.append(f"{len(c.demos)} demonstrations ({c.demo_k} a prompt)")
    if c.chunks:
        parts.append(f"{len(c.chunks)} document chunks from {len({x.source for x in c.chunks})} file(s) "
                     f"({c.chunk_k} a prompt)")
    if c.lessons:
        parts.append(f"{len(c.lessons)} lessons from the log ({c.skipped} assistant turns skipped: no user turn "
                     "after them); " + (f"positions chosen by the reply's shift beyond {c.contrast!r}" if c.contrast
                                        else "positions chosen by the teacher's shift alone (no contrast)"))
    return "; ".join(parts)


def _load_tokenizer(model: str):
    from engrain.engine.models import ModelError, load_tokenizer
    try:
        return load_tokenizer(model)
    except ModelError as e:
        click.echo(str(e))
    except (OSError, ValueError) as e:
        click.echo(f"cannot load a tokenizer from {model!r}: {e}")
    sys.exit(1)


def _chat_text(tokenizer, ids: list[int], highlight: list[str] = ()):
    """The ids decoded as the model reads them, with what only the teacher reads highlighted."""
    from rich.text import Text
    text = Text(tokenizer.decode(ids, skip_special_tokens=False))
    if highlight:
        text.highlight_words(list(highlight), style="bold black on yellow")
    return text
