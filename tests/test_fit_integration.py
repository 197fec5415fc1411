"""`cl fit` as a user runs it: a hostile or broken judge server, a kill mid-run, and
`cl runs` reading the store while the fit writes it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from engrain.cli.main import cli
from engrain.store.db import Store

ROOT = Path(__file__).resolve().parents[1]
SECRET = "sk-test-SECRET-engrain-4242"


def spec_file(tmp: Path, model_dir: Path, judge: dict | None = None, **train) -> Path:
    spec = yaml.safe_load((ROOT / "behaviors/pinapple.yaml").read_text())
    spec["model"] = str(model_dir)
    spec["train"].update({"steps": 3, "batch_size": 3, "max_new_tokens": 8, "eval_every": 100, **train})
    if judge:
        spec["judge"] = judge
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_fit_survives_a_broken_and_hostile_judge_and_never_writes_the_key(
        tmp_path, tiny_dir, monkeypatch, capfd):
    from judge_server import serve
    monkeypatch.setenv("ENGRAIN_TEST_JUDGE_KEY", SECRET)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    script = ["slow", "garbage", "hostile", "leak_key", "out_of_range", "too_many",
              "echo_injection", "error500", "good"]
    with serve(script) as url:
        spec = spec_file(tmp_path, tiny_dir, judge={
            "model": "openai/judge-test", "api_base": url.api_base,
            "api_key_env": "ENGRAIN_TEST_JUDGE_KEY", "timeout_s": 0.5, "max_retries": 0,
            "max_concurrency": 1})
        result = CliRunner().invoke(cli, ["fit", str(spec), "--store", str(tmp_path / "s.duckdb"),
                                          "--out-dir", str(tmp_path / "adapters"), "--eval-n", "2",
                                          "--no-progress"])
        received = list(url.requests)
    assert result.exit_code in (0, 3, 4), result.output
    assert any(r["headers"].get("authorization") == f"Bearer {SECRET}" for r in received)

    store = Store(tmp_path / "s.duckdb")
    run = store.runs()[0]
    steps = store.steps(run["run_id"])
    calls = store.judge_calls(run["run_id"])
    assert len(steps) == 3 and len(calls) == 9
    outcomes = {c["outcome"] for c in calls}
    assert {"fallback:timeout", "fallback:unparseable", "fallback:error"} <= outcomes
    assert sum(s["judge_fallbacks"] for s in steps) == sum(c["outcome"] != "ok" for c in calls) >= 6
    assert store.judge_summary(run["run_id"])["calls"] == 9

    # the key is nowhere a run writes: files (raw bytes), store rows, console
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f"API key leaked into {f}"
    for table in ("runs", "steps", "rollouts", "judge_calls", "evals", "adapters"):
        rows = store._read(lambda con, t=table: con.execute(f"SELECT * FROM {t}").fetchall())
        assert SECRET not in repr(rows), f"API key leaked into store table {table}"
    out, err = capfd.readouterr()
    assert SECRET not in out + err + result.output


def _cl(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "engrain.cli.main", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def _wait_for_steps(store: Store, n: int, proc, timeout: float = 240) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        try:
            runs = store.runs()
            if runs and len(store.steps(runs[0]["run_id"])) >= n:
                return runs[0]["run_id"]
        except Exception:
            pass  # the store may not exist yet
        time.sleep(0.5)
    raise AssertionError("the fit logged no steps in time")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killed_fit_leaves_a_readable_store_and_an_interrupted_run(tmp_path, tiny_dir, sig):
    spec = spec_file(tmp_path, tiny_dir, steps=500, method="opsd")
    db = tmp_path / "s.duckdb"
    proc = _cl("fit", str(spec), "--store", str(db), "--out-dir", str(tmp_path / "adapters"),
               "--eval-n", "2", "--no-progress", "--checkpoint-every", "1", cwd=tmp_path)
    store = Store(db, create=False) if db.exists() else None
    store = Store(db)
    run_id = _wait_for_steps(store, 2, proc)

    # `cl runs` while the fit is writing
    runs = subprocess.run([sys.executable, "-m", "engrain.cli.main", "runs", "--json", "--store", str(db)],
                          capture_output=True, text=True, timeout=60)
    assert runs.returncode == 0, runs.stderr
    assert json.loads(runs.stdout)[0]["status"] == "running"

    proc.send_signal(sig)
    code = proc.wait(timeout=120)
    assert code == (130 if sig == signal.SIGTERM else -signal.SIGKILL)
    run = Store(db).run(run_id)
    assert run["status"] == "interrupted"
    assert len(Store(db).steps(run_id)) >= 2
    ckpts = list((tmp_path / "adapters").rglob("checkpoints/step-*/COMPLETE"))
    assert ckpts, "a checkpoint should exist to resume from"


@pytest.mark.skipif(not __import__("engrain.lab", fromlist=["model_path"]).model_path().joinpath(
    "config.json").exists(), reason="no lab model")
@pytest.mark.timeout(600)   # a lab-model fit: ~70 s of CPU, far more when the machine is shared
def test_an_adapter_that_breaks_arithmetic_is_rejected_with_exit_3(tmp_path):
    # A learning rate a thousand times too high wrecks the lab model in a few steps: a real
    # regression, caught by the gate comparing adapter and base on the same suites. keep:
    # last, since the best val checkpoint would be the untrained one.
    spec = spec_file(tmp_path, "lab", steps=4, batch_size=4, lr=0.5, method="opsd", max_new_tokens=24,
                     keep="last", warmup_steps=0)
    res = CliRunner().invoke(cli, ["fit", str(spec), "--store", str(tmp_path / "s.duckdb"),
                                   "--out-dir", str(tmp_path / "adapters"), "--eval-n", "24",
                                   "--no-progress"])
    assert res.exit_code == 3, res.output
    assert "rejected: regressed" in res.output
    # the message names the regression suites that dropped, not only specificity
    assert "lab/arithmetic: dropped" in res.output and "lab/capitals: dropped" in res.output
    store = Store(tmp_path / "s.duckdb")
    run = store.runs()[0]
    assert run["status"] == "rejected"
    assert store.adapters(run["run_id"])[0]["verdict"] == "rejected"
    assert not list((tmp_path / "adapters").rglob("adapter/adapter_model.safetensors"))
    assert list((tmp_path / "adapters").rglob("adapter.rejected/adapter_model.safetensors"))
    assert store.adapters(run["run_id"])[0]["outcome"] == "regressed"


def test_a_run_that_learned_nothing_is_not_learned_with_exit_4(tmp_path, tiny_dir):
    # The first round accepted a 4-step run that showed the behavior 0 times: nothing had
    # regressed. A random model never shows it, so the verdict must be "not learned".
    spec = spec_file(tmp_path, tiny_dir, steps=2, method="opsd")
    res = CliRunner().invoke(cli, ["fit", str(spec), "--store", str(tmp_path / "s.duckdb"),
                                   "--out-dir", str(tmp_path / "adapters"), "--eval-n", "4",
                                   "--no-progress"])
    assert res.exit_code == 4, res.output
    assert "not learned: behavior exists: 0.000: the behavior never showed" in res.output
    store = Store(tmp_path / "s.duckdb")
    run = store.runs()[0]
    assert run["status"] == "rejected"
    assert store.adapters(run["run_id"])[0]["outcome"] == "not learned"
    # `cl eval` re-runs the same checks from what the run stored, with the same verdict
    again = CliRunner().invoke(cli, ["eval", run["run_id"][:8], "--out-dir", str(tmp_path / "adapters"),
                                     "--store", str(tmp_path / "s.duckdb"), "-n", "4"])
    assert again.exit_code == 4, again.output
    assert "gate: not learned" in again.output
