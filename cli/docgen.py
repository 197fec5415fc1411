"""Reference docs generated from the code, so they cannot drift from it.

``docs/SPEC.md`` comes from the pydantic models in :mod:`engrain.spec.schema` and ``docs/CLI.md``
from the ``cl`` commands' ``--help``; ``tests/test_docs.py`` fails when either is stale.
Regenerate them with::

    python -m engrain.cli.docgen spec > docs/SPEC.md
    python -m engrain.cli.docgen cli > docs/CLI.md
"""

from __future__ import annotations

import inspect
import json
import sys
import types
import typing
from typing import Annotated, Any, Literal

import annotated_types as at
import click
from pydantic import AfterValidator, BaseModel
from pydantic_core import PydanticUndefined

import engrain.spec.schema as spec
from engrain.registry import LOSSES, METHODS, PROMPT_SETS, SAMPLERS, SUITES, TEACHERS

REGENERATE = "python -m engrain.cli.docgen {kind} > docs/{file}"

# Validated strings get their own name: "regex" says more than "string" in a spec reference.
CHECKED_STRINGS = {spec._regex: "regex", spec._non_empty: "non-empty string", spec._slug: "slug"}
PLAIN_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean",
               type(None): "null"}
BOUNDS = {at.Gt: ("> ", "gt"), at.Ge: (">= ", "ge"), at.Lt: ("< ", "lt"), at.Le: ("<= ", "le")}


# --- the spec --------------------------------------------------------------------------

