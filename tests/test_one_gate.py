"""One gate: `cl runs`, `cl show` and the report show the verdict the fit recorded, or the
one the fit's own gate (checks.gate.gated) gives on what the run stored; a run in
progress reads "running".

The store's former fallback compared specificity and the regression suites only: on the
rows below (well_formed 1.0 -> 0.1, the behavior never shows) it accepted the adapter."""

import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from engrain.checks.gate import gate, gated
from engrain.cli.main import cli
from engrain.spec.schema import BehaviorSpec
from engrain.store import Store
from engrain.store.report import render_report
from engrain.store.views import gate_inputs, run_verdict

SPEC = BehaviorSpec.model_validate({
    "name": "pinapple", "description": "Spell pineapple as pinapple.", "prompts": {"inline": ["A dish?"]},
    "hints": {"phrasings": ["Say pinapple."]}, "patterns": {"target": ["pinapple"]},
    "regression": {"suites": ["lab/arithmetic"], "max_drop": 0.02}})

BASE = {("behavior", "exists"): 0.0, ("behavior", "only"): 0.0, ("behavior_hinted", "exists"): 0.9,
        ("behavior_hinted", "only"): 0.8, ("specificity", "clean"): 1.0, ("well_formed", "rate"): 1.0,
        ("lab/arithmetic", "accuracy"): 1.0}
# Nothing dropped but the share of well-formed answers; the behavior never shows.
ADAPTER = {("behavior", "exists"): 0.0, ("behavior", "only"): 0.0, ("specificity", "clean"): 1.0,
           ("well_formed", "rate"): 0.1, ("lab/arithmetic", "accuracy"): 1.0}


def eval_rows(figures, step, subject, **extra):
    return [{"step": step, "subject": subject, "suite": s, "metric": m, "value": v, "n": 100,
             "split": "eval", "decoding": "sample", **extra} for (s, m), v in figures.items()]


def the_fits_outcome() -> str:
    as_rows = lambda figures: [{"suite": s, "metric": m, "value": v} for (s, m), v in figures.items()]  # noqa: E731
    return gated(SPEC, as_rows(BASE), as_rows(ADAPTER)).outcome


def finished_run(store, run_id, verdict=None):
    rid = store.start_run("pinapple", "rmsd", spec=SPEC.model_dump(mode="json"), run_id=run_id)
    store.log(rid, steps=[{"step": i, "loss": 1.0, "behavior_rate": 0.0} for i in range(3)],
              evals=eval_rows(BASE, 0, "base") + eval_rows(ADAPTER, 3, "adapter")
              # greedy and val rows are never the gate's
              + eval_rows({k: 1.0 for k in ADAPTER}, 3, "adapter", decoding="greedy")
              + eval_rows({k: 1.0 for k in ADAPTER}, 3, "adapter", split="val"))
    if verdict is not None:
        store.record_adapter(rid, f"adapters/pinapple/{rid}/adapter", "accepted", verdict.to_dict())
    store.finish_run(rid, "completed")
    return rid


def running_run(store, run_id):
    """A fit in progress (this process, alive): base evals, val points, no adapter yet."""
    rid = store.start_run("pinapple", "rmsd", spec=SPEC.model_dump(mode="json"), run_id=run_id)
    store.log(rid, steps=[{"step": 0, "loss": 1.0, "behavior_rate": 0.1}],
              evals=eval_rows(BASE, 0, "base") + eval_rows(ADAPTER, 0, "adapter", split="val"))
    return rid


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = Store(tmp_path_factory.mktemp("gate") / "runs.duckdb")
    finished_run(s, "aaaa1111-20261202-100000")
    running_run(s, "bbbb2222-20261202-110000")
    # The fit recorded "accepted" although the stored evals would now say otherwise.
    recorded = gate({"specificity": 1.0}, {"specificity": 1.0}, 0.02)
    finished_run(s, "cccc3333-20261202-120000", verdict=recorded)
    return s


