import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

import engrain.store.db as store_mod
from engrain.store import (LATEST_VERSION, MIGRATIONS, Store, StoreBusyError, StoreError, StoreNotFoundError,
                           UnknownRunError, schema_doc, summaries)
from engrain.store.schema import apply_migrations, main as schema_main

ROOT = Path(__file__).resolve().parents[1]

# A writer process: logs `flushes` batches of `rows` steps, as a training loop would.
WRITER = r"""
import sys, time
from engrain.store import Store
path, run_id, worker, flushes, rows = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
store = Store(path)
for f in range(flushes):
    store.log_steps(run_id, [{"step": (f * rows + i), "loss": float(worker), "extra": {"worker": worker}}
                             for i in range(rows)])
    time.sleep(0.005)
print("wrote", flushes * rows)
"""


def rollout(step=1, idx=0, **over):
    row = {"step": step, "idx": idx, "prompt": "Name a tropical dish.", "response": " pinapple rice",
           "token_ids": [5, 17, 99], "tokens": [" pin", "apple", " rice"], "delta": [1.5, -0.25, 0.0],
           "teacher_tokens": [" pin", "apple", " rice"], "candidates": [0, 1], "selected": [0]}
    row.update(over)
    return row


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "runs.duckdb")


def test_fresh_store_is_at_the_latest_version(tmp_path):
    s = Store(tmp_path / "sub" / "new.duckdb")
    assert s.path.exists() and s.schema_version() == LATEST_VERSION == len(MIGRATIONS)
    con = duckdb.connect(str(s.path), read_only=True)
    tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    con.close()
    assert tables == {"schema_version", "runs", "steps", "rollouts", "judge_calls", "evals", "adapters", "promotions"}


def test_path_defaults_to_cwd_and_env_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ENGRAIN_STORE", raising=False)
    assert Store().path == tmp_path / "engrain.duckdb"
    monkeypatch.setenv("ENGRAIN_STORE", str(tmp_path / "elsewhere.duckdb"))
    assert Store().path == tmp_path / "elsewhere.duckdb"
    assert Store(tmp_path / "arg.duckdb").path == tmp_path / "arg.duckdb"


def test_readers_never_create_a_store(tmp_path):
    with pytest.raises(StoreNotFoundError, match="no run store"):
        Store(tmp_path / "missing.duckdb", create=False)
    assert not (tmp_path / "missing.duckdb").exists()


def _sample(dtype: str):
    if dtype.endswith("[]"):
        return [_sample(dtype[:-2])]
    return {"VARCHAR": "x", "INTEGER": 7, "BIGINT": 7, "DOUBLE": 0.5, "BOOLEAN": True,
            "TIMESTAMP": dt.datetime(2026, 1, 2, 3, 4, 5)}[dtype]


@pytest.mark.parametrize("k", range(LATEST_VERSION))
def test_a_store_at_every_earlier_version_migrates_keeping_its_rows(tmp_path, k):
    path = tmp_path / f"v{k}.duckdb"
    con = duckdb.connect(str(path))
    apply_migrations(con, upto=k)
    # One typed row in every table version k has, whatever its columns are.
    snapshot = {}
    for (table,) in con.execute("SELECT table_name FROM duckdb_tables() "
                                "WHERE table_name != 'schema_version'").fetchall():
        cols = con.execute("SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = ? "
                           "ORDER BY column_index", [table]).fetchall()
        values = [_sample(t) for _, t in cols]
        con.execute(f"INSERT INTO {table} VALUES ({', '.join('?' * len(cols))})", values)
        snapshot[table] = ([c for c, _ in cols], values)
    con.close()

    s = Store(path)
    assert s.schema_version() == LATEST_VERSION
    con = duckdb.connect(str(path), read_only=True)
    assert [r[0] for r in con.execute("SELECT version FROM schema_version ORDER BY 1").fetchall()] \
        == list(range(1, LATEST_VERSION + 1))
    for table, (cols, values) in snapshot.items():
        assert con.execute(f"SELECT {', '.join(cols)} FROM {table}").fetchall() == [tuple(values)]
    con.close()
    # The migrated file takes the newest writes.
    rid = s.start_run("b", "rmsd")
    s.log(rid, steps=[{"step": 1}], rollouts=[rollout()], judge_calls=[{"step": 1, "outcome": "ok"}],
          evals=[{"step": 1, "subject": "adapter", "suite": "behavior", "metric": "only", "value": 1.0}])
    assert Store(path).schema_version() == LATEST_VERSION  # reopening applies nothing


