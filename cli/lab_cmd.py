"""`cl lab ...`: build and evaluate the embedded lab model."""

from __future__ import annotations

import time
from pathlib import Path

import click


@click.group()
def lab():
    """The embedded lab model: a tiny Llama pretrained on a synthetic world.

    It can follow hints in context (the teacher's skill), several at once and in new
    wordings, read a passage and follow a correction in a later turn, but has never seen
    the held-out behaviors (pineapple spelled "pinapple", the sign-off "Signed, Tolavi
    Desk.", the opener "Greetings from Mavuko!").
    """


@lab.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("lab-build/model"),
              show_default=True, help="Folder to write the model to.")
@click.option("--preset", type=click.Choice(["cpu", "gpu", "tiny"]), default="cpu", show_default=True,
              help="cpu: ~1 h on 2 cores; gpu: the DESIGN.md recipe, ~5 min on an H100; tiny: a smoke test.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--steps", type=int, help="Override the preset's number of steps.")
@click.option("--mix", type=click.Choice(["base", "reading"]), default="base", show_default=True,
              help="base: the committed model's families; reading: every family (hints in generated "
                   "wordings, several at once, passages, corrections).")
@click.option("--init", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Continue pretraining this model folder (its tokenizer too) instead of starting afresh.")
@click.option("--lr", type=float, help="Override the preset's peak learning rate.")
@click.option("--tokenizer", type=click.Choice(["prefix", "spaced"]), default="prefix", show_default=True,
              help="prefix: a word's leading space in its first piece (the committed model's); spaced: "
              "every space its own token, so a word copied from the context is the same pieces.")
def build(out, preset, seed, steps, mix, init, lr, tokenizer):
    """Generate the world, train the tokenizer and pretrain the model into OUT."""
    from engrain.lab.build import build as run_build
    run_build(out, preset, seed, steps, log=click.echo, mix=mix, init=init, lr=lr, save_every=500,
              tokenizer_scheme=tokenizer)
    click.echo(f"wrote {out}; evaluate it with: cl lab eval --model {out}")


@lab.command("eval")
@click.option("--model", "model_dir", default="lab", show_default=True,
              help='"lab" (the embedded model) or a model folder.')
@click.option("--adapter", type=click.Path(exists=True, path_type=Path),
              help="A trained adapter folder to evaluate on top of the model.")
@click.option("-n", type=int, default=200, show_default=True, help="Prompts per suite.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--no-reading", is_flag=True,
              help="Leave out the reading lines (held-out wordings, compound hints, passages, turns).")
def eval_cmd(model_dir, adapter, n, seed, as_json, no_reading):
    """Print the lab scorecard (temperature 1, eval-split questions): each held-out behavior
    without and with its hint, specificity, arithmetic, capitals, facts, in-distribution hint
    following; then the reading lines: hints in wordings pretraining never saw, two or three
    hints at once, questions answered from a passage (and without it), corrections in a
    later turn and unrelated next turns."""
    import json

    from rich.console import Console
    from rich.table import Table

    from engrain.checks.evals import run_suites
    from engrain.lab.reading import MAX_NEW_TOKENS as READING_TOKENS
    from engrain.lab.reading import reading_suites
    from engrain.lab.suites import scorecard_suites
    from engrain.engine.models import load_plain

    t0 = time.time()
    model, tok = load_plain(model_dir, adapter)
    results = run_suites(model, tok, scorecard_suites(n), seed=seed)
    if not no_reading:
        results += run_suites(model, tok, reading_suites(n), seed=seed, max_new_tokens=READING_TOKENS)
    secs = time.time() - t0
    if as_json:
        click.echo(json.dumps([{"suite": r.suite, "metric": r.metric, "value": r.value, "n": r.n}
                               for r in results] + [{"seconds": round(secs, 1)}], indent=2))
        return
    table = Table(title=f"lab scorecard: {model_dir}" + (f" + {adapter}" if adapter else ""))
    for col in ("suite", "metric", "value", "n", "example"):
        table.add_column(col)
    for r in results:
        table.add_row(r.suite, r.metric, f"{r.value:.3f}", str(r.n), (r.examples[0] if r.examples else "")[:60])
    Console().print(table)
    click.echo(f"{secs:.1f} s (load + {sum(r.n for r in results)} graded samples)")