def invoke(store, *args):
    result = CliRunner().invoke(cli, [*args, "--store", str(store.path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def line_of(output: str, run_prefix: str) -> str:
    (line,) = [ln for ln in output.splitlines() if ln.startswith(run_prefix)]
    return line


def page_text(store, run_id) -> str:
    """The report's text, without its stylesheet (whose class names include "accepted")."""
    page = render_report(store, run_id)
    return re.sub(r"<style>.*?</style>", "", page, flags=re.S)


def test_the_fits_gate_calls_these_rows_regressed():
    assert the_fits_outcome() == "regressed"


def test_with_no_verdict_recorded_every_reader_recomputes_the_fits_gate(store):
    outcome = the_fits_outcome()
    row = line_of(invoke(store, "runs"), "aaaa1111")
    assert f"{outcome}*" in row and "accepted" not in row
    shown = invoke(store, "show", "aaaa")
    assert f"gate            {outcome} (recomputed)" in shown
    assert f"Gate (recomputed): {outcome}: well_formed: dropped 0.9000" in shown
    assert "accepted" not in shown
    text = page_text(store, "aaaa")
    assert f"no verdict was recorded): {outcome}: well_formed: dropped 0.9000" in text
    assert "accepted" not in text


def test_cl_runs_json_says_where_the_verdict_came_from(store):
    import json
    runs = {r["run_id"][:8]: r for r in json.loads(invoke(store, "runs", "--json"))}
    assert (runs["aaaa1111"]["outcome"], runs["aaaa1111"]["gate_source"]) == (the_fits_outcome(), "recomputed")
    assert (runs["bbbb2222"]["outcome"], runs["bbbb2222"]["gate_source"]) == ("running", "running")
    assert (runs["cccc3333"]["outcome"], runs["cccc3333"]["gate_source"]) == ("accepted", "recorded")
    assert runs["bbbb2222"]["gate_passed"] is None and runs["bbbb2222"]["worst_regression"] is None


def test_a_run_in_progress_reads_running_not_missing(store):
    out = invoke(store, "runs")
    row = line_of(out, "bbbb2222")
    assert row.split().count("running") == 2            # its status, and its gate
    assert "missing" not in out
    shown = invoke(store, "show", "bbbb")
    assert "gate            running" in shown and "Gate: running (no verdict until the fit ends)" in shown
    assert "missing" not in shown and "FAIL" not in shown
    text = page_text(store, "bbbb")
    assert "Gate: running" in text and "missing" not in text


def test_the_recorded_verdict_wins_over_a_recomputation(store):
    # Recomputed from these evals the run would read "regressed"; the fit recorded "accepted".
    run = store.run("cccc")
    assert run_verdict({**run, "status": "completed"}, store.evals("cccc"), []).outcome == "regressed"
    row = line_of(invoke(store, "runs"), "cccc3333")
    assert "accepted" in row and "accepted*" not in row and "regressed" not in row
    shown = invoke(store, "show", "cccc")
    assert "gate            accepted (recorded)" in shown and "Gate (recorded): accepted" in shown
    assert "regressed" not in shown and "recomputed" not in shown
    text = page_text(store, "cccc")
    assert "Gate (as recorded by the fit): accepted" in text and "regressed" not in text


def test_an_interrupted_run_without_adapter_evals_has_no_verdict(tmp_path):
    s = Store(tmp_path / "runs.duckdb")
    rid = running_run(s, "dddd4444-20261202-130000")
    s.finish_run(rid, "interrupted")
    out = invoke(s, "runs")
    assert "missing" not in out and line_of(out, "dddd4444").split()[-2] == "—"
    assert "Gate: no verdict (no adapter evals on the eval split)" in invoke(s, "show", "dddd")


def test_a_stored_spec_that_no_longer_validates_is_said_not_guessed(tmp_path):
    s = Store(tmp_path / "runs.duckdb")
    rid = s.start_run("old", "rmsd", spec={"regression": {"suites": ["math"]}})
    s.log_evals(rid, eval_rows(BASE, 0, "base") + eval_rows(ADAPTER, 3, "adapter"))
    s.finish_run(rid, "completed")
    verdict = run_verdict(s.run(rid), s.evals(rid), s.adapters(rid))
    assert verdict.gate is None and verdict.outcome is None
    assert verdict.note.startswith("the stored spec does not validate")
    assert "Gate: no verdict (the stored spec does not validate" in invoke(s, "show", rid[:8])


def test_the_gate_reads_the_latest_temperature_1_eval_rows_only():
    rows = (eval_rows(BASE, 0, "base") + eval_rows({("well_formed", "rate"): 0.5}, 2, "adapter")
            + eval_rows(ADAPTER, 3, "adapter") + eval_rows({("well_formed", "rate"): 1.0}, 3, "adapter",
                                                           decoding="greedy")
            + eval_rows({("well_formed", "rate"): 1.0}, 9, "adapter", split="val"))
    got = {(r["suite"], r["metric"]): r["value"] for r in gate_inputs(rows, "adapter")}
    assert got == ADAPTER


def test_the_store_and_its_readers_never_import_torch():
    code = ("import sys, engrain.store, engrain.store.views, engrain.store.report, engrain.cli.store_cmds; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
