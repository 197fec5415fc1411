import json
import subprocess
import sys

import duckdb
import pytest
from click.testing import CliRunner

from engrain.cli.main import cli
from engrain.spec.schema import BehaviorSpec
from engrain.store import Store

# A fit stand-in: writes 5 steps per flush for `seconds`, then prints how many it wrote.
WRITER = r"""
import sys, time
from engrain.store import Store
path, run_id, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
store, n, end = Store(path), 0, time.monotonic() + seconds
print("started", flush=True)
while time.monotonic() < end:
    store.log_steps(run_id, [{"step": n + i, "loss": 1.0, "behavior_rate": 0.5} for i in range(5)])
    n += 5
    time.sleep(0.02)
print(n, flush=True)
"""


def spec_json(**regression) -> dict:
    """A spec as a fit stores it: validated, dumped as JSON."""
    return BehaviorSpec.model_validate({
        "name": "pinapple", "description": "Spell pineapple as pinapple.", "prompts": {"inline": ["A dish?"]},
        "hints": {"phrasings": ["Say pinapple."]}, "patterns": {"target": ["pinapple"]},
        "regression": regression}).model_dump(mode="json")


def invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One finished run, shared by the read-only tests (built once: each write opens the file)."""
    s = Store(tmp_path_factory.mktemp("cli") / "runs.duckdb")
    rid = s.start_run("pinapple", "rmsd", spec=spec_json(suites=["lab/arithmetic"], max_drop=0.02),
                      config={"steps": 30, "lora": {"r": 16}}, model="lab", seed=1, run_id="feedbeef" + "0" * 24)
    s.log(rid, steps=[{"step": i, "loss": 1.0 / (i + 1), "behavior_rate": i / 40} for i in range(30)], evals=[
        {"step": 0, "subject": "base", "suite": "lab/arithmetic", "metric": "accuracy", "value": 1.0, "n": 100},
        {"step": 0, "subject": "base", "suite": "specificity", "metric": "rate", "value": 0.95, "n": 100},
        {"step": 0, "subject": "base", "suite": "well_formed", "metric": "rate", "value": 1.0, "n": 300},
        {"step": 0, "subject": "base", "suite": "behavior_hinted", "metric": "only", "value": 0.9, "n": 100},
        {"step": 30, "subject": "adapter", "suite": "well_formed", "metric": "rate", "value": 1.0, "n": 300},
        {"step": 30, "subject": "adapter", "suite": "lab/arithmetic", "metric": "accuracy", "value": 0.95, "n": 100},
        {"step": 30, "subject": "adapter", "suite": "behavior", "metric": "only", "value": 0.74, "n": 100},
        {"step": 30, "subject": "adapter", "suite": "specificity", "metric": "rate", "value": 0.935, "n": 100}],
        judge_calls=[{"step": 1, "idx": 0, "model": "rule", "latency_s": 0.2, "cost": 0.5,
                      "outcome": "ok", "cached": False}])
    s.record_adapter(rid, "adapters/pinapple", "rejected", {"passed": False})   # no verdict in it
    s.finish_run(rid, "rejected")
    return s


def test_runs_table_shows_the_headline_numbers(store):
    result = invoke("runs", "--store", str(store.path))
    assert result.exit_code == 0, result.output
    out = result.output
    for text in ("feedbeef", "pinapple", "rmsd", "rejected", "0.740", "0.935", "+0.050", "regressed*",
                 "* none recorded: recomputed"):
        assert text in out
    assert "feedbeef0" not in out  # short ids


def test_runs_json(store):
    result = invoke("runs", "--json", "--store", str(store.path))
    (run,) = json.loads(result.output)
    assert run["run_id"].startswith("feedbeef") and run["status"] == "rejected"
    assert run["target_rate"] == 0.74 and run["specificity"] == 0.935
    assert run["worst_regression"] == pytest.approx(0.05) and run["gate_passed"] is False
    assert run["verdict"] == "rejected" and run["duration_s"] >= 0
    assert run["outcome"] == "regressed" and run["gate_source"] == "recomputed"


def test_runs_reads_the_store_from_the_environment(store, monkeypatch):
    monkeypatch.setenv("ENGRAIN_STORE", str(store.path))
    assert "feedbeef" in invoke("runs").output


def test_show_by_prefix_and_as_json(store):
    result = invoke("show", "feed", "--store", str(store.path), "--steps", "3")
    assert result.exit_code == 0, result.output
    for text in ("config.lora.r", "Last 3 steps", "lab/arithmetic", "FAIL", "regressed (recomputed)",
                 "Gate (recomputed): regressed: lab/arithmetic: dropped 0.0500", "Adapter rejected",
                 "adapters/pinapple", "Judge: 1 calls"):
        assert text in result.output
    data = json.loads(invoke("show", "feed", "--json", "--store", str(store.path)).output)
    assert data["run"]["config"] == {"steps": 30, "lora": {"r": 16}}
    assert len(data["steps"]) == 10 and data["steps"][-1]["step"] == 29
    assert data["gate"]["passed"] is False and data["gate_source"] == "recomputed"
    assert data["outcome"] == "regressed"
    assert {r["suite"]: r["ok"] for r in data["gate"]["rows"]} == \
        {"lab/arithmetic": False, "specificity": True, "well_formed": True}
    assert [(r["metric"], r["ok"]) for r in data["gate"]["learning"]] == [("only", True)]
    assert data["judge"]["total_cost"] == 0.5
    assert data["adapters"][0]["verdict"] == "rejected"


def test_report_writes_html(store, tmp_path):
    out = tmp_path / "r.html"
    result = invoke("report", "feedbeef", "-o", str(out), "--store", str(store.path))
    assert result.exit_code == 0 and f"wrote {out}" in result.output
    assert "<svg" in out.read_text(encoding="utf-8")

def test_report_defaults_to_a_file_in_the_working_directory(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("report", "feed", "--store", str(store.path))
    assert result.exit_code == 0 and (tmp_path / "report-feedbeef.html").exists()


@pytest.mark.parametrize("args, message", [
    (["runs", "--store", "{missing}"], "no run store"),
    (["show", "nope", "--store", "{store}"], "no run 'nope'"),
    (["report", "nope", "--store", "{store}"], "no run 'nope'"),
    (["show", "x", "--store", "{missing}"], "no run store"),
])
def test_friendly_errors_exit_1_without_a_traceback(store, tmp_path, args, message):
    args = [a.format(missing=tmp_path / "missing.duckdb", store=store.path) for a in args]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)


def test_empty_store_and_interrupted_runs(tmp_path):
    s = Store(tmp_path / "runs.duckdb")
    assert "No runs yet" in invoke("runs", "--store", str(s.path)).output
    rid = s.start_run("b", "opsd")
    dead = subprocess.Popen(["true"])
    dead.wait()
    con = duckdb.connect(str(s.path))
    con.execute("UPDATE runs SET pid = ? WHERE run_id = ?", [dead.pid, rid])
    con.close()
    assert "interrupted" in invoke("runs", "--store", str(s.path)).output


def test_cl_runs_works_while_another_process_writes(tmp_path):
    store = Store(tmp_path / "runs.duckdb")
    rid = store.start_run("live", "rmsd")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(store.path), rid, "1.5"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "started"
        reads = 0
        while writer.poll() is None:
            result = invoke("runs", "--store", str(store.path))
            assert result.exit_code == 0, result.output
            assert "live" in result.output
            reads += 1
        out, err = writer.communicate(timeout=30)
        assert writer.returncode == 0, err
    finally:
        if writer.poll() is None:
            writer.kill()
    assert reads >= 2
    written = int(out.strip())
    assert written > 0 and len(store.steps(rid)) == written  # no row lost
    assert [s["step"] for s in store.steps(rid)] == list(range(written))
