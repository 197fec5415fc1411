"""The adapter library (engrain.library) and `cl adapters`: listing, promote, rollback, the
.current symlinks. Runs are written into the store directly; adapters are tiny folders with
an adapter_config.json (no weights: nothing here loads a model)."""

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from engrain.cli.main import cli
from engrain.library import LibraryError, adapters, auto_promote, current, current_runs, promote, rollback
from engrain.store import Store


def gate(passed: bool, drop: float) -> dict:
    row = {"suite": "lab/arithmetic", "base": 1.0, "adapter": 1.0 - drop, "drop": drop, "ok": passed, "reason": ""}
    small = {"suite": "specificity", "base": 0.9, "adapter": 0.9, "drop": 0.0, "ok": True, "reason": ""}
    return {"passed": passed, "max_drop": 0.02, "worst_drop": drop, "rows": [row, small], "learning": []}


def add_run(db: Store, root: Path, behavior: str, run_id: str, verdict: str, *, rate: float = 0.8,
            drop: float = 0.01, on=(), base_model: str = "/models/lab") -> Path:
    folder = root / behavior / run_id / ("adapter.rejected" if verdict == "rejected" else "adapter")
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 16, "base_model_name_or_path": base_model}))
    db.start_run(behavior, "rmsd", model="lab", config={"on": [str(p) for p in on]}, run_id=run_id)
    db.log_evals(run_id, [{"step": 10, "subject": "adapter", "suite": "behavior", "metric": "only",
                           "value": rate, "n": 100}])
    db.record_adapter(run_id, folder, verdict, gate(verdict != "rejected", drop))
    db.finish_run(run_id, "completed" if verdict == "accepted" else "rejected")
    return folder


@pytest.fixture()
def lib(tmp_path):
    db, root = Store(tmp_path / "s.duckdb"), tmp_path / "adapters"
    first = add_run(db, root, "pinapple", "aaaaaaaa-1", "accepted", rate=0.7)
    add_run(db, root, "pinapple", "bbbbbbbb-2", "accepted", rate=0.9, drop=0.015)
    add_run(db, root, "pinapple", "cccccccc-3", "rejected", rate=0.95, drop=0.2)
    add_run(db, root, "signoff", "dddddddd-4", "accepted", on=[first])
    return db, root


def invoke(*args, columns: int = 80):
    return CliRunner(env={"COLUMNS": str(columns)}).invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_stack_replay_is_pure():
    h = [{"behavior": "a", "run_id": r, "action": act} for r, act in
         [("1", "promote"), ("2", "promote"), ("3", "promote"), ("3", "rollback"), ("4", "promote")]]
    assert current_runs(h) == {"a": ["1", "2", "4"]}


def test_entries_carry_the_figures_and_lineage(lib):
    db, root = lib
    entries = {e.run_id: e for e in adapters(db)}
    assert len(entries) == 4 and not any(e.current for e in entries.values())
    b = entries["bbbbbbbb-2"]
    assert (b.behavior, b.verdict, b.method, b.model) == ("pinapple", "accepted", "rmsd", "lab")
    assert b.behavior_rate == 0.9 and b.worst_drop == 0.015 and b.worst_suite == "lab/arithmetic"
    assert entries["dddddddd-4"].on == (str(root / "pinapple" / "aaaaaaaa-1" / "adapter"),)
    assert [e.run_id for e in adapters(db, "signoff")] == ["dddddddd-4"]


def test_promote_rollback_and_the_pointer(lib):
    db, root = lib
    with pytest.raises(LibraryError, match="no current adapter; promote one"):
        current(db, "pinapple")
    with pytest.raises(LibraryError, match="no adapter of behavior 'nope'"):
        current(db, "nope")
    assert promote(db, "aaaa").current
    link = root / ".current" / "pinapple"
    assert link.is_symlink() and os.readlink(link) == os.path.join("..", "pinapple", "aaaaaaaa-1", "adapter")
    promote(db, "bbbb", actor="ana@box")
    assert current(db, "pinapple").run_id == "bbbbbbbb-2"
    assert link.resolve() == (root / "pinapple" / "bbbbbbbb-2" / "adapter").resolve()
    assert [(p["action"], p["actor"]) for p in db.promotions("pinapple")][-1] == ("promote", "ana@box")
    back = rollback(db, "pinapple")
    assert back.run_id == "aaaaaaaa-1" and current(db, "pinapple").run_id == "aaaaaaaa-1"
    assert link.resolve() == (root / "pinapple" / "aaaaaaaa-1" / "adapter").resolve()
    with pytest.raises(LibraryError, match="nothing to roll back to"):
        rollback(db, "pinapple")
    assert current(db, "pinapple").run_id == "aaaaaaaa-1"      # a refused rollback changed nothing


