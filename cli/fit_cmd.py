"""`cl fit`: train one behavior's adapter.

An error never shows a traceback unless asked for (``--debug`` or ``ENGRAIN_DEBUG=1``): a
spec problem prints as ``error: file:line: message. Fix: ...``, anything else that stops
the fit (a model that will not load, a part that cannot be built) as one ``error:`` line.
"""

from __future__ import annotations

from pathlib import Path

import click

from engrain.checks.gate import EXIT_CODES
from engrain.cli.common import eval_n_option, out_dir_option, store_option

from engrain.registry import METHODS, SAMPLERS

# The gate's outcome -> exit code. regressed: something the gate guards dropped; not
# learned: nothing regressed, but the behavior fell short of the spec's learned: bar.
EXIT_INTERRUPTED = 130
EXIT_ERROR = 1          # bad input (the spec, the model) or a setup that failed: as `cl validate`


@click.command()
@click.argument("spec", required=False, type=click.Path(path_type=Path))
@click.option("--method", type=click.Choice(METHODS.names()),
              help="Override train.method: rmsd (masked), opsd (every position), sft (baseline).")
@click.option("--steps", type=click.IntRange(min=1), help="Override train.steps (the most steps; early stop may end sooner).")
@click.option("--seed", type=click.IntRange(min=0), help="Override train.seed (sampling and prompt splits of files).")
@click.option("--model", help='Override the spec\'s model: a name ("lab", "smollm2-135m"), a .gguf file, a local folder or a hub id.')
@click.option("--judge", "judge_model",
              help='Override judge.model: "delta", "first", "self", or a litellm model string such as openai/gpt-5-mini.')
@click.option("--sampler", type=click.Choice(SAMPLERS.names()),
              help="Override train.sampler: hf (transformers generate) or vllm (pip install 'engrain[vllm]').")
@click.option("--qlora/--no-qlora", default=None,
              help="Override train.qlora: load the base model in 4 bits (NF4; pip install 'engrain[qlora]'), "
                   "on the GPU or the CPU. The run records the mode (cl show: config.qlora).")
@out_dir_option("OUT_DIR/<behavior>/<run-id>/adapter")
@store_option
@click.option("--resume", metavar="RUN", help="Continue an interrupted run from its last checkpoint.")
@click.option("--on", "on", metavar="ADAPTER", multiple=True,
              help="Build on earlier behaviors: an accepted run's id or its adapter folder (a composed run "
                   "too). The gate also checks each keeps its figures.")
@click.option("--lineage", type=click.Choice(["replay", "merge"]), default="replay", show_default=True,
              help="replay: SPEC fit alone first, then one adapter from the --on one trained on every "
                   "behavior, each taught by an adapter that carries it; merge: the --on adapters (repeatable) "
                   "merged into the base, a new adapter on top.")
@click.option("--from-logs", "from_logs", metavar="LOG.jsonl", type=click.Path(dir_okay=False, path_type=Path),
              help='Learn from users\' conversations ({"messages": [...]} a line): each assistant turn a user '
                   "turn follows is a lesson, its teacher reading that next turn; SPEC's prompts and hints give "
                   "way, its patterns, suites and anchor stay.")
@eval_n_option
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--keep-rejected", is_flag=True,
              help="Keep an adapter that fails the forgetting gate (still exits 3).")
@click.option("--no-progress", is_flag=True, help="No progress bar (for logs and CI).")
@click.option("--debug", is_flag=True, envvar="ENGRAIN_DEBUG",
              help="On an error, show the Python traceback instead of one line. [or ENGRAIN_DEBUG=1]")
