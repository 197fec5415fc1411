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


def test_a_launcher_that_started_one_of_several_processes_is_named(monkeypatch):
    from engrain.engine.parallel import launcher_note
    for k in ("ACCELERATE_USE_CPU", "MASTER_PORT", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    assert launcher_note() is None                                  # a plain cl fit
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    assert launcher_note() is None                                  # accelerate launch --cpu, one process meant
    monkeypatch.setenv("MASTER_PORT", "29500")                      # ... --num_processes 2: one started
    assert "--multi_gpu" in launcher_note() and "torchrun" in launcher_note()
    monkeypatch.setenv("WORLD_SIZE", "2")                           # two started (torchrun)
    assert launcher_note() is None


def test_shares_summed_over_the_global_count_are_the_full_batch_mean():
    """What two ranks' losses add up to: each share's sum over the *whole* step's count."""
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0], [1.0, 1.0, 1.0]])
    m = torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 0], [0, 1, 1]], dtype=torch.bool)
    shares = [(x[r::2], m[r::2]) for r in range(2)]
    n = sum(s[1].sum() for s in shares)
    assert torch.isclose(sum(masked_mean(a, b, n) for a, b in shares), masked_mean(x, m))


def _prompt_ids(tokenizer, n: int) -> list[list[int]]:
    from engrain.lab.tokenizer import render_prompt
    qs = ["What fruit goes in a smoothie?", "What is 7 plus 5?", "Name a capital.", "Suggest a snack for later."]
    return [tokenizer(render_prompt([{"role": "user", "content": qs[i % 4] + " " * (i % 3)}]),
                      add_special_tokens=False)["input_ids"] for i in range(n)]


@pytest.mark.parametrize("batch_size", [64, 4])
def test_each_ranks_share_samples_what_one_process_samples_for_those_rows(tiny_model, lab_tokenizer, batch_size,
                                                                          monkeypatch):
    """Every rank samples its rows with the draws the whole batch gives them: the shares put
    together are one process's rollouts, token for token (also when the batch needs several
    generate calls, whose lengths a rank cannot know: each call after the first draws from a
    seed of its own)."""
    from engrain.engine import rollout
    from engrain.engine.rollout import HFSampler, Share
    ids, sampler = _prompt_ids(lab_tokenizer, 10), HFSampler(tiny_model, lab_tokenizer, batch_size)
    # The random model almost never ends a turn: let one token in 13 end it, so that answers
    # (and so generate calls) end at different lengths.
    monkeypatch.setattr(rollout, "stop_ids", lambda model, tokenizer: list(range(2, len(lab_tokenizer), 13)))

    def draw(rows):
        torch.manual_seed(77)       # what sample_batch does at each step, on every rank
        return dict(zip(rows, sampler.sample([ids[k] for k in rows], 12, 1.0, Share(tuple(rows), 10))))

    one = draw(list(range(10)))
    two = {**draw(list(range(0, 10, 2))), **draw(list(range(1, 10, 2)))}
    three = {**draw([0, 3, 6, 9]), **draw([1, 4, 7]), **draw([2, 5, 8])}
    assert one == two == three
    assert len({tuple(v) for v in one.values()}) > 5        # sampled, not one repeated answer
    assert len({len(v) for v in one.values()}) > 2          # ended at different lengths
    torch.manual_seed(78)
    assert dict(enumerate(sampler.sample(ids, 12, 1.0, Share(tuple(range(10)), 10)))) != one


def test_a_whole_batch_share_draws_what_plain_sampling_draws(tiny_model, lab_tokenizer):
    """One process's step (every row, one generate call) samples exactly what transformers'
    own sampling did before shares existed: a fit's draws are unchanged by them."""
    from engrain.engine.rollout import HFSampler, Share
    ids, sampler = _prompt_ids(lab_tokenizer, 8), HFSampler(tiny_model, lab_tokenizer)
    for temperature in (1.0, 0.7):
        torch.manual_seed(5)
        plain = sampler.sample(ids, 12, temperature)
        torch.manual_seed(5)
        assert sampler.sample(ids, 12, temperature, Share(tuple(range(8)), 8)) == plain


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


def _sampled_spec(tmp_path: Path, model: Path) -> Path:
    """pinapple's spec on the tiny model, a few short steps: its rollouts are sampled."""
    data = yaml.safe_load((ROOT / "behaviors/pinapple.yaml").read_text())
    data.update(model=str(model), regression={"suites": []})
    data["anchor"]["per_step"] = 4
    data["train"].update({"steps": 3, "batch_size": 4, "max_new_tokens": 16, "eval_every": 3})
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.timeout(600)
@pytest.mark.parametrize("rollouts", ["logged", "sampled"])
def test_two_processes_train_as_one_on_the_same_global_batch(tmp_path, tiny_dir, free_port, rollouts):
    """Logged answers (identical rollouts by construction) and sampled ones (each rank draws
    what one process draws for its rows): the same rollouts, losses and counts."""
    from engrain.fit import fit
    from engrain.store.db import Store
    spec = (_log_spec if rollouts == "logged" else _sampled_spec)(tmp_path, tiny_dir)
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
    stored = lambda s, r: sorted((x["step"], x["idx"], x["prompt"], list(x["token_ids"]))  # noqa: E731
                                 for x in s.rollouts(r))
    assert stored(db, run["run_id"]) == stored(Store(tmp_path / "one.duckdb"), one.run_id)
    (folder,) = (tmp_path / "two").glob("*/*")
    assert folder.name == run["run_id"] and any((folder / n).exists() for n in ("adapter", "adapter.rejected"))