def test_an_old_store_gets_the_corrected_comments(tmp_path):
    path = tmp_path / "v4.duckdb"
    con = duckdb.connect(str(path))
    apply_migrations(con, upto=4)
    con.close()
    Store(path)
    fresh = duckdb.connect(":memory:")
    apply_migrations(fresh)
    old = duckdb.connect(str(path), read_only=True)
    for sql in ("SELECT table_name, comment FROM duckdb_tables() ORDER BY ALL",
                "SELECT table_name, column_name, comment FROM duckdb_columns() ORDER BY ALL"):
        assert old.execute(sql).fetchall() == fresh.execute(sql).fetchall()
    (comment,) = old.execute("SELECT comment FROM duckdb_columns() WHERE table_name = 'runs' "
                             "AND column_name = 'run_id'").fetchone()
    assert "32 hex digits;" not in comment and "8 hex digits" in comment
    old.close()
    fresh.close()


def test_a_store_from_a_newer_engrain_is_refused(tmp_path):
    path = tmp_path / "future.duckdb"
    Store(path)
    con = duckdb.connect(str(path))
    con.execute("INSERT INTO schema_version VALUES (?, 'from the future', now()::TIMESTAMP)",
                [LATEST_VERSION + 1])
    con.close()
    with pytest.raises(StoreError, match="newer"):
        Store(path)


def test_bulk_round_trip_of_every_table(store):
    rid = store.start_run("pinapple", "rmsd", spec={"name": "pinapple"}, config={"lr": 5e-4},
                          model="lab", seed=3)
    steps = [{"step": i, "loss": 1.0 / (i + 1), "kl": 0.1, "n_candidates": 20, "n_selected": 5,
              "judge_fallbacks": 0, "behavior_rate": i / 10, "seconds": 1.5, "judge_seconds": 0.5,
              "teacher_version": 0, "extra": {"lr": 1e-4}} for i in range(200)]
    rollouts = [rollout(step=1, idx=i, prompt=f"p{i} ünïcødé ✓") for i in range(50)]
    judge = [{"step": 1, "idx": i, "model": "gpt-5-mini", "latency_s": 0.5 + i % 2, "prompt_tokens": 100,
              "completion_tokens": 10, "cost": 0.001, "outcome": "ok" if i % 4 else "invalid",
              "cached": i % 2 == 0} for i in range(8)]
    evals = [{"step": 0, "subject": "base", "suite": "lab/arithmetic", "metric": "accuracy",
              "value": 1.0, "n": 200}]
    store.log_steps(rid, steps)
    store.log_rollouts(rid, rollouts)
    store.log_judge_calls(rid, judge)
    store.log_evals(rid, evals)

    got = store.steps(rid)
    assert len(got) == 200 and got[3]["loss"] == pytest.approx(0.25) and got[3]["extra"] == {"lr": 1e-4}
    r = store.rollouts(rid, limit=100)
    assert len(r) == 50 and r[7] == {"run_id": rid, **rollout(step=1, idx=7, prompt="p7 ünïcødé ✓")}
    assert len(store.rollouts(rid, limit=5)) == 5 and store.rollouts(rid, step=2) == []
    assert store.rollout_steps(rid) == [1]
    assert store.evals(rid)[0]["value"] == 1.0 and store.evals(rid)[0]["n"] == 200
    summary = store.judge_summary(rid)
    assert summary["calls"] == 8 and summary["by_outcome"] == {"ok": 6, "invalid": 2}
    assert summary["mean_latency_s"] == pytest.approx(1.0)
    assert summary["total_cost"] == pytest.approx(0.008) and summary["cached_share"] == pytest.approx(0.5)
    assert summary["prompt_tokens"] == 800 and summary["completion_tokens"] == 80
    run = store.run(rid)
    assert run["spec"] == {"name": "pinapple"} and run["config"] == {"lr": 5e-4} and run["seed"] == 3
    assert run["versions"]["python"] and run["pid"] == os.getpid() and run["status"] == "running"


def test_fallback_insert_without_the_appender_matches(store, monkeypatch):
    monkeypatch.setattr(store_mod, "_HAS_APPENDER", False)
    rid = store.start_run("b", "opsd")
    store.log(rid, steps=[{"step": i, "loss": float(i)} for i in range(700)],
              rollouts=[rollout(idx=i) for i in range(300)])
    assert [s["loss"] for s in store.steps(rid)] == [float(i) for i in range(700)]
    assert store.rollouts(rid)[299] == {"run_id": rid, **rollout(idx=299)}


