"""The SDK as a small internal service embeds it: a spec built as a dict, a short fit with a
callback, then load and generate. Nothing may print. The README's "Embed it" block is this
test's SERVICE code, run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

import engrain

ROOT = Path(__file__).resolve().parents[1]


def readme_block() -> str:
    text = (ROOT / "README.md").read_text()
    return re.search(r"<!-- embed-example -->\n```python\n(.*?)```", text, re.S).group(1)


def test_embed_fit_list_load_generate_prints_nothing(tmp_path, tiny_dir, capsys):
    spec = yaml.safe_load((ROOT / "behaviors/pinapple.yaml").read_text())
    spec.update(model=str(tiny_dir), learned={"min_share_of_hinted": None, "min_rate": None})
    spec.pop("anchor")
    spec["regression"] = {"suites": [], "max_drop": 1.0}
    spec["train"].update({"batch_size": 2, "max_new_tokens": 6, "eval_every": 2})
    scope = {"spec": spec, "work": tmp_path}
    exec(readme_block(), scope)     # noqa: S102 - the README's example, as written
    events, answers, result = scope["events"], scope["answers"], scope["result"]
    steps = [e for e in events if isinstance(e, engrain.StepEvent)]
    evals = [e for e in events if isinstance(e, engrain.EvalEvent)]
    assert [e.step for e in steps] == [1, 2, 3, 4] and [e.step for e in evals] == [2, 4]
    assert all(e.run_id == result.run_id for e in events)
    # each step's event carries that step's figures, as the store recorded them (its 0-based step)
    from engrain.store import Store
    stored = {r["step"] + 1: r for r in Store(tmp_path / "runs.duckdb").steps(result.run_id)}
    assert [(e.n_selected, e.n_candidates, e.loss) for e in steps] == [
        (stored[e.step]["n_selected"], stored[e.step]["n_candidates"], pytest.approx(stored[e.step]["loss"]))
        for e in steps]
    assert any(e.n_selected != e.n_candidates for e in steps)      # the two can be told apart
    assert len(answers) == 1 and isinstance(answers[0], str)
    assert [(a.behavior, a.run_id) for a in scope["current"]] == [("pinapple", result.run_id)]
    assert scope["loaded"].behaviors == ("pinapple",)
    out = capsys.readouterr()
    assert out.out == ""


def test_a_bad_dict_raises_spec_error_naming_the_field(tmp_path):
    with pytest.raises(engrain.SpecError, match=r"train\.steps"):
        engrain.fit({"name": "x", "model": "lab", "train": {"steps": "many"}}, out_dir=tmp_path,
                    store=tmp_path / "s.duckdb")


def test_engrain_fit_is_the_function_and_the_module():
    import engrain.fit as module
    assert callable(engrain.fit) and module.fit.__name__ == "fit" and engrain.fit is module
