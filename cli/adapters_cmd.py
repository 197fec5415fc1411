"""`cl adapters`: the adapter library (list, promote, rollback). Never imports torch."""

from __future__ import annotations

import click

from engrain.cli.store_cmds import VERDICT_STYLE, _console, _Markup, _num, _open, _print_json, _table, friendly, \
    json_option, store_option


def _lineage(on) -> str:
    """``behavior@run8`` for each adapter folder it was trained on (…/<behavior>/<run>/adapter)."""
    from pathlib import Path
    return ", ".join(f"{Path(p).parent.parent.name}@{Path(p).parent.name[:8]}" for p in on) or "—"


def _carries(entry) -> str:
    """What the adapter carries, each behavior with its rate when there are several."""
    if len(entry.carries) < 2:
        return entry.behavior
    return ", ".join(f"{b} {_num(r)}" for b, r in zip(entry.carries, entry.rates))


def _regression(entry) -> str:
    if entry.worst_drop is None:
        return "—"
    return f"{entry.worst_drop:+.3f}" + (f" {entry.worst_suite}" if entry.worst_suite else "")


def _library_error(fn):
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from engrain.library import LibraryError
        try:
            return fn(*args, **kwargs)
        except LibraryError as err:
            raise click.ClickException(str(err)) from None
    return wrapper


@click.group(invoke_without_command=True)
@click.option("--behavior", metavar="NAME", help="Only this behavior's adapters.")
@click.option("--all", "show_all", is_flag=True, help="Include adapters the gate rejected.")
@store_option
@json_option
@click.pass_context
@friendly
def adapters(ctx, behavior, show_all, store_path, as_json):
    """The adapter library: each behavior's adapters, the current one marked (*).

    \b
    The current adapter of a behavior is the one `cl serve` serves and the pointer
    adapters/.current/<behavior> names (a relative symlink; vLLM's filesystem LoRA
    resolver reads that folder). The first accepted fit of a behavior becomes current by
    itself; later ones are promoted by hand, and a rollback returns to the one before.

    \b
    Examples:
      cl adapters                          accepted and kept adapters, by behavior
      cl adapters --behavior pinapple --all   with the rejected ones
      cl adapters promote 4f1c9a2e         make that run's adapter current
      cl adapters rollback pinapple        back to the previous current one
    """
    if ctx.invoked_subcommand is not None:
        return
    from engrain.library import adapters as list_adapters
    entries = [e for e in list_adapters(_open(store_path), behavior) if show_all or e.verdict != "rejected"]
    if as_json:
        _print_json([{**e.__dict__, "path": str(e.path)} for e in entries])
        return
    if not entries:
        click.echo("No adapters yet: `cl fit SPEC` trains one." if not behavior and not show_all else
                   "No adapters match (--all includes rejected ones).")
        return
    rows = [("*" if e.current else "", _carries(e), e.short, e.method or "—",
             _Markup(f"[{VERDICT_STYLE.get(e.verdict, 'white')}]{e.verdict}[/]"), _num(e.behavior_rate),
             _regression(e), _lineage(e.on)) for e in entries]
    headers = ("", "behavior", "run", "method", "verdict", "rate", "worst drop", "on")
    console = _console()
    console.print(_table(None, headers, rows, justify_right=("rate",), compact=True,
                         no_wrap=[h for h in headers if h != "on"], min_width={"on": 10}))
    console.print("* current; rate: the behavior without the hint (temperature 1; a composition's: its weakest "
                  "behavior's, each listed beside it); on: trained on these",
                  markup=False)


@adapters.command()
@click.argument("run_id", metavar="RUN")
@click.option("--force", is_flag=True, help="Promote an adapter the gate did not accept.")
@store_option
@friendly
@_library_error
def promote(run_id, force, store_path):
    """Make RUN's adapter its behavior's current one (recorded with who and when)."""
    from engrain.engine.models import ModelError, resolve_model_path
    from engrain.library import base_mismatch, current_dir, promote as do_promote
    entry = do_promote(_open(store_path), run_id, force=force)
    click.echo(f"{entry.behavior}: current adapter is now {entry.short} ({entry.path}); "
               f"{current_dir(entry.path) / entry.behavior} points at it")
    try:
        mismatch = base_mismatch(entry, resolve_model_path(entry.model))
    except ModelError as err:
        mismatch = str(err)
    if mismatch:
        click.echo(f"warning: {mismatch}", err=True)


@adapters.command()
@click.argument("behavior")
@store_option
@friendly
@_library_error
def rollback(behavior, store_path):
    """Return BEHAVIOR to the adapter that was current before."""
    from engrain.library import rollback as do_rollback
    entry = do_rollback(_open(store_path), behavior)
    click.echo(f"{behavior}: rolled back; current adapter is now {entry.short} ({entry.path})")
