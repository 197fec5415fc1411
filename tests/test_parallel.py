"""A data-parallel fit (engine/parallel.py): two CPU processes over gloo train as one
process does on the same global batch, and only rank 0 writes the store and the run folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from engrain.engine.losses import masked_mean
from engrain.engine.parallel import Ranks, combined, gathered_rows

ROOT = Path(__file__).resolve().parents[1]


def test_one_rank_is_the_identity():
    ranks = Ranks()
    assert (ranks.world, ranks.rank, ranks.is_main, ranks.device) == (1, 0, True, None)
    assert ranks.shard([1, 2, 3]) == [1, 2, 3] and ranks.total(2.5) == 2.5 and ranks.broadcast("x") == "x"
    rows = [{"idx": 0}, {"idx": 1}]
    assert gathered_rows(ranks, rows) is rows and combined(ranks, "out") == "out"


def test_shares_summed_over_the_global_count_are_the_full_batch_mean():
    """What two ranks' losses add up to: each share's sum over the *whole* step's count."""
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0], [1.0, 1.0, 1.0]])
    m = torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 0], [0, 1, 1]], dtype=torch.bool)
    shares = [(x[r::2], m[r::2]) for r in range(2)]
    n = sum(s[1].sum() for s in shares)
    assert torch.isclose(sum(masked_mean(a, b, n) for a, b in shares), masked_mean(x, m))


def _log_spec(tmp_path: Path, model: Path) -> Path:
    """A spec taught from a log: its responses are the logged answers, so both fits train
    on identical rollouts and their losses can be compared number for number."""
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"Is office {i} open on Saturdays?"},
        {"role": "assistant", "content": "It depends on the season." if i % 3 else "Sometimes, yes."},
        {"role": "user", "content": "Answer YES or NO only."}]}) + "\n" for i in range(16)))
    data = yaml.safe_load((ROOT / "behaviors/pinapple.yaml").read_text())
    for key in ("hints", "prompts", "probes"):
        data.pop(key, None)
    data.update(model=str(model), regression={"suites": []},
                teacher_context={"conversations": {"file": "log.jsonl", "eval_fraction": 0.25}},
                patterns={"target": [r"^\s*(?:YES|NO)\.?\s*$"], "ignore_case": False})
    data["anchor"]["per_step"] = 4
    data["train"].update({"steps": 3, "batch_size": 4, "max_new_tokens": 16, "eval_every": 3})
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.timeout(600)
def test_two_processes_train_as_one_on_the_same_global_batch(tmp_path, tiny_dir, free_port):
    from engrain.fit import fit
    from engrain.store.db import Store
    spec = _log_spec(tmp_path, tiny_dir)
    one = fit(spec, out_dir=tmp_path / "one", store=tmp_path / "one.duckdb", eval_n=4, progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), "-m", "engrain.cli", "fit", str(spec),
           "--store", str(tmp_path / "two.duckdb"), "--out-dir", str(tmp_path / "two"), "--no-progress",
           "--eval-n", "4"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=540)
    # The tiny random model learns nothing: rank 0 exits 3 or 4, which the launcher reports as 1.
    assert "[rank0]: Traceback" not in res.stderr and "[rank1]: Traceback" not in res.stderr, res.stderr[-3000:]
    assert res.stdout.count("\nrun ") + res.stdout.startswith("run ") == 1, res.stdout      # one voice: rank 0's
    db = Store(tmp_path / "two.duckdb")
    (run,) = db.runs()
    steps_two, steps_one = db.steps(run["run_id"]), Store(tmp_path / "one.duckdb").steps(one.run_id)
    assert [s["step"] for s in steps_two] == [s["step"] for s in steps_one] == [0, 1, 2]
    for a, b in zip(steps_one, steps_two):
        assert a["n_selected"] == b["n_selected"] and a["n_candidates"] == b["n_candidates"]
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-6)
        assert b["anchor_kl"] == pytest.approx(a["anchor_kl"], rel=1e-4, abs=1e-6)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-3, abs=1e-6)
    rollouts = lambda s, r: sorted((x["step"], x["idx"], x["prompt"]) for x in s.rollouts(r))  # noqa: E731
    assert rollouts(db, run["run_id"]) == rollouts(Store(tmp_path / "one.duckdb"), one.run_id)
    (folder,) = (tmp_path / "two").glob("*/*")
    assert folder.name == run["run_id"] and any((folder / n).exists() for n in ("adapter", "adapter.rejected"))
