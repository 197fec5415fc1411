"""`cl eval`: re-run a run's checks (forgetting and learning) on demand."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("eval")
@click.argument("target")
@click.option("--out-dir", type=click.Path(path_type=Path), default=Path("adapters"), show_default=True,
              help="Where to look for RUN's folder.")
@click.option("--store", type=click.Path(path_type=Path), envvar="ENGRAIN_STORE",
              help="Record the figures in this run store. [default: ./engrain.duckdb]")
@click.option("-n", type=click.IntRange(min=1), default=200, show_default=True, help="Prompts per suite.")
def eval_cmd(target, out_dir, store, n):
    """Evaluate TARGET (a run id, or an adapter folder) against its base model.

    Prints the behavior, specificity, well-formedness and regression figures for base and
    adapter on the held-out prompts (temperature 1), and the gate's verdict; exits 3 if
    something regressed, 4 if the behavior is not learned.
    """
    from rich.console import Console
    from rich.table import Table

    from engrain.rundir import RunError, describe, recheck
    from engrain.store import Store
    from engrain.store.rows import eval_rows
    from engrain.store.views import recorded_gate

    try:
        adapter = describe(target, out_dir)
        if adapter.run_dir is None:
            raise RunError(f"{adapter.path} is an adapter folder without its run (no run.json beside it): "
                           "cl eval rechecks a run's adapter against its stored spec")
        run_dir = adapter.run_dir
        spec, base, after, verdict = recheck(run_dir, n)
    except (FileNotFoundError, RunError) as e:
        raise click.ClickException(str(e))
    table = Table(title=f"{spec.name}: base vs adapter ({run_dir.name})")
    for col in ("suite", "metric", "base", "adapter"):
        table.add_column(col)
    for b, a in zip(base, after):
        table.add_row(b["suite"], b["metric"], f"{b['value']:.3f}", f"{a['value']:.3f}")
    Console().print(table)
    # The fit's own gate (checks.gate.gated, through recheck) on the figures above; the
    # verdict the fit recorded is printed beside it, so a difference shows.
    click.echo(f"gate: {verdict.summary()}")
    db = Store(store) if store else Store()
    run_id = run_dir.name
    try:
        adapters = db.adapters(run_id)
        recorded = recorded_gate(adapters[-1]["details"]) if adapters else None
        click.echo(f"(recomputed on these figures; recorded by the fit: "
                   f"{recorded.summary() if recorded is not None else 'none'})")
        db.log_evals(run_id, eval_rows(base, step=0, subject="base")
                     + eval_rows(after, step=_adapter_step(run_dir, spec.train.steps), subject="adapter"))
    except Exception as e:  # noqa: BLE001 - the figures are printed either way; the store is a bonus here
        click.echo(f"(not recorded in the store: {e})", err=True)
    if not verdict.passed:
        from engrain.checks.gate import EXIT_CODES
        raise SystemExit(EXIT_CODES[verdict.outcome])


def _adapter_step(run_dir: Path, default: int) -> int:
    """The steps the saved adapter had trained: the kept checkpoint's, as the fit wrote it."""
    try:
        return int(json.loads((run_dir / "metrics.json").read_text())["best_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return default
