"""Read-side commands over the run store: ``cl runs``, ``cl show RUN``, ``cl report RUN``.

They import the store (DuckDB) and rich only, never torch, so they start instantly, and
they open the store read-only per query, so they work while a fit is writing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import sys

import click
from rich.markup import escape

from engrain.store import SUBJECTS, Store, StoreError
from engrain.store.views import RECOMPUTED, gate_row, latest_scores, run_verdict, summaries

VERDICT_STYLE = {"accepted": "green", "rejected": "red", "kept": "yellow"}
STATUS_STYLE = {"running": "cyan", "completed": "green", "interrupted": "yellow",
                "failed": "red", "rejected": "magenta"}
OUTCOME_STYLE = {"accepted": "green", "regressed": "red", "not learned": "red", "running": "cyan"}

store_option = click.option(
    "--store", "store_path", metavar="PATH", default=None,
    help="Run store file (default: $ENGRAIN_STORE, else ./engrain.duckdb).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")


def friendly(fn):
    """Store problems (missing file, unknown run, busy lock) end as one line and exit 1."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import duckdb
        try:
            return fn(*args, **kwargs)
        except (StoreError, duckdb.Error, OSError) as err:
            raise click.ClickException(str(err)) from None
    return wrapper


def _open(store_path: str | None) -> Store:
    # Readers never create a store: a typo'd path must say so, not show an empty list.
    return Store(store_path, create=False)


def _json_default(value):
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return str(value)


def _print_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=_json_default))


def _console():
    from rich.console import Console
    return Console(file=sys.stdout, highlight=False)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def _num(x, fmt: str = "{:.3f}") -> str:
    return "—" if x is None else fmt.format(x)


def _status(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, 'white')}]{escape(status)}[/]"


def _table(title: str | None, headers, rows, justify_right=(), no_wrap=("run", "step", "status"),
           min_width=None, compact=False):
    from rich import box
    from rich.table import Table
    # SIMPLE_HEAD: the fewest border columns; compact: one space between columns, so that
    # `cl runs` fits 80 columns when piped.
    spacing = dict(padding=0, show_edge=False) if compact else {}
    table = Table(title=title, title_justify="left", header_style="bold",
                  show_header=any(headers), box=box.SIMPLE_HEAD, **spacing)
    for h in headers:
        table.add_column(h, justify="right" if h in justify_right else "left",
                         no_wrap=h in no_wrap, min_width=(min_width or {}).get(h))
    for row in rows:
        # Cells that carry markup are built by us; everything else is data and escaped.
        table.add_row(*[c if isinstance(c, _Markup) else escape(str(c)) for c in row])
    return table


class _Markup(str):
    """A cell string that contains rich markup on purpose."""


# --- cl runs ------------------------------------------------------------------------------

RUN_FIELDS = ("run_id", "behavior", "method", "status", "stored_status", "target_rate",
              "specificity", "worst_regression", "outcome", "gate_source", "verdict", "duration_s",
              "started_at", "finished_at", "model", "seed", "adapter_path")


@click.command(help="List the runs in the store, newest first.")
@store_option
@json_option
@friendly
def runs(store_path, as_json):
    listed = summaries(_open(store_path))
    if as_json:
        _print_json([{k: s[k] for k in RUN_FIELDS} | {"gate_passed": s["gate"].passed if s["gate"] else None}
                     for s in listed])
        return
    if not listed:
        click.echo("No runs yet: `cl fit SPEC` starts one.")
        return
    rows = [(s["run_id"][:8], s["behavior"], s["method"] or "—", _Markup(_status(s["status"])),
             _num(s["target_rate"]), _num(s["specificity"]), _regression(s),
             _outcome(s["outcome"], "*" if s["gate_source"] == RECOMPUTED else ""),
             _duration(s["duration_s"])) for s in listed]
    numeric = ("target", "spec.", "regr.")
    headers = ("run", "behavior", "method", "status", *numeric, "gate", "time")
    console = _console()
    # Only the behavior's name gives way on a narrow terminal: every other cell is short.
    console.print(_table(None, headers, rows, justify_right=(*numeric, "time"), compact=True,
                         no_wrap=[h for h in headers if h != "behavior"], min_width={"behavior": 8}))
    if any(s["gate_source"] == RECOMPUTED for s in listed):
        console.print("* none recorded: recomputed by the fit's gate from the stored spec and evals",
                      markup=False)


def _regression(summary) -> str:
    verdict = summary["gate"]
    if verdict is None or verdict.worst_drop is None:
        # A verdict without a single comparable suite: the evals it needed are missing.
        return "—" if verdict is None else _Markup("[red]missing[/]")
    text = f"{verdict.worst_drop:+.3f}"
    return _Markup(text if verdict.passed else f"[red]{text}[/]")


def _outcome(outcome: str | None, note: str = "") -> str:
    """accepted / regressed / not learned / running, colored, then ``note``."""
    if outcome is None:
        return "—"
    return _Markup(f"[{OUTCOME_STYLE.get(outcome, 'white')}]{escape(outcome)}[/]{escape(note)}")


# --- cl show RUN ----------------------------------------------------------------------------

