"""`cl compose`: several behaviors learned into one adapter, each from its own teacher."""

from __future__ import annotations

from pathlib import Path

import click

from engrain.cli.common import eval_n_option, out_dir_option, store_option
from engrain.checks.gate import EXIT_CODES
from engrain.cli.fit_cmd import EXIT_INTERRUPTED, _fail


@click.command()
@click.argument("specs", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--steps", type=click.IntRange(min=1),
              help="Steps per behavior (the most; early stop may end sooner). [default: the specs' largest train.steps]")
@click.option("--seed", type=click.IntRange(min=0), help="Override train.seed for every behavior.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True),
              help="The shared optimizer's peak learning rate. [default: the first spec's train.lr]")
@click.option("--schedule", type=click.Choice(["turns", "weakest"]), default="turns", show_default=True,
              help="turns: each behavior in turn; weakest: after each val eval, the behavior furthest below "
                   "its bar gets an extra turn per round.")
@click.option("--design", type=click.Choice(["consolidate", "claims", "masks", "opsd", "sft"]),
              default="consolidate", show_default=True,
              help="consolidate: each behavior taught by an adapter that carries it (--teacher, or fit alone "
                   "first), on the student's prompt; claims: each taught by the base model reading its own hint; "
                   "both keep each behavior's mask off the positions the others claim; masks: no claims; "
                   "opsd: every position; sft: the hinted teachers' samples (benchmarks/compose_designs.py "
                   "compares them; RESULTS.md section 32).")
@click.option("--teacher", "teachers", multiple=True, metavar="RUN_OR_DIR",
              help="The adapter that carries each behavior (a run id or an adapter folder), once per spec, in "
                   "the specs' order (design consolidate). Without it, each spec is first fit alone as "
                   "NAME-teacher (gated on its suites less hint following).")
@out_dir_option("OUT_DIR/<a+b>/<run-id>/adapter")
@store_option
@eval_n_option
@click.option("--resume", metavar="RUN", help="Continue an interrupted composition from its latest checkpoint "
              "(its stored specs and options; give no SPECS).")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=10, show_default=True,
              help="Save a resumable checkpoint every N steps (and on Ctrl-C, SIGTERM or a crash).")
@click.option("--no-progress", is_flag=True, help="No progress bar (for logs and CI).")
@click.option("--debug", is_flag=True, envvar="ENGRAIN_DEBUG", help="On an error, show the traceback.")
def compose(specs, steps, seed, lr, schedule, design, teachers, out_dir, store, eval_n, resume, checkpoint_every,
            no_progress, debug):
    """Learn the behaviors of two or more SPECS into one adapter.

    \b
    First, each behavior without a --teacher is fit alone (as NAME-teacher, gated on its
    suites less hint following). Then steps take the behaviors in turn on one adapter: each
    behavior's teacher is its own adapter, frozen, reading the student's prompt (no hint), and
    its loss, judge and guard stay off every position another behavior claims (its words,
    imperfect attempts included, and for a sign-off or an opener the whole end or start of the
    answer). The anchor keeps everything outside all of the behaviors where the base model was.

    \b
    The gate reads every behavior (its rate without the hint against its own bar, its
    specificity) and the union of the specs' regression suites. Exit codes: 0 accepted,
    3 regressed (something gated dropped, or a behavior was lost: the line names it),
    4 not learned, 1 an error.

    \b
    Ctrl-C, SIGTERM or a crash leave a checkpoint: continue with --resume RUN.

    \b
    Examples:
      cl compose behaviors/pinapple.yaml behaviors/signoff.yaml
      cl compose a.yaml b.yaml --teacher 4f1c9a2e --teacher 7d03b1aa
      cl compose behaviors/pinapple.yaml behaviors/signoff.yaml --design claims
      cl compose --resume 4f1c9a2e
    """
    if bool(specs) == bool(resume):
        raise click.UsageError("give two or more SPECS, or --resume RUN (not both)")
    try:
        from engrain.consolidation import compose as run_compose
        from engrain.fit import FitInterrupted
    except Exception as e:      # noqa: BLE001 - e.g. torch missing or broken
        _fail(e, debug)
    try:
        result = run_compose(list(specs), steps=steps, seed=seed, lr=lr, schedule=schedule, design=design,
                             out_dir=out_dir, store=store, eval_n=eval_n, progress=not no_progress, log=click.echo,
                             resume=resume, checkpoint_every=checkpoint_every, teachers=list(teachers) or None)
    except FitInterrupted as e:
        click.echo(str(e), err=True)
        raise SystemExit(EXIT_INTERRUPTED)
    except Exception as e:      # noqa: BLE001 - one line, not a traceback
        _fail(e, debug)
    click.echo(f"run {result.run_id}: {result.outcome} in {result.seconds:.0f} s")
    if not result.verdict.passed:
        click.echo(f"adapter rejected: {result.verdict.summary()}", err=True)
        raise SystemExit(EXIT_CODES[result.outcome])
    click.echo(f"adapter: {result.adapter_path} (carries {', '.join(result.behaviors)})")
    click.echo(f"try it:  cl generate --adapter {result.run_id[:8]} \"your question\"")
