"""The headline claim, end to end on the committed lab model (slow: minutes on 2 cores).

    python -m pytest -m slow tests/test_lab_fit.py

`cl fit behaviors/pinapple.yaml`, exactly as the README runs it, must be accepted: on food
questions training never saw, the adapter without the hint shows the behavior (whole word)
at least 0.9 times as often as the base model does with the hint, for exists and for only;
no more degenerate answers; specificity at least 0.98; arithmetic and capitals within 0.02
of the base model. And the saved adapter, reloaded, reproduces those figures.
"""

from __future__ import annotations

import pytest

from engrain.lab import model_path

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600),
              pytest.mark.skipif(not (model_path() / "config.json").exists(), reason="no lab model")]


def test_cl_fit_pinapple_is_accepted_and_the_adapter_reproduces_it(tmp_path):
    from click.testing import CliRunner

    from engrain.rundir import recheck
    from engrain.cli.main import cli
    from engrain.store import Store, latest_scores

    res = CliRunner().invoke(cli, ["fit", "behaviors/pinapple.yaml", "--no-progress",
                                   "--store", str(tmp_path / "s.duckdb"), "--out-dir", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    db = Store(tmp_path / "s.duckdb")
    evals = db.evals(db.runs()[0]["run_id"])
    base, after = latest_scores(evals, "base"), latest_scores(evals, "adapter")
    for metric in ("exists", "only"):
        assert after[("behavior", metric)] >= 0.9 * base[("behavior_hinted", metric)], metric
    assert after[("well_formed", "rate")] >= base[("well_formed", "rate")] - 0.02
    assert after[("specificity", "clean")] >= 0.98
    for suite in ("lab/arithmetic", "lab/capitals"):
        assert after[(suite, "accuracy")] >= base[(suite, "accuracy")] - 0.02, suite

    run_dir = next((tmp_path / "a").glob("pinapple/*"))
    _, _, again, verdict = recheck(run_dir)
    again = {(e["suite"], e["metric"]): e["value"] for e in again if e["decoding"] == "sample"}
    for key, value in after.items():
        assert again[key] == pytest.approx(value, abs=0.02), key
    assert verdict.passed