# column in the steps table -> short header
# (the rest, lr, candidates, judge seconds, teacher version, is in --json and the report)
STEP_KEYS = {"step": "step", "kl": "kl", "anchor_kl": "anchor", "drift": "drift", "behavior_rate": "rate",
             "n_selected": "sel", "n_guarded": "guard", "judge_fallbacks": "fallb", "seconds": "sec"}


def _config_items(config, prefix: str = ""):
    """Flatten the config to ``a.b = value`` lines, one level of nesting at a time."""
    for key, value in sorted((config or {}).items()):
        if isinstance(value, dict):
            yield from _config_items(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@click.command(help="Show one run: config, last steps, evals, adapter verdict, judge.")
@click.argument("run_id", metavar="RUN")
@store_option
@json_option
@click.option("--steps", "n_steps", default=10, show_default=True, help="How many last steps to show.")
@friendly
def show(run_id, store_path, as_json, n_steps):
    store = _open(store_path)
    run = store.run(run_id)
    rid = run["run_id"]
    steps = store.steps(rid)[-n_steps:] if n_steps > 0 else []
    evals, adapters = store.evals(rid), store.adapters(rid)
    judge = store.judge_summary(rid)
    verdict = run_verdict(run, evals, adapters)
    if as_json:
        _print_json({"run": {k: v for k, v in run.items() if not k.endswith("_json")},
                     "steps": steps, "evals": evals, "gate": verdict.gate, "gate_source": verdict.source,
                     "outcome": verdict.outcome, "gate_note": verdict.note,
                     "adapters": [{k: v for k, v in a.items() if k != "details_json"} for a in adapters],
                     "judge": judge})
        return
    console = _console()
    overview = [("run", rid), ("behavior", run["behavior"]), ("method", run["method"]),
                ("status", _Markup(_status(run["status"]))),
                ("gate", _verdict_cell(verdict)), ("model", run["model"]),
                ("seed", run["seed"]), ("started (UTC)", run["started_at"]),
                ("duration", _duration(run["duration_s"])), ("host / pid", f"{run['host']} / {run['pid']}"),
                ("adapter", run["adapter_path"] or "—")]
    overview += [(f"config.{k}", v) for k, v in _config_items(run["config"])]
    console.print(_table(None, ("", ""), overview))
    if steps:
        headers = tuple(STEP_KEYS.values())
        console.print(_table(f"Last {len(steps)} steps", headers,
                             [[_cell(s.get(k)) for k in STEP_KEYS] for s in steps],
                             justify_right=headers))
    if evals:
        console.print(_eval_table(evals, verdict.gate))
    for a in adapters:
        style = VERDICT_STYLE.get(a["verdict"], "white")
        console.print(f"Adapter [{style}]{escape(a['verdict'])}[/]: {escape(a['path'])}")
    style = OUTCOME_STYLE.get(verdict.outcome, "white")
    console.print(f"[{style}]{escape(verdict.describe())}[/]")
    if judge["calls"]:
        outcomes = ", ".join(f"{k} {v}" for k, v in judge["by_outcome"].items())
        console.print(f"Judge: {judge['calls']} calls ({outcomes}); mean latency "
                      f"{_num(judge['mean_latency_s'], '{:.2f}')} s; cost ${judge['total_cost']:.4f}; "
                      f"cached {judge['cached_share']:.0%}", markup=False)


def _verdict_cell(verdict) -> str:
    if verdict.gate is not None:
        return _outcome(verdict.outcome, f" ({verdict.source})")
    return _outcome(verdict.outcome) if verdict.outcome else f"— ({verdict.note})"


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "—" if value is None else str(value)


def _eval_table(evals, verdict):
    base, adapter = (latest_scores(evals, s) for s in SUBJECTS)
    greedy_base, greedy = (latest_scores(evals, s, decoding="greedy") for s in SUBJECTS)
    rows = []
    for suite, metric in sorted(set(base) | set(adapter)):
        b, a = base.get((suite, metric)), adapter.get((suite, metric))
        g = gate_row(verdict, suite, metric)
        gate_cell = "" if g is None else _Markup("[green]ok[/]" if g.ok else "[red]FAIL[/]")
        rows.append((suite, metric, _num(b), _num(a),
                     "—" if a is None or b is None else f"{a - b:+.3f}",
                     f"{_num(greedy_base.get((suite, metric)))}→{_num(greedy.get((suite, metric)))}", gate_cell))
    title = "Evals on held-out prompts (temperature 1, what the gate reads; greedy beside)"
    return _table(title, ("suite", "metric", "base", "adapter", "adapter − base", "greedy", "gate"), rows,
                  justify_right=("base", "adapter", "adapter − base"))


# --- cl report RUN --------------------------------------------------------------------------

@click.command(help="Write a self-contained HTML report of a run (curves, evals, token view).")
@click.argument("run_id", metavar="RUN")
@click.option("-o", "--output", "out_path", metavar="FILE", default=None,
              help="Where to write it (default: report-RUN.html).")
@store_option
@friendly
def report(run_id, out_path, store_path):
    from engrain.store.report import write_report
    store = _open(store_path)
    rid = store.run(run_id)["run_id"]
    path = write_report(store, rid, out_path or f"report-{rid[:8]}.html")
    click.echo(f"wrote {path}")