def test_only_accepted_unless_forced(lib):
    db, root = lib
    with pytest.raises(LibraryError, match="rejected by the gate.*--force"):
        promote(db, "cccc")
    entry = promote(db, "cccc", force=True)
    assert entry.current and (root / ".current" / "pinapple").resolve() == entry.path.resolve()
    assert db.promotions("pinapple")[-1]["forced"] is True


def test_auto_promote_only_the_first(lib):
    db, _ = lib
    assert auto_promote(db, "aaaaaaaa-1").run_id == "aaaaaaaa-1"
    assert auto_promote(db, "bbbbbbbb-2") is None
    assert auto_promote(db, "dddddddd-4").current
    assert db.promotions("pinapple")[0]["actor"].endswith("(fit)")


def test_cl_adapters_lists_and_marks_current(lib):
    db, _ = lib
    promote(db, "bbbb")
    out = invoke("adapters", "--store", db.path).output
    assert "pinapple" in out and "signoff" in out and "bbbbbbbb" in out and "cccccccc" not in out
    line = next(l for l in out.splitlines() if "bbbbbbbb" in l)
    assert line.lstrip().startswith("*") and "0.900" in line and "+0.015 lab/arithmetic" in line
    out = invoke("adapters", "--store", db.path, columns=120).output    # the lineage gives way below that
    assert "pinapple@aaaaaaaa" in next(l for l in out.splitlines() if "dddddddd" in l)
    out = invoke("adapters", "--store", db.path, "--all", "--behavior", "pinapple").output
    assert "cccccccc" in out and "rejected" in out and "signoff" not in out
    data = json.loads(invoke("adapters", "--store", db.path, "--json").output)
    assert [d["run_id"] for d in data if d["current"]] == ["bbbbbbbb-2"]


def test_cl_promote_and_rollback(lib):
    db, root = lib
    result = invoke("adapters", "promote", "aaaa", "--store", db.path)
    assert result.exit_code == 0 and "current adapter is now aaaaaaaa" in result.output
    # the test adapters name a base model that is not the lab's: the command says so
    assert "vLLM's filesystem resolver would skip it" in result.output
    result = CliRunner().invoke(cli, ["adapters", "promote", "cccc", "--store", str(db.path)])
    assert result.exit_code == 1 and "--force" in result.output and "Traceback" not in result.output
    invoke("adapters", "promote", "cccc", "--force", "--store", db.path)
    result = invoke("adapters", "rollback", "pinapple", "--store", db.path)
    assert result.exit_code == 0 and "now aaaaaaaa" in result.output
    result = CliRunner().invoke(cli, ["adapters", "rollback", "signoff", "--store", str(db.path)])
    assert result.exit_code == 1 and "nothing to roll back to" in result.output


def test_unknown_run_is_one_line(lib):
    db, _ = lib
    result = CliRunner().invoke(cli, ["adapters", "promote", "zzzz", "--store", str(db.path)])
    assert result.exit_code == 1 and "no run 'zzzz'" in result.output


def test_a_kept_rejected_adapter_is_not_promoted_unless_forced(lib):
    # `cl fit --keep-rejected` records "kept": the gate refused it all the same.
    db, root = lib
    add_run(db, root, "pinapple", "eeeeeeee-5", "kept", rate=0.99, drop=0.3)
    with pytest.raises(LibraryError, match="kept by the gate.*--force"):
        promote(db, "eeee")
    with pytest.raises(LibraryError, match="no current adapter"):
        current(db, "pinapple")                              # the refusal changed nothing
    assert promote(db, "eeee", force=True).current
    assert db.promotions("pinapple")[-1]["forced"] is True


def test_rollback_returns_to_the_previous_adapter_not_the_first(lib):
    db, root = lib
    add_run(db, root, "pinapple", "ffffffff-6", "accepted", rate=0.92)
    for run_id in ("aaaa", "bbbb", "ffff"):
        promote(db, run_id)
    assert current(db, "pinapple").run_id == "ffffffff-6"
    back = rollback(db, "pinapple")
    assert back.run_id == "bbbbbbbb-2" and current(db, "pinapple").run_id == "bbbbbbbb-2"
    link = root / ".current" / "pinapple"
    assert link.resolve() == (root / "pinapple" / "bbbbbbbb-2" / "adapter").resolve()
    assert rollback(db, "pinapple").run_id == "aaaaaaaa-1"                # and once more, the first
    assert link.resolve() == (root / "pinapple" / "aaaaaaaa-1" / "adapter").resolve()
