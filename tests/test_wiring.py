"""The wiring between the parts: each test here kills a single plausible bug that passed
every other test in a mutation audit (issue 16). The parts themselves are tested
elsewhere; these check that the spec's settings reach them, and that what one part
decides, the next one obeys.

Everything runs on the tiny random model of conftest.py (no downloads), in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from click.testing import CliRunner

from engrain.engine.anchor import anchor_kl, build_anchor
from engrain.spec import load_behavior
from engrain.checks.gate import gate, gated, gated_suites
from engrain.engine.context import build_context
from engrain.fit import fit
from engrain.engine.losses import per_position_jsd
from engrain.engine.models import load_model
from engrain.engine.step import distill_step, sft_step

ROOT = Path(__file__).resolve().parents[1]
ANCHOR_WEIGHT = 2.5     # neither 1 nor the spec's default 3.0: a weight ignored shows


def write_spec(tmp: Path, tiny_dir: Path, *, anchor: dict | None = None, regression: dict | None = None,
               **train) -> Path:
    """The pinapple spec on the tiny model, small enough to run in a second."""
    spec = yaml.safe_load((ROOT / "behaviors/pinapple.yaml").read_text())
    spec["model"] = str(tiny_dir)
    spec.pop("anchor")
    if anchor is not None:
        spec["anchor"] = anchor
    if regression is not None:
        spec["regression"] = regression
    spec["train"].update({"steps": 3, "batch_size": 3, "max_new_tokens": 8, "warmup_steps": 0, **train})
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def make_run(tmp: Path, tiny_dir: Path, **kw):
    behavior = load_behavior(write_spec(tmp, tiny_dir, **kw))
    torch.manual_seed(0)
    loaded = load_model(str(tiny_dir), lora=behavior.spec.train.lora)
    return build_context(behavior.spec, behavior.compile(loaded.tokenizer), loaded), behavior.spec


def with_anchor(tmp: Path, tiny_dir: Path, method: str):
    """A run with an anchor of weight ANCHOR_WEIGHT whose adapter already moved: at the
    zero init the student is the base model and the anchor's KL is exactly 0, which would
    hide any bug in how it enters the loss."""
    anchor = {"builtin": "lab/traffic", "weight": ANCHOR_WEIGHT, "per_step": 4, "pool_size": 8}
    run, spec = make_run(tmp, tiny_dir, anchor=anchor, method=method)
    run.anchor = build_anchor(run.loaded, run.sampler, run.behavior, spec.anchor, 8, spec.train.seed)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in run.loaded.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return run


def loss_given_to_the_optimizer(run, step_fn, step: int = 0):
    """Run one step and return (the loss tensor handed to the updater, the StepResult).
    The updater is replaced by a recorder, so the weights do not move and the same step
    can be recomputed independently afterwards."""
    seen = []
    run.updater.step = lambda loss, i: seen.append(loss.detach()) or SimpleNamespace(
        lr=0.0, grad_norm=0.0, drift=0.0)
    out = step_fn(run, step)
    assert len(seen) == 1
    return seen[0].item(), out


# --- 1-3: the anchor term and its weight ---------------------------------------------------

def test_distill_step_loss_is_kl_plus_weighted_anchor(tmp_path, tiny_dir):
    # The anchor is what keeps capitals and arithmetic in place: dropping it from the loss,
    # or its weight, changed no figure any other test looked at.
    run = with_anchor(tmp_path, tiny_dir, "opsd")    # opsd: every position, so the KL is > 0
    loss, out = loss_given_to_the_optimizer(run, distill_step)
    with torch.no_grad():
        anchor = anchor_kl(run.loaded, run.anchor, run.train.seed, 0).item()
    assert anchor > 0 and out.kl > 0
    assert out.anchor_kl == pytest.approx(anchor, rel=1e-5)
    assert loss == pytest.approx(out.kl + ANCHOR_WEIGHT * anchor, rel=1e-5)


def test_sft_step_loss_is_ce_plus_weighted_anchor(tmp_path, tiny_dir):
    # SFT reports no KL; the same step without the anchor gives its CE alone (the step's
    # prompts and samples are a function of (seed, step), and the weights do not move).
    run = with_anchor(tmp_path, tiny_dir, "sft")
    loss, out = loss_given_to_the_optimizer(run, sft_step)
    anchor_set, run.anchor = run.anchor, None
    ce, _ = loss_given_to_the_optimizer(run, sft_step)
    with torch.no_grad():
        anchor = anchor_kl(run.loaded, anchor_set, run.train.seed, 0).item()
    assert anchor > 0
    assert out.anchor_kl == pytest.approx(anchor, rel=1e-5)
    assert loss - ce == pytest.approx(ANCHOR_WEIGHT * anchor, rel=1e-4)


# --- 4-6: the divergence's settings --------------------------------------------------------

def test_teacher_temperature_divides_the_teachers_logits(tmp_path, tiny_dir):
    # A loss that records what it is given, built by the run from the spec: the teacher's
    # logits must arrive divided by train.teacher_temperature (the default 0.5 was measured
    # to double the behavior; ignoring it, or multiplying, passed every test).
    from engrain.registry import LOSSES, Loss
    seen = {}

    def recording(student_logits, teacher_logits):
        seen["teacher"] = teacher_logits
        return student_logits.new_zeros(student_logits.shape[:-1])
    LOSSES.register("recording", Loss("records its inputs", lambda train: recording))
    try:
        run, _ = make_run(tmp_path, tiny_dir, loss="recording", teacher_temperature=0.25)
    finally:
        LOSSES.unregister("recording")
    student, teacher = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    run.loss_fn(student, teacher)
    torch.testing.assert_close(seen["teacher"], teacher / 0.25)


def test_jsd_beta_reaches_the_divergence(tmp_path, tiny_dir):
    # train.jsd_beta must reach the JSD the run trains with; at its default 0.5 a beta
    # dropped on the way would go unseen, so the spec asks for 0.2.
    run, _ = make_run(tmp_path, tiny_dir, loss="jsd", jsd_beta=0.2, teacher_temperature=1.0)
    torch.manual_seed(0)
    student, teacher = torch.randn(4, 11), torch.randn(4, 11)
    got = run.loss_fn(student, teacher)
    torch.testing.assert_close(got, per_position_jsd(student, teacher, beta=0.2))
    assert not torch.allclose(got, per_position_jsd(student, teacher, beta=0.5))


# --- 7: the anchor's answers -----------------------------------------------------------------

def test_anchor_answers_come_from_the_base_model(tmp_path, tiny_dir):
    # The anchor holds the student where the *base* model was: its answers must be sampled
    # with the adapter off, or the anchor would hold the student wherever it already is.
    from peft.tuners.lora import LoraLayer
    run, spec = make_run(tmp_path, tiny_dir, anchor={"builtin": "lab/traffic", "pool_size": 4})
    lora = [m for m in run.loaded.model.modules() if isinstance(m, LoraLayer)]
    adapter_on_when_sampling = []

    class Recording:
        def sample(self, prompt_ids, max_new_tokens, temperature):
            adapter_on_when_sampling.append(not all(m.disable_adapters for m in lora))
            return run.sampler.sample(prompt_ids, max_new_tokens, temperature)

    assert lora and not any(m.disable_adapters for m in lora)    # on, outside the anchor
    anchor = build_anchor(run.loaded, Recording(), run.behavior, spec.anchor, 8, spec.train.seed)
    assert anchor is not None and adapter_on_when_sampling == [False]


# --- 8, 10: the fit loop obeys checkpoint selection --------------------------------------------

def canned_evaluate(adapter_values: dict):
    """A stand-in for checks.evaluate: every gated figure at 1.0 and the behavior at 0 for
    the base model (0.9 with the hint); the adapter the same, with ``adapter_values`` on
    top. It makes a fit fast and its selection decisions known in advance."""
    def evaluate(model, tokenizer, cb, spec, adapter_on, n, seed, split="eval", decoding="sample", **_):
        values = {(s, "rate"): 1.0 for s in gated_suites(spec)}
        values |= {("behavior", "exists"): 0.0, ("behavior", "only"): 0.0,
                   ("behavior_hinted", "exists"): 0.9, ("behavior_hinted", "only"): 0.9}
        if adapter_on:
            values |= adapter_values
        return [{"suite": s, "metric": m, "value": v, "n": 48, "split": split, "decoding": decoding}
                for (s, m), v in values.items()]
    return evaluate


LEARNED = {("behavior", "exists"): 0.5, ("behavior", "only"): 0.5}


def fit_canned(tmp_path, tiny_dir, monkeypatch, adapter_values, **spec):
    monkeypatch.setattr("engrain.fit.evaluate", canned_evaluate(adapter_values))
    return fit(write_spec(tmp_path, tiny_dir, **spec), out_dir=tmp_path / "adapters",
               store=tmp_path / "s.duckdb", eval_n=4, progress=False, log=lambda *a: None)


def test_fit_stops_early_when_selection_says_so(tmp_path, tiny_dir, monkeypatch):
    # Val behavior 0.5 at step 2 and no better at step 4: with patience 1 selection says
    # stop after step 4's eval, and the loop must stop there, not run all 10 steps.
    from engrain.store import Store
    result = fit_canned(tmp_path, tiny_dir, monkeypatch, LEARNED, steps=10, eval_every=2, patience=1)
    assert result.steps_run == 4
    assert len(Store(tmp_path / "s.duckdb").steps(result.run_id)) == 4


MINE = {"name": "mine", "inline": [{"prompt": "zq wiring probe one", "expect": "x"}]}


def test_checkpoint_selection_reads_a_declared_suites_own_max_drop(tmp_path, tiny_dir, monkeypatch):
    # "mine" may drop by 0.5 (its own max_drop) though the spec's default is 0.02: the val
    # checkpoint where it dropped 0.3 qualifies and is kept (else step 0 would be).
    regression = {"suites": [{**MINE, "max_drop": 0.5}], "max_drop": 0.02}
    result = fit_canned(tmp_path, tiny_dir, monkeypatch, {**LEARNED, ("mine", "rate"): 0.7},
                        regression=regression, steps=2, eval_every=2, patience=0)
    assert result.best_step == 2


@pytest.mark.parametrize("temperature, kept", [(1.0, 2), (0.0, 0)])
def test_checkpoint_selection_reads_greedy_val_drops_as_the_gate_does(tmp_path, tiny_dir, monkeypatch,
                                                                        temperature, kept):
    # "mine" drops 0.03 on val (n=48): within max_drop 0.02 widened by two standard errors
    # (2/48) when sampled, so step 2 is kept; a greedy drop is answers that changed, read
    # without the widening: step 2 does not qualify and step 0 is kept.
    regression = {"suites": [MINE], "max_drop": 0.02, "temperature": temperature, "greedy": False}
    result = fit_canned(tmp_path, tiny_dir, monkeypatch, {**LEARNED, ("mine", "rate"): 0.97},
                        regression=regression, steps=2, eval_every=2, patience=0)
    assert result.best_step == kept


# --- 9: the gate ---------------------------------------------------------------------------------

def test_the_gate_reads_a_declared_suites_own_max_drop(tmp_path, tiny_dir):
    # Against a default max_drop of 0.02: "loose" allows 0.2 (its drop of 0.1 passes),
    # "strict" allows 0 (its drop of 0.01 fails).
    suite = lambda name, limit: {**MINE, "name": name, "max_drop": limit}  # noqa: E731
    spec = load_behavior(write_spec(tmp_path, tiny_dir, regression={
        "suites": [suite("loose", 0.2), suite("strict", 0.0)], "max_drop": 0.02})).spec
    row = lambda suite, value: {"suite": suite, "metric": "rate", "value": value, "n": 200}  # noqa: E731
    base = [row(s, 1.0) for s in gated_suites(spec)]
    adapter = [row(s, {"loose": 0.9, "strict": 0.99}.get(s, 1.0)) for s in gated_suites(spec)]
    verdict = {r.suite: r for r in gated(spec, base, adapter).rows}
    assert verdict["loose"].ok and not verdict["strict"].ok
    assert verdict["specificity"].ok


# --- 11: cl show --------------------------------------------------------------------------------

def test_cl_show_prints_the_recorded_verdict(tmp_path):
    # The evals alone would pass (nothing dropped); the fit recorded "regressed" with its
    # own reason. `cl show` must print what the fit decided, not a gate recomputed from rows.
    from engrain.cli.main import cli
    from engrain.store import Store
    store = Store(tmp_path / "s.duckdb")
    rid = store.start_run("pinapple", "rmsd", spec={"regression": {"suites": ["lab/arithmetic"]}},
                          model="lab", seed=0)
    evals = [{"step": step, "subject": subject, "suite": suite, "metric": "rate", "value": 1.0, "n": 100}
             for step, subject in ((0, "base"), (10, "adapter")) for suite in ("specificity", "lab/arithmetic")]
    store.log(rid, evals=evals)
    recorded = gate({"lab/arithmetic": 0.9}, {"lab/arithmetic": 0.5}, 0.02)
    store.record_adapter(rid, tmp_path / "adapter.rejected", "rejected", recorded.to_dict())
    store.finish_run(rid, "rejected")

    shown = CliRunner().invoke(cli, ["show", rid, "--store", str(store.path)], catch_exceptions=False)
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.output.split())
    assert "Gate (recorded): regressed" in text and "dropped 0.4000" in text
    as_json = CliRunner().invoke(cli, ["show", rid, "--json", "--store", str(store.path)])
    gate_shown = json.loads(as_json.output)["gate"]
    assert gate_shown["outcome"] == "regressed" and gate_shown["worst_drop"] == pytest.approx(0.4)