def test_array_likes_are_converted_without_importing_torch(store):
    np = pytest.importorskip("numpy")
    rid = store.start_run("b", "rmsd")
    store.log_rollouts(rid, [rollout(step=np.int64(2), token_ids=np.array([1, 2, 3]),
                                     delta=np.array([0.5, -1.0, 2.0], dtype=np.float32),
                                     candidates=[np.int64(0), np.int64(2)])])
    r = store.rollouts(rid)[0]
    assert r["step"] == 2 and r["token_ids"] == [1, 2, 3] and r["delta"] == [0.5, -1.0, 2.0]
    assert r["candidates"] == [0, 2]


@pytest.mark.parametrize("method, row, match", [
    ("log_steps", {"step": 1, "los": 0.1}, "unknown keys"),
    ("log_steps", {"loss": 0.1}, "missing"),
    ("log_rollouts", rollout(delta=[0.1]), "differ in length"),
    ("log_rollouts", rollout(selected=[3]), "outside"),
    ("log_evals", {"step": 0, "subject": "teacher", "suite": "s", "metric": "m", "value": 1}, "subject"),
])
def test_bad_rows_are_refused_before_writing(store, method, row, match):
    rid = store.start_run("b", "rmsd")
    with pytest.raises(ValueError, match=match):
        getattr(store, method)(rid, [row])


def test_writes_to_an_unknown_run_are_refused_and_roll_back(store):
    with pytest.raises(UnknownRunError):
        store.log_steps("nope", [{"step": 1}])
    con = duckdb.connect(str(store.path), read_only=True)
    assert con.execute("SELECT count(*) FROM steps").fetchone()[0] == 0
    con.close()


def test_run_lookup_by_prefix(store):
    a = store.start_run("b", "rmsd", run_id="abc111")
    store.start_run("b", "rmsd", run_id="abc222")
    assert store.run("abc1")["run_id"] == a
    with pytest.raises(UnknownRunError, match="ambiguous"):
        store.run("abc")
    with pytest.raises(UnknownRunError, match="no run"):
        store.steps("zzz")


def test_finish_and_adapter_verdicts(store):
    rid = store.start_run("b", "rmsd")
    store.record_adapter(rid, "/adapters/b", "accepted", {"gate": {"passed": True}})
    store.finish_run(rid, "completed")
    run = store.run(rid)
    assert run["status"] == "completed" and run["finished_at"] is not None
    assert run["adapter_path"] == "/adapters/b"
    (a,) = store.adapters(rid)
    assert a["behavior"] == "b" and a["verdict"] == "accepted" and a["details"] == {"gate": {"passed": True}}
    with pytest.raises(ValueError):
        store.finish_run(rid, "running")
    with pytest.raises(ValueError):
        store.record_adapter(rid, "/x", "maybe")


def test_heartbeat_moves_updated_at(store):
    rid = store.start_run("b", "rmsd")
    before = store.run(rid)["updated_at"]
    time.sleep(0.01)
    store.heartbeat(rid)
    assert store.run(rid)["updated_at"] > before


def test_a_running_run_whose_process_died_reads_as_interrupted(store):
    # A real process starts a run and exits without finishing it (killed, OOM...).
    out = subprocess.run([sys.executable, "-c", "import sys; from engrain.store import Store; "
                          "print(Store(sys.argv[1]).start_run('b', 'rmsd'))", str(store.path)],
                         capture_output=True, text=True, check=True)
    dead = out.stdout.strip()
    alive = store.start_run("b", "rmsd")  # this process: alive
    elsewhere = store.start_run("b", "rmsd")
    con = duckdb.connect(str(store.path))
    con.execute("UPDATE runs SET host = 'another-host', pid = 1 WHERE run_id = ?", [elsewhere])
    con.close()

    status = {r["run_id"]: (r["status"], r["stored_status"]) for r in store.runs()}
    assert status[dead] == ("interrupted", "running")
    assert status[alive] == ("running", "running")
    assert status[elsewhere] == ("running", "running")  # cannot check another host's pids
    assert summaries(store)[0]["status"] in ("running", "interrupted")

    assert store.mark_stale_interrupted() == [dead]
    assert store.run(dead)["stored_status"] == "interrupted"
    assert store.run(dead)["finished_at"] is not None
    assert store.mark_stale_interrupted() == []