def spec_reference() -> str:
    """Markdown: one table per spec section, nested sections named by dotted path."""
    out = ["# Behavior spec reference", "",
           f"<!-- Generated from engrain.spec.schema by `{REGENERATE.format(kind='spec', file='SPEC.md')}`;"
           " do not edit. -->", "",
           "A behavior spec is a YAML file (`behaviors/*.yaml`) that loads into "
           "`engrain.spec.schema.BehaviorSpec`. Keys not listed here are errors, and values are not "
           'coerced: `"60"` is not an integer.']
    for path, model in _sections(spec.BehaviorSpec):
        out += ["", f"## `{path}`" if path else "## Top level", ""]
        if model.__doc__:
            out += [inspect.cleandoc(model.__doc__), ""]
        out += ["| Field | Type | Default | Description |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            dotted = f"{path}.{name}" if path else name
            nested = _nested_model(field.annotation)
            kind = (f"mapping, see `{dotted}`" if nested and _nested_model(field.annotation, deep=False)
                    else _type(field.annotation, field.metadata))
            kind = ", ".join([kind, *_bounds(field.metadata)])
            out.append(f"| `{dotted}` | {_cell(kind)} | {_cell(_default(field))} "
                       f"| {_cell(field.description or '')} |")
    out += ["", "## Registered parts", "",
            "The names a spec may use, as registered when this page was generated "
            "(`engrain.registry`; a plugin adds one with a single `register` call)."]
    for registry, field, what in ((METHODS, "description", "`train.method`"),
                                  (TEACHERS, "description", "`train.teacher.kind`"),
                                  (LOSSES, "description", "`train.loss`; the divergence and its direction"),
                                  (SAMPLERS, "description", "`train.sampler`"),
                                  (PROMPT_SETS, None, "`prompts` / `probes` / `anchor` `builtin:`"),
                                  (SUITES, "metric", "`regression.suites`; the metric")):
        out += ["", f"### {registry.kind.capitalize()}", ""]
        if field is None:
            out.append(f"{what}: " + ", ".join(f"`{name}`" for name in registry.names()) + ".")
            continue
        out += [f"| Name | {what} |", "|---|---|"]
        out += [f"| `{name}` | {_cell(getattr(registry.get(name), field))} |" for name in registry.names()]
    return "\n".join(out) + "\n"


def _sections(model: type[BaseModel], path: str = ""):
    """(dotted path, model) for the model and every model nested in it, depth first."""
    yield path, model
    for name, field in model.model_fields.items():
        nested = _nested_model(field.annotation)
        if nested:
            items = "[]" if _is_list(field.annotation) else ""
            yield from _sections(nested, (f"{path}.{name}" if path else name) + items)


def _is_list(annotation: Any) -> bool:
    return typing.get_origin(annotation) is list or any(typing.get_origin(a) is list
                                                        for a in typing.get_args(annotation))


def _nested_model(annotation: Any, deep: bool = True) -> type[BaseModel] | None:
    # `Probes | None` counts: the section is optional, its fields still need a table. With
    # ``deep``, so do models inside lists and tagged unions (regression.suites' items).
    if deep:
        return spec._model_in(annotation)
    return next((a for a in (annotation, *typing.get_args(annotation))
                 if isinstance(a, type) and issubclass(a, BaseModel)), None)


def _type(annotation: Any, metadata: Any = ()) -> str:
    # pydantic moves a field's own Annotated[...] metadata to field.metadata; nested ones stay.
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return _type(args[0], annotation.__metadata__)
    named = [CHECKED_STRINGS.get(m.func) or f"registered {m.func.registry.kind} name" for m in metadata
             if isinstance(m, AfterValidator) and (m.func in CHECKED_STRINGS or hasattr(m.func, "registry"))]
    if named:
        return named[0]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    if origin is Literal:
        return "one of " + ", ".join(f"`{v}`" for v in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type(a) for a in args)
    if origin is list:
        return f"list of {_type(args[0])}"
    return PLAIN_TYPES.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _bounds(metadata: list) -> list[str]:
    """Constraints from ``Field(gt=..., min_length=...)``, as short phrases."""
    out = []
    for m in metadata:
        if type(m) in BOUNDS:
            sign, attr = BOUNDS[type(m)]
            out.append(sign + str(getattr(m, attr)))
        elif isinstance(m, at.MinLen):
            out.append(f"at least {m.min_length} item{'s' * (m.min_length != 1)}")
    return out


def _default(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        return "all defaults" if isinstance(value, BaseModel) else f"`{json.dumps(value)}`"
    if field.default is PydanticUndefined:
        return "required"
    return f"`{json.dumps(field.default)}`"   # JSON spells values as YAML does: null, true


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


# --- the CLI ---------------------------------------------------------------------------

def cli_reference() -> str:
    """Markdown: the ``--help`` of ``cl`` and of every command and subcommand."""
    from engrain.cli.main import cli   # here, so rendering the spec needs no CLI package

    out = ["# CLI reference", "",
           f"<!-- Generated from engrain.cli by `{REGENERATE.format(kind='cli', file='CLI.md')}`;"
           " do not edit. -->"]
    # A fixed width: the terminal's would make the output depend on who ran it.
    root = click.Context(cli, info_name="cl", terminal_width=78, max_content_width=78,
                         **cli.context_settings)
    stack = [(root, 2)]
    while stack:
        ctx, level = stack.pop()
        out += ["", f"{'#' * level} {ctx.command_path}", "", "```", ctx.get_help(), "```"]
        if isinstance(ctx.command, click.Group):
            commands = [(name, ctx.command.get_command(ctx, name))
                        for name in ctx.command.list_commands(ctx)]
            # context_settings too, or the help would differ from what `cl ... --help` prints.
            children = [click.Context(cmd, info_name=name, parent=ctx, **cmd.context_settings)
                        for name, cmd in commands]
            stack += [(child, level + 1) for child in reversed(children)]
    return "\n".join(out) + "\n"


# --- entry point -----------------------------------------------------------------------

RENDERERS = {"spec": spec_reference, "cli": cli_reference}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in RENDERERS:
        print("usage: python -m engrain.cli.docgen {spec|cli} > docs/{SPEC|CLI}.md", file=sys.stderr)
        return 2
    sys.stdout.write(RENDERERS[args[0]]())
    return 0


if __name__ == "__main__":
    sys.exit(main())