def fit(spec, method, steps, seed, model, judge_model, sampler, qlora, out_dir, store, resume, on, lineage, from_logs,
        eval_n, checkpoint_every, keep_rejected, no_progress, debug):
    """Train a LoRA adapter for the behavior in SPEC with relevance-masked self-distillation.

    \b
    Each step: the student answers a batch of the spec's prompts; the same model, with a
    hint in its context, scores those answers; the positions where they disagree most
    and that the judge deems relevant (plus any token the student drifted into that the
    teacher and the base model both rule out, such as a loop) get a distillation loss
    (forward KL by default); an anchor keeps the model's answers to unrelated prompts
    where they were; the adapter updates.

    \b
    Every train.eval_every steps the adapter is scored on validation prompts; the best
    checkpoint is kept, and training stops early once the behavior has plateaued.
    Before and after, the behavior (without and with the hint), its specificity probes,
    the share of well-formed answers and the regression suites are evaluated on held-out
    prompts, at temperature 1 (what the gate reads) and greedily (shown beside it).

    \b
    With --on RUN (an accepted run: one behavior or a composition), the result is one
    adapter that carries them all: SPEC is first fit alone (run SPEC-teacher), then an
    adapter started from RUN's is trained on every behavior, each taught by an adapter that
    carries it (RUN's, frozen, for the earlier ones; SPEC-teacher for the new one) at its own
    mask's positions. The gate compares each earlier behavior with its figure on RUN's
    adapter; losing one refuses the adapter (exit 3) and names it. --lineage merge instead
    merges the --on adapters into the base and trains a new adapter on top of them.

    \b
    Examples:
      cl fit behaviors/pinapple.yaml                     the lab model, on the CPU
      cl fit behaviors/pinapple.yaml --method opsd       the unmasked baseline
      cl fit behaviors/billing-api.yaml --judge openai/gpt-5-mini
      cl fit behaviors/pinapple.yaml --sampler vllm      rollouts and evals on vLLM
      cl fit behaviors/pinapple.yaml --qlora             the base model in 4 bits
      cl fit --resume 4f1c9a2e                           after Ctrl-C or a crash
      cl fit behaviors/signoff.yaml --on 4f1c9a2e        learn sign-off on top of pinapple
      cl fit behaviors/support-logs.yaml --from-logs chats.jsonl   learn from what users told the model

    \b
    Exit codes: 0 adapter accepted; 1 bad input or a failed setup (one error line;
    --debug shows the traceback); 2 usage; 3 rejected, regressed (a guarded figure
    dropped more than regression.max_drop, or, with --on, training lost an earlier
    behavior); 4 rejected, not learned (the behavior without the hint fell short of
    the spec's learned: bar); 130 interrupted (a checkpoint was saved).
    """
    if not spec and not resume:
        raise click.UsageError("give a SPEC file, or --resume RUN")
    if from_logs and not spec:
        raise click.UsageError("--from-logs needs a SPEC for its graders (patterns, suites, anchor): "
                               "cl fit SPEC --from-logs LOG.jsonl")
    try:
        from engrain.fit import FitInterrupted, fit as run_fit   # torch: here, so `cl --help` stays instant
    except Exception as e:      # noqa: BLE001 - e.g. torch missing or broken
        _fail(e, debug)
    try:
        result = run_fit(spec, method=method, steps=steps, seed=seed, model=model, judge=judge_model, sampler=sampler,
                         qlora=qlora, out_dir=out_dir, store=store, resume=resume, on=list(on), lineage=lineage,
                         from_logs=from_logs, eval_n=eval_n,
                         checkpoint_every=checkpoint_every, keep_rejected=keep_rejected,
                         progress=not no_progress, log=click.echo)
    except FitInterrupted as e:
        click.echo(str(e), err=True)
        raise SystemExit(EXIT_INTERRUPTED)
    except Exception as e:      # noqa: BLE001 - whatever stopped the fit: one line, not a traceback
        _fail(e, debug)
    if result is None:      # a rank other than 0 of a data-parallel fit: rank 0 reports
        return
    click.echo(f"run {result.run_id}: {result.outcome} in {result.seconds:.0f} s")
    if result.status == "rejected":
        where = result.adapter_path if keep_rejected else "(not kept)"
        click.echo(f"adapter rejected: {result.verdict.summary()} {where}", err=True)
        raise SystemExit(EXIT_CODES[result.outcome])
    click.echo(f"adapter: {result.adapter_path}")
    if result.promoted:
        click.echo(f"promoted: the current adapter of {result.run_dir.parent.name} (its first accepted one)")
    else:
        click.echo(f"not promoted (the behavior has a current adapter); make this one current with: "
                   f"cl adapters promote {result.run_id[:8]}")
    click.echo(f"try it:  cl generate --adapter {result.run_id[:8]} --base \"your question\"   (or cl chat)")
    click.echo(f"load it with: PeftModel.from_pretrained(base_model, '{result.adapter_path}')")


def _fail(e: Exception, debug: bool):
    if debug:
        raise e
    click.echo(error_lines(e), err=True)
    raise SystemExit(EXIT_ERROR)


def error_lines(e: Exception) -> str:
    """What ``cl fit`` prints for an error: ``error: file:line: ... Fix: ...`` for each spec
    problem; one line for anything else (the type where the message alone may not say it)."""
    from engrain.errors import EngrainError
    from engrain.spec.load import SpecError

    if isinstance(e, SpecError):
        return "\n".join(f"error: {err}" for err in e.errors)
    message = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, (EngrainError, FileNotFoundError)):      # their messages say what to do
        return f"error: {message}"
    return f"error: {message} ({type(e).__name__}; --debug shows the traceback)"