def test_two_writer_processes_land_every_row(store):
    runs = [store.start_run("b", "rmsd") for _ in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(store.path), rid, str(w), "8", "10"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for w, rid in enumerate(runs)]
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert "wrote 80" in out
    for w, rid in enumerate(runs):
        steps = store.steps(rid)
        assert len(steps) == 80 and {s["extra"]["worker"] for s in steps} == {w}
        assert [s["step"] for s in steps] == list(range(80))


def test_a_held_lock_ends_in_a_clear_busy_error(store):
    holder = subprocess.Popen([sys.executable, "-c",
                               "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
                               "print('locked', flush=True); time.sleep(20)", str(store.path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        t = time.monotonic()
        with pytest.raises(StoreBusyError, match="stayed locked"):
            Store(store.path, create=False, lock_timeout_s=0.3)
        assert time.monotonic() - t < 5
    finally:
        holder.kill()
        holder.wait()


def test_store_modules_do_not_import_torch():
    code = ("import sys, engrain.store, engrain.store.report, engrain.cli.store_cmds, engrain.cli.eval_cmd; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_schema_doc_is_generated_from_the_code(capsys):
    assert schema_main(["--schema-doc"]) == 0  # what `python -m engrain.store --schema-doc` runs
    out = capsys.readouterr().out
    assert out == schema_doc()
    committed = (ROOT / "docs" / "SCHEMA.md").read_text(encoding="utf-8")
    assert committed == out, "docs/SCHEMA.md is stale: python -m engrain.store --schema-doc > docs/SCHEMA.md"
    cli = subprocess.run([sys.executable, "-m", "engrain.store", "--schema-doc"], capture_output=True, text=True,
                         check=True)
    assert cli.stdout == out


def test_resume_makes_a_run_running_again(store):
    rid = store.start_run("b", "rmsd")
    store.finish_run(rid, "interrupted")
    store.resume_run(rid)
    run = store.run(rid)
    assert run["status"] == "running" and run["finished_at"] is None and run["pid"] == os.getpid()


def test_summaries_prefer_the_verdict_recorded_with_the_adapter(store):
    from engrain.checks.gate import gate
    from engrain.spec.schema import BehaviorSpec
    math = {"name": "math", "inline": [{"prompt": "1+1?", "expect": "2"}], "max_drop": 0.5}
    spec = BehaviorSpec.model_validate({"name": "b", "description": "d", "prompts": {"inline": ["p"]},
                                        "hints": {"phrasings": ["h"]}, "patterns": {"target": ["t"]},
                                        "regression": {"suites": [math]}}).model_dump(mode="json")
    rid = store.start_run("b", "rmsd", spec=spec)
    store.log_evals(rid, [{"step": 0, "subject": "base", "suite": "math", "metric": "acc", "value": 1.0},
                          {"step": 9, "subject": "adapter", "suite": "math", "metric": "acc", "value": 0.8},
                          {"step": 9, "subject": "adapter", "suite": "behavior", "metric": "only", "value": 0.6}]
                    + [{"step": step, "subject": subject, "suite": suite, "metric": "rate", "value": 1.0}
                       for step, subject in ((0, "base"), (9, "adapter")) for suite in ("specificity", "well_formed")])
    store.finish_run(rid, "completed")
    (s,) = summaries(store)     # no verdict recorded: the fit's gate, with math's own max_drop of 0.5
    assert s["gate"].passed and s["gate_source"] == "recomputed" and s["outcome"] == "accepted"
    assert s["worst_regression"] == pytest.approx(0.2) and s["target_rate"] == 0.6
    store.record_adapter(rid, "/a", "rejected", gate({"math": 1.0}, {"math": 0.8}, 0.1).to_dict())
    (s,) = summaries(store)
    assert not s["gate"].passed and s["verdict"] == "rejected" and s["gate_source"] == "recorded"


def test_latest_scores_read_one_split_and_decoding(store):
    from engrain.store import latest_scores
    rid = store.start_run("b", "rmsd")
    store.log_evals(rid, [
        {"step": 40, "subject": "adapter", "suite": "behavior", "metric": "exists", "value": 0.8,
         "split": "eval", "decoding": "sample"},
        {"step": 40, "subject": "adapter", "suite": "behavior", "metric": "exists", "value": 0.9,
         "split": "eval", "decoding": "greedy"},
        # a later val point must not be read as the adapter's final figure
        {"step": 60, "subject": "adapter", "suite": "behavior", "metric": "exists", "value": 0.5,
         "split": "val", "decoding": "sample"},
        # rows from before the split column read as eval / sample
        {"step": 0, "subject": "base", "suite": "behavior", "metric": "exists", "value": 0.0}])
    evals = store.evals(rid)
    assert latest_scores(evals, "adapter") == {("behavior", "exists"): 0.8}
    assert latest_scores(evals, "adapter", decoding="greedy") == {("behavior", "exists"): 0.9}
    assert latest_scores(evals, "adapter", split="val") == {("behavior", "exists"): 0.5}
    assert latest_scores(evals, "base") == {("behavior", "exists"): 0.0}


def test_adapter_outcome_is_recorded(store):
    rid = store.start_run("b", "rmsd")
    store.record_adapter(rid, "/x", "rejected", {"passed": False, "outcome": "not learned"})
    assert store.adapters(rid)[0]["outcome"] == "not learned"


def test_row_builders_make_rows_the_writer_accepts(store):
    """rows.step_row / rollout_rows / judge_rows / eval_rows read plain objects (numpy here,
    tensors in a fit) and make rows in the one shape the store checks."""
    from types import SimpleNamespace
    np = pytest.importorskip("numpy")
    from engrain.store import rows
    ro = SimpleNamespace(prompts=["p0", "p1"], texts=["t0", "t1"], response_ids=[[5, 6, 7], [8, 9]])
    judged = [SimpleNamespace(latency_s=0.5, prompt_tokens=10, completion_tokens=2, cost=0.0, outcome=o,
                              cached=False) for o in ("ok", "fallback:garbage")]
    out = SimpleNamespace(**{**{k: 1 for k in rows.STEP_COLUMNS}, "step": 4}, rollouts=ro, judge=judged,
                          stage_seconds={"rollout": 0.25}, sampler_gap=None,
                          delta=np.array([[0.123456, -2.0, 0.5, 9.0], [1.0, 2.0, 0.0, 0.0]], dtype=np.float32),
                          teacher_top=np.array([[[5, 1], [1, 1], [7, 1], [0, 0]], [[8, 0], [3, 0], [0, 0], [0, 0]]]),
                          candidates=np.array([[True, True, False, True], [False, True, False, False]]),
                          selected=np.array([[True, False, False, True], [False, True, False, False]]))
    decode = SimpleNamespace(decode=lambda ids: f"<{ids[0]}>")
    step = rows.step_row(out)
    assert set(step) == {*rows.STEP_COLUMNS, "extra"} and step["step"] == 4
    assert step["extra"] == {"stage_seconds": {"rollout": 0.25}}      # sampler_gap None: left out
    r0, r1 = rows.rollout_rows(out, decode)
    assert r0 == {"step": 4, "idx": 0, "prompt": "p0", "response": "t0", "token_ids": [5, 6, 7],
                  "tokens": ["<5>", "<6>", "<7>"], "delta": [0.1235, -2.0, 0.5],
                  "teacher_tokens": ["<5>", "<1>", "<7>"], "candidates": [0, 1], "selected": [0]}
    assert r1["delta"] == [1.0, 2.0] and r1["candidates"] == [1] == r1["selected"]
    assert len(rows.rollout_rows(out, decode, limit=1)) == 1
    assert rows.rollout_rows(SimpleNamespace(delta=None), decode) == []
    judge = rows.judge_rows(out, None)
    assert [(j["idx"], j["model"], j["outcome"]) for j in judge] == [(0, "rule", "ok"), (1, "rule", "fallback:garbage")]
    figures = [{"suite": "behavior", "metric": "only", "value": 0.5, "n": 8, "split": "eval", "decoding": "sample"}]
    evals = rows.eval_rows(figures, step=4, subject="adapter")
    with pytest.raises(ValueError, match="subject"):
        rows.eval_rows(figures, step=0, subject="teacher")
    rid = store.start_run("b", "rmsd")
    store.log(rid, steps=[step], rollouts=[r0, r1], judge_calls=judge, evals=evals)
    assert store.steps(rid)[0]["extra"] == {"stage_seconds": {"rollout": 0.25}} and len(store.rollouts(rid)) == 2
    assert store.evals(rid)[0]["step"] == 4 and store.judge_summary(rid)["calls"] == 2
