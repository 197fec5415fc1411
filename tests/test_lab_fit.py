"""The headline claim, end to end on the committed lab model (slow: minutes on 2 cores).

    python -m pytest -m slow tests/test_lab_fit.py
"""

from __future__ import annotations

import pytest

from engrain.lab import model_path

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (model_path() / "config.json").exists(), reason="no lab model")]


def test_cl_fit_pinapple_teaches_the_behavior_and_the_adapter_reproduces_it(tmp_path):
    from click.testing import CliRunner

    from engrain.checks import recheck
    from engrain.cli.main import cli
    from engrain.store import Store

    res = CliRunner().invoke(cli, ["fit", "behaviors/pinapple.yaml", "--no-progress",
                                   "--store", str(tmp_path / "s.duckdb"), "--out-dir", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    db = Store(tmp_path / "s.duckdb")
    run = db.runs()[0]
    after = {(e["suite"], e["metric"]): e["value"] for e in db.evals(run["run_id"])
             if e["subject"] == "adapter" and e["step"] == max(s["step"] for s in db.evals(run["run_id"]))}
    assert after[("behavior", "exists")] >= 0.6
    assert after[("specificity", "clean")] >= 0.95
    assert after[("lab/arithmetic", "accuracy")] >= 0.95

    run_dir = next((tmp_path / "a").glob("pinapple/*"))
    _, base, again, verdict = recheck(run_dir)
    again = {(e["suite"], e["metric"]): e["value"] for e in again}
    for key, value in after.items():
        assert abs(again[key] - value) <= 0.02, key
    assert verdict.passed
