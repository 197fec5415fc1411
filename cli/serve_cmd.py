"""`cl serve`: vLLM's OpenAI-compatible server on the base model with the current adapters."""

from __future__ import annotations

import shlex

import click

from engrain.cli.store_cmds import _open, friendly, store_option

INSTALL = "cl serve needs vLLM: pip install 'engrain[vllm]' (in its own environment: see README, \"vLLM\")"


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--behavior", "behaviors", metavar="NAME", multiple=True,
              help="Serve this behavior's current adapter (repeat; default: every behavior with one).")
@click.option("--port", type=click.IntRange(1, 65535), help="The server's port (vLLM's default: 8000).")
@click.option("--print", "print_only", is_flag=True, help="Print vLLM's server command and exit.")
@store_option
@click.argument("vllm_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- VLLM FLAGS]")
@friendly
def serve(behaviors, port, print_only, store_path, vllm_args):
    """Serve the base model with each behavior's current adapter as a named LoRA module.

    \b
    One model name per behavior (its current adapter, read through
    adapters/.current/<behavior>, so a restart after `cl adapters promote` serves the new
    one), plus "base" for the model without any. Flags after -- go to vLLM as they are.

    \b
    Examples:
      cl serve --print                          the command, shell-quoted
      cl serve --behavior pinapple --port 8001
      cl serve -- --gpu-memory-utilization 0.5
      curl localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\
        -d '{"model": "pinapple", "messages": [{"role": "user", "content": "A smoothie?"}]}'
    """
    import importlib.util
    import os
    import sys

    from engrain.engine.models import ModelError, pick_device, pick_dtype, resolve_model_path
    from engrain.library import LibraryError, adapters, base_mismatch, current, serve_command
    db = _open(store_path)
    try:
        if behaviors:
            entries = [current(db, b) for b in behaviors]
        else:
            entries = [e for e in adapters(db) if e.current]
    except LibraryError as err:
        raise click.ClickException(str(err)) from None
    models = sorted({e.model for e in entries})
    if len(models) > 1:
        raise click.ClickException(f"the current adapters belong to different base models ({', '.join(models)}); "
                                   "serve one model's behaviors at a time with --behavior")
    try:
        model_path = resolve_model_path(models[0] if models else "lab")
    except ModelError as err:
        raise click.ClickException(str(err)) from None
    for e in entries:
        if e.on:
            click.echo(f"warning: {e.behavior} ({e.short}) was trained on top of other adapters; served on the bare "
                       f"base it lacks them (serve `cl export {e.short} --merged DIR` instead)", err=True)
        if (why := base_mismatch(e, model_path)) is not None:
            click.echo(f"warning: {why}", err=True)
    dtype = str(pick_dtype(pick_device())).removeprefix("torch.")    # what cl generate computes in
    cmd = serve_command(entries, model_path, dtype=dtype, port=port, extra=tuple(vllm_args), python=sys.executable)
    if print_only:
        click.echo(shlex.join(cmd))
        return
    if importlib.util.find_spec("vllm") is None:
        raise click.ClickException(INSTALL)
    click.echo(f"serving {', '.join(['base', *(e.behavior for e in entries)])}: {shlex.join(cmd)}", err=True)
    os.execv(cmd[0], cmd)
