"""`cl generate` and `cl chat`: try adapters (engrain.use) from the shell."""

from __future__ import annotations

import json
from pathlib import Path

import click


def model_options(f):
    """What both commands load: adapters by path, run or behavior, the base, the gate's say."""
    for option in reversed([
        click.option("--adapter", "adapters", metavar="PATH_OR_RUN", multiple=True,
                     help="An adapter folder or a run id (repeat for several)."),
        click.option("--behavior", "behaviors", metavar="NAME", multiple=True,
                     help="A behavior's current adapter in the library (`cl adapters`); repeatable."),
        click.option("--model", help="The base model; defaults to the adapters' own (another base is refused)."),
        click.option("--out-dir", type=click.Path(path_type=Path), default=Path("adapters"), show_default=True,
                     help="Where run ids are looked up."),
        click.option("--store", type=click.Path(path_type=Path), envvar="ENGRAIN_STORE",
                     help="The run store (DuckDB file). [default: ./engrain.duckdb, or $ENGRAIN_STORE]"),
        click.option("--ungated", is_flag=True,
                     help="Apply adapters of different behaviors together although no gate checked them together."),
        click.option("--greedy", is_flag=True, help="Greedy decoding instead of sampling."),
        click.option("--temperature", type=click.FloatRange(min=0.0, min_open=True), default=1.0, show_default=True,
                     help="Sampling temperature (the gate's figures are at 1.0)."),
        click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True),
        click.option("--max-new-tokens", type=click.IntRange(min=1), default=128, show_default=True),
        click.option("--debug", is_flag=True, envvar="ENGRAIN_DEBUG", help="On an error, show the traceback."),
    ]):
        f = option(f)
    return f


def _load(adapters, behaviors, model, out_dir, store, ungated, debug):
    from engrain.cli.fit_cmd import _fail
    try:
        from engrain.use import load
        return load(model, adapters=adapters, behaviors=behaviors, store=store, ungated=ungated, out_dir=out_dir)
    except Exception as e:      # noqa: BLE001 - one error line, as cl fit
        _fail(e, debug)


@click.command()
@click.argument("prompt", required=False)
@click.option("-f", "--file", "prompts_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help='Prompts: a .jsonl file of {"prompt": ...} objects, or a text file with one a line.')
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the answers as JSONL here (default: standard output).")
@click.option("--base", is_flag=True, help="Also answer with the adapters off, beside the adapted answer.")
@model_options
def generate(prompt, prompts_file, out, base, adapters, behaviors, model, out_dir, store, ungated, greedy,
             temperature, seed, max_new_tokens, debug):
    """Answer PROMPT (or each prompt of a file) with the adapted model.

    \b
    The prompt is shown to the model as training showed it to the student: no hint, the
    model's own chat template. One prompt prints the answer as text; a file gives JSONL
    (one {"prompt", "answer"[, "base"]} object a line).

    \b
    Examples:
      cl generate --behavior pinapple "What fruits go in a smoothie?" --greedy
      cl generate --adapter 4f1c9a2e --base "What fruits go in a smoothie?"
      cl generate --behavior signoff -f questions.txt -o answers.jsonl
    """
    if bool(prompt) == bool(prompts_file):
        raise click.UsageError("give one PROMPT, or -f FILE")
    loaded = _load(adapters, behaviors, model, out_dir, store, ungated, debug)
    from engrain.use import generate as answer, read_prompts
    try:
        prompts = read_prompts(prompts_file) if prompts_file else [prompt]
    except Exception as e:      # noqa: BLE001
        from engrain.cli.fit_cmd import _fail
        _fail(e, debug)
    kw = dict(greedy=greedy, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
    answers = answer(loaded, prompts, **kw)
    bases = answer(loaded, prompts, base=True, **kw) if base else None
    if prompts_file is None and out is None:
        if bases is None:
            click.echo(answers[0])
        else:
            label = "+".join(loaded.behaviors) or "model"
            click.echo(f"[{label}] {answers[0]}\n[base] {bases[0]}")
        return
    rows = [{"prompt": p, "answer": a, **({"base": bases[i]} if bases else {})}
            for i, (p, a) in enumerate(zip(prompts, answers))]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if out:
        out.write_text(text, encoding="utf-8")
        click.echo(f"{len(rows)} answers -> {out}", err=True)
    else:
        click.echo(text, nl=False)


@click.command()
@model_options
def chat(adapters, behaviors, model, out_dir, store, ungated, greedy, temperature, seed, max_new_tokens, debug):
    """Talk to the adapted model; the conversation is kept for the session.

    \b
    /reset forgets the conversation; /quit (or end of input, Ctrl-D) ends it. The oldest
    turns are dropped once the conversation outgrows the model's context.

    \b
    Example:
      cl chat --behavior signoff
    """
    loaded = _load(adapters, behaviors, model, out_dir, store, ungated, debug)
    from engrain.use import generate as answer, trim_history
    names = ", ".join(loaded.behaviors) or "no adapter"
    click.echo(f"{loaded.source} with {names}. /reset forgets, /quit ends.")
    history: list[dict] = []
    turn = 0
    while True:
        try:
            line = click.prompt("you", prompt_suffix="> ", default="", show_default=False)
        except (EOFError, click.Abort):
            click.echo()
            return
        line = line.strip()
        if line == "/quit":
            return
        if line == "/reset":
            history = []
            click.echo("(conversation forgotten)")
            continue
        if not line:
            continue
        history = trim_history(loaded, history + [{"role": "user", "content": line}], max_new_tokens)
        reply = answer(loaded, [history], greedy=greedy, temperature=temperature,
                       max_new_tokens=max_new_tokens, seed=seed + turn)[0]
        turn += 1
        history.append({"role": "assistant", "content": reply})
        click.echo(f"model> {reply}")
