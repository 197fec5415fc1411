"""Seconds per training step, tokens per second and peak memory: TRL's SDFT trainer beside
engrain's RMSD and OPSD, on the same lab work, in one run.

    pip install -e '.[bench]' && python benchmarks/vs_trl.py --reps 3 --steps 20
    python benchmarks/vs_trl.py --reps 1 --steps 2 --warmup 0        # a smoke test
    python benchmarks/vs_trl.py --reps 3 --steps 20 --quality        # + the lab scorecard (minutes)
    python benchmarks/vs_trl.py --model /tmp/qwen-shaped --sampler vllm --no-trl --peak-tflops 989
    python benchmarks/vs_trl.py --to-quality --reps 3 --svg t.svg   # time until an adapter the gate accepts

``--model`` runs the same work on another model folder (e.g. benchmarks/qwen_shaped.py's
Qwen3-0.6B-shaped one), ``--sampler`` picks engrain's rollout backend (TRL always uses
transformers' generate here), ``--no-trl`` leaves TRL out (where it is not installed), and
``--peak-tflops`` (the accelerator's dense peak in the run's dtype) adds model FLOP
utilisation: model FLOPs per step / step seconds / peak. Model FLOPs count 2 x P per token
per forward pass through the P-parameter model (tied embeddings once): the rollout's
prompt and answer tokens, the student's, the teacher's and (rmsd) the base's scoring
passes, and 2 x P per student token for backward (activation gradients; LoRA leaves the
weights frozen); the anchor's pass is left out, so MFU is a lower bound.

The work: the spec's lab model, its train prompts and hint phrasings (engrain's own
``sample_batch`` draws each step's 16 (prompt, hint) pairs; TRL's dataset holds the same
pairs in the same order, one rollout each), its LoRA, learning rate and schedule, 48 new
tokens at most, temperature 1, top_k 0, top_p 1, one torch thread count for all.
Engrain's runs are built as ``cl fit`` builds them (``step_cost.make``); TRL's is
``trl.experimental.sdft.SDFTTrainer`` with the closest settings its API has. Settings
that cannot be matched are printed at the end.

Each (system, repetition) runs in its own subprocess, so memory peaks do not mix; the
systems take turns, the order rotating each repetition, so machine noise hits them alike.
Per step it records the wall time and where it went: generation (the sampler's / TRL's
``_generate``), the rollout stage around it (prompt ids, teacher prompts), forward + loss,
and backward + optimizer step. It prints medians over the steps after ``--warmup``, per
system and per repetition, response tokens per second, the peak RSS while training
(VmHWM, reset when training starts), and each engrain method's ratio to TRL.
``--quality`` adds each adapter's lab scorecard (temperature 1) after the last repetition,
beside the base model's, so speed is never bought with quality.

Run it on an otherwise idle machine: two torch processes on the same cores slow each other
many-fold (on 2 busy cores a step took 18 s instead of 0.2 s).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# step_cost.make builds a run exactly as `cl fit` does; import it rather than copy it.
sys.path.insert(0, str(Path(__file__).resolve().parent))

COLUMNS = ("generate", "rollout", "fwd+loss", "update")
# TRL composes the teacher's user message from a template; these reproduce engrain's
# placements (chat.place_hint). A system-message hint has no template equivalent.
TEACHER_TEMPLATES = {"user_suffix": "{prompt}\n{privileged_context}",
                     "user_prefix": "{privileged_context}\n{prompt}"}
TRL_DEFAULT_TEMPLATE = "{prompt}\n\n{privileged_context}"


# --- measuring ---------------------------------------------------------------------------

from loss_memory import _proc_kib      # noqa: E402  (benchmarks/ is on the path, above)


def reset_peak() -> float:
    """Reset VmHWM to the current RSS, so the peak read later is training's; returns the RSS in MiB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _proc_kib("VmRSS") / 1024


class Clock:
    """Seconds (and counts) accumulated by wrapped calls since the last ``take()``."""

    def __init__(self):
        self.spent: dict[str, float] = {}

    def add(self, name: str, value: float) -> None:
        self.spent[name] = self.spent.get(name, 0.0) + value

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - t0)
        return timed

    def take(self) -> dict[str, float]:
        out, self.spent = self.spent, {}
        return out


def scorecard(model, tokenizer, a, adapter_on: bool = True) -> dict[str, float]:
    from engrain.checks.evals import run_suites
    from engrain.lab.suites import scorecard_suites
    results = run_suites(model, tokenizer, scorecard_suites(a.quality_n), adapter_on=adapter_on, seed=a.seed)
    return {f"{r.suite}/{r.metric}": r.value for r in results}


# --- the workers (one subprocess each) ------------------------------------------------------

def engrain_worker(a) -> dict:
    from step_cost import make

    from engrain.registry import METHODS

    run = make(a.spec, a.worker, a.seed, a.sampler, a.model)
    params = sum(p.numel() for p in run.loaded.model.parameters())   # tied weights once
    clock = Clock()
    run.sampler.sample = clock.wrap("generate", run.sampler.sample)   # after the anchor's sampling
    step_fn = METHODS.get(run.train.method).step
    rss0, rows = reset_peak(), []
    for step in range(a.steps):
        out = step_fn(run, step)
        st = out.stage_seconds
        rows.append({"seconds": out.seconds, "tokens": sum(len(r) for r in out.rollouts.response_ids),
                     "flops": model_flops(params, out.rollouts, run.needs_base),
                     "generate": clock.take().get("generate", 0.0), **st,
                     "fwd+loss": st["score"] + st["mask"] + st["loss"]})
    result = {"rows": rows, "rss0_mib": rss0, "peak_mib": _proc_kib("VmHWM") / 1024}
    if a.quality:
        result["quality"] = scorecard(run.loaded.model, run.tokenizer, a)
        if a.with_base:
            result["base"] = scorecard(run.loaded.model, run.tokenizer, a, adapter_on=False)
    return result


def model_flops(params: int, ro, base_pass: bool) -> float:
    """Model FLOPs of one engrain step, anchor excluded (see the module's docstring)."""
    student = sum(len(p) + len(r) for p, r in zip(ro.student_prompt_ids, ro.response_ids))
    teacher = sum(len(p) + len(r) for p, r in zip(ro.teacher_prompt_ids, ro.response_ids))
    passes = 3 * student + teacher + (student if base_pass else 0)   # rollout, fwd, bwd, teacher, base
    return 2.0 * params * passes


def trl_worker(a) -> dict:
    # TRL wants an output_dir; nothing is saved there.
    with tempfile.TemporaryDirectory(prefix="vs_trl_") as out_dir:
        return train_trl(a, out_dir)


def train_trl(a, out_dir: str, setup=None) -> dict:
    """TRL's SDFT trainer on the spec's work for ``a.steps`` steps. ``setup(trainer,
    tokenizer, compiled behavior, spec, step timer)`` may return more callbacks, run after
    the step timer's (benchmarks/to_quality.py's val evals)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl.experimental.sdft import SDFTTrainer

    from engrain.spec.behavior import load_behavior
    from engrain.engine.models import load_tokenizer, resolve_model_path
    from engrain.engine.step import sample_batch

    behavior = load_behavior(a.spec).with_overrides({"seed": a.seed, **({"model": a.model} if a.model else {})})
    spec, cfg = behavior.spec, behavior.spec.train
    tok = load_tokenizer(spec.model)
    cb = behavior.compile(tok)
    # Engrain's own draws for each step, in step order: TRL's step s trains on engrain's step s batch.
    batches = [sample_batch(cb, cfg.seed, s, cfg.batch_size) for s in range(a.steps)]
    rows = [{"prompt": cb.student_messages(p), "privileged_context": cb.hints[h]}
            for prompts, hints in batches for p, h in zip(prompts, hints)]
    cuda = torch.cuda.is_available()
    # The same dtype and device as engrain's load_model.
    model = AutoModelForCausalLM.from_pretrained(
        resolve_model_path(spec.model), dtype=torch.bfloat16 if cuda else torch.float32)
    lora = cfg.lora
    peft_config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                             target_modules=lora.target_modules, task_type="CAUSAL_LM")
    clock = Clock()
    timer = step_timer(clock)
    trainer = SDFTTrainer(model=model, args=trl_config(cfg, spec.hints.placement, a.steps, out_dir, cuda),
                          train_dataset=Dataset.from_list(rows), processing_class=tok,
                          peft_config=peft_config, callbacks=[timer])
    for extra in (setup(trainer, tok, cb, spec, timer) if setup else []):
        trainer.add_callback(extra)
    use_engrain_schedule(trainer, cfg)
    checks = {"student prompt ids": _same_ids(trainer, cb, batches[0], teacher=False),
              "teacher prompt ids": _same_ids(trainer, cb, batches[0], teacher=True)}
    mismatched = instrument(trainer, clock, cb, batches)
    trainer.train()
    checks["batches"] = not any(mismatched)
    result = {"rows": timer.rows, "rss0_mib": timer.rss0, "peak_mib": _proc_kib("VmHWM") / 1024,
              "checks": checks}
    if a.quality:
        result["quality"] = scorecard(trainer.model, tok, a)
        if a.with_base:
            result["base"] = scorecard(trainer.model, tok, a, adapter_on=False)
    return result


def trl_config(cfg, placement: str, steps: int, out_dir: str, cuda: bool):
    """SDFTConfig as close to the spec's train section as its fields allow."""
    from trl.experimental.sdft import SDFTConfig

    from engrain.engine.update import BETAS, CLIP_NORM
    return SDFTConfig(
        output_dir=out_dir, max_steps=steps, per_device_train_batch_size=cfg.batch_size,
        # One rollout per (prompt, hint) row, in the dataset's order (TRL's default: 8 per prompt, shuffled).
        gradient_accumulation_steps=1, num_generations=1, shuffle_dataset=False,
        learning_rate=cfg.lr, optim="adamw_torch", adam_beta1=BETAS[0], adam_beta2=BETAS[1],
        weight_decay=0.0, max_grad_norm=CLIP_NORM,
        max_completion_length=cfg.max_new_tokens, temperature=cfg.temperature, top_k=0, top_p=1.0,
        # Forward KL over the full vocabulary: engrain's train.loss "fkl" (alpha 0 = forward KL).
        distillation_mode="full_logits", distillation_alpha=0.0, teacher_model_kind="base",
        teacher_prompt_template=TEACHER_TEMPLATES.get(placement, TRL_DEFAULT_TEMPLATE),
        # TRL's config defaults to bf16 autocast and gradient checkpointing; engrain uses neither.
        use_cpu=not cuda, bf16=False, gradient_checkpointing=False, seed=cfg.seed,
        report_to="none", save_strategy="no", eval_strategy="no", logging_strategy="no", disable_tqdm=True)


def use_engrain_schedule(trainer, cfg) -> None:
    """Engrain's learning rate per step (warmup, then cosine to lr x min_lr_ratio over
    train.steps) instead of TRL's: train() keeps an optimizer and scheduler set before it."""
    import torch

    from engrain.engine.update import lr_at
    trainer.create_optimizer()
    trainer.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
        trainer.optimizer, lambda s: lr_at(s, cfg.steps, cfg.lr, cfg.warmup, cfg.min_lr_ratio) / cfg.lr)


def step_timer(clock: Clock):
    """A callback timing each optimizer step (on_step_begin -> on_step_end) and taking
    the clock's stage figures; it resets the RSS peak when training starts."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.rows, self.rss0, self.t0 = [], 0.0, 0.0

        def on_train_begin(self, *_, **__):
            self.rss0 = reset_peak()

        def on_step_begin(self, *_, **__):
            clock.take()
            self.t0 = time.perf_counter()

        def on_step_end(self, *_, **__):
            row = {"seconds": time.perf_counter() - self.t0, **clock.take()}
            row["update"] = row["seconds"] - row["rollout"] - row["fwd+loss"]
            self.rows.append(row)

    return StepTimer()


def instrument(trainer, clock: Clock, cb, batches) -> list[bool]:
    """Time the trainer's generation, rollout batch and loss; count response tokens; and
    record, per step, whether its batch differs from engrain's draw."""
    generate, prepare = trainer._generate, trainer._prepare_training_batch
    expected, mismatched = iter(batches), []

    def counted_generate(prompt_ids):
        out = generate(prompt_ids)
        clock.add("tokens", sum(len(c) for c in out[1]))
        return out

    def checked_prepare(inputs):
        prompts, hints = next(expected)
        got = [(x["prompt"][-1]["content"], x["privileged_context"]) for x in inputs]
        mismatched.append(got != [(p, cb.hints[h]) for p, h in zip(prompts, hints)])
        return prepare(inputs)

    trainer._generate = clock.wrap("generate", counted_generate)
    trainer._prepare_training_batch = clock.wrap("rollout", checked_prepare)
    trainer.compute_loss = clock.wrap("fwd+loss", trainer.compute_loss)
    return mismatched


def _same_ids(trainer, cb, batch, teacher: bool) -> bool:
    """Whether TRL's prompt ids for a batch are engrain's, token for token."""
    prompts, hints = batch
    messages = [cb.student_messages(p) for p in prompts]
    if teacher:
        messages = trainer.teacher_context_builder.select_generation_prompts(messages, [cb.hints[h] for h in hints])
        ours = [cb.teacher_ids(p, h) for p, h in zip(prompts, hints)]
    else:
        ours = [cb.student_ids(p) for p in prompts]
    return [list(map(int, ids)) for ids in trainer._tokenize_prompts(messages)] == ours


def worker(a) -> dict:
    import torch
    if a.threads:
        torch.set_num_threads(a.threads)
    result = trl_worker(a) if a.worker == "trl" else engrain_worker(a)
    return {**result, "threads": torch.get_num_threads()}


# --- the driver ---------------------------------------------------------------------------

def run_worker(a, system: str, quality: bool, with_base: bool) -> dict:
    cmd = [sys.executable, __file__, "--worker", system, "--spec", a.spec, "--steps", str(a.steps),
           "--seed", str(a.seed), "--quality-n", str(a.quality_n)]
    cmd += ["--threads", str(a.threads)] if a.threads else []
    cmd += ["--model", a.model] if a.model else []
    cmd += ["--sampler", a.sampler] if a.sampler else []
    cmd += ["--quality"] if quality else []
    cmd += ["--with-base"] if with_base else []
    # The lab work is local: no hub look-ups, and no telemetry ping from TRL's trainer setup.
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "TRL_EXPERIMENTAL_SILENCE": "1",
           **os.environ}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"{system} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def median(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if key in r]
    return statistics.median(values) if values else None


def cells(values) -> str:
    return "".join(f"{v:9.3f}" if v is not None else f"{'-':>9}" for v in values)


def report(a, systems: list[str], results: dict[str, list[dict]], seconds: float) -> None:
    from engrain.spec.behavior import load_behavior
    spec = load_behavior(a.spec).with_overrides({**({"model": a.model} if a.model else {}),
                                                 **({"sampler": a.sampler} if a.sampler else {})}).spec
    cfg = spec.train
    ref = "trl" if "trl" in systems else None
    kept = {s: [r for rep in results[s] for r in rep["rows"][a.warmup:]] for s in systems}
    peak = {s: statistics.median(rep["peak_mib"] for rep in results[s]) for s in systems}
    rss0 = {s: statistics.median(rep["rss0_mib"] for rep in results[s]) for s in systems}
    tok_s = {s: median(kept[s], "tokens") / median(kept[s], "seconds") for s in systems}
    mfu = {s: (median(kept[s], "flops") / median(kept[s], "seconds") / (a.peak_tflops * 1e12)
               if a.peak_tflops and median(kept[s], "flops") else None) for s in systems}
    print(f"\n{a.spec} on {spec.model} (sampler {cfg.sampler}): batch {cfg.batch_size}, at most {cfg.max_new_tokens} new tokens, lr {cfg.lr}, "
          f"LoRA r={cfg.lora.r} alpha={cfg.lora.alpha} {cfg.lora.target_modules}; {a.reps} repetition(s) "
          f"x {a.steps} steps per system ({a.warmup} warm-up left out of each), torch threads "
          f"{results[systems[0]][0]['threads']}, {seconds:.0f} s in all\n")
    head = (f"{'system':<7}" + "".join(f"{c:>9}" for c in COLUMNS)
            + f"{'step s':>9}{'tokens':>8}{'tok/s':>8}{'RSS0 MiB':>10}{'peak MiB':>10}{'MFU':>8}")
    print(head + "\n" + "-" * len(head))
    for s in systems:
        rs = kept[s]
        print(f"{s:<7}{cells(median(rs, c) for c in COLUMNS)}{cells([median(rs, 'seconds')])}"
              f"{median(rs, 'tokens'):8.0f}{tok_s[s]:8.0f}{rss0[s]:10.0f}{peak[s]:10.0f}"
              + (f"{mfu[s]:8.2%}" if mfu[s] is not None else f"{'-':>8}"))
    print("medians over steps. generate: the sampler's generate (engrain) / SDFTTrainer._generate; rollout: "
          "that plus prompt ids and teacher prompts (engrain's rollout stage / _prepare_training_batch); "
          "fwd+loss: engrain's score + mask + loss stages / compute_loss (student and teacher forward, "
          "divergence); update: backward, clipping, optimizer step (TRL: the step's remainder). RSS0: RSS "
          "when training starts; peak: VmHWM while training. MFU: model FLOPs per step (engrain only; anchor "
          f"excluded) / step seconds / --peak-tflops {a.peak_tflops or '(not given)'}.")
    print("\nmedian step seconds per repetition (the run order rotates each repetition)")
    print(f"{'system':<7}" + "".join(f"{'rep ' + str(i + 1):>9}" for i in range(a.reps)))
    for s in systems:
        print(f"{s:<7}{cells(median(rep['rows'][a.warmup:], 'seconds') for rep in results[s])}")
    print()
    for m in (systems[1:] if ref else []):
        print(f"{m} / trl step time: {median(kept[m], 'seconds') / median(kept['trl'], 'seconds'):.2f}   "
              f"tokens/s: {tok_s[m] / tok_s['trl']:.2f}   peak RSS: {peak[m] / peak['trl']:.2f}")
    print("\nengrain stages (StepResult.stage_seconds, medians)")
    from engrain.engine.step import STAGES
    print(f"{'method':<7}" + "".join(f"{s:>9}" for s in STAGES))
    for m in (systems[1:] if ref else systems):
        print(f"{m:<7}{cells(median(kept[m], s) for s in STAGES)}")
    if a.quality:
        print_quality(a, systems, results)
    if ref:
        print_unmatched(spec, results["trl"][-1]["checks"])


def print_quality(a, systems: list[str], results: dict[str, list[dict]]) -> None:
    last = {s: results[s][-1] for s in systems}
    base = next(r["base"] for r in last.values() if "base" in r)
    print(f"\nlab scorecard after {a.steps} steps (last repetition; temperature 1, n={a.quality_n})")
    print(f"{'suite/metric':<28}{'base':>8}" + "".join(f"{s:>8}" for s in systems))
    for key, value in base.items():
        print(f"{key:<28}{value:8.3f}" + "".join(f"{last[s]['quality'][key]:8.3f}" for s in systems))


def print_unmatched(spec, checks: dict[str, bool]) -> None:
    cfg, placement = spec.train, spec.hints.placement
    template = TEACHER_TEMPLATES.get(placement, TRL_DEFAULT_TEMPLATE)
    said = lambda ok: "identical" if ok else "DIFFERENT"   # noqa: E731
    lines = [
        f"loss: engrain train.loss={cfg.loss} with the teacher's logits at teacher_temperature="
        f"{cfg.teacher_temperature}; TRL runs distillation_mode=full_logits, distillation_alpha=0.0 (forward "
        "KL, full vocabulary), its closest: it has no teacher temperature (both sides' logits are divided by "
        "the sampling temperature). TRL's defaults (topk_logits, top-K 100 of the student, renormalised over "
        "it, alpha 0.5 = JSD) are not used.",
        f"positions: rmsd trains at most judge_s={cfg.judge_s} of prefilter_t={cfg.prefilter_t} candidate "
        "positions per rollout (pre-filter by |delta|, rule judge, guard); opsd and TRL train every response "
        "position.",
        "reduction: engrain averages the loss over all trained positions of the batch; TRL averages per "
        "sequence, then over sequences.",
        "extra engrain work per step: the anchor (anchor.weight x KL(base || student) over anchor.per_step "
        "base answers: one more student forward + backward), the guard's base pass (rmsd), token "
        "log-probs and top-3 ids for the store, and the adapter's drift figure; TRL has none of them. The "
        "anchor's base answers are sampled before timing starts.",
        "extra TRL work per step: completion-length metrics and a loss metric (device syncs), the Trainer "
        "loop's bookkeeping (flops estimate, input-token count).",
        f"teacher prompt: TRL writes the hint into the user message with teacher_prompt_template; set to "
        f"{template!r} to reproduce engrain's placement {placement!r} (TRL's default is "
        f"{TRL_DEFAULT_TEMPLATE!r}). Teacher prompt ids: {said(checks['teacher prompt ids'])}; student "
        f"prompt ids: {said(checks['student prompt ids'])}.",
        f"batches: TRL's dataset holds engrain's (prompt, hint) draws in step order (shuffle_dataset=False, "
        f"num_generations=1; TRL's default repeats each prompt 8 times): {said(checks['batches'])} each step.",
        "generation: both call transformers' generate (top_k 0, top_p 1, temperature 1, one batch of 16); "
        "engrain puts the model in eval mode and seeds torch per (seed, step), TRL generates in train mode "
        "(dropout disabled) from one seed set at start, so the samples differ.",
        "scoring: engrain runs the decoder without its LM head and projects hidden states to logits chunk by "
        "chunk, only at the trained positions (right padding, position ids restarting per row); TRL runs "
        "the whole model and keeps full logits for every completion position (logits_to_keep), prompts "
        "padded on the left.",
        "optimizer: AdamW betas (0.9, 0.99), no weight decay, clipping at 1.0 for both (TRL: "
        f"optim=adamw_torch); TRL's scheduler is replaced by engrain's (warmup, cosine to lr x "
        f"{cfg.min_lr_ratio} over train.steps={cfg.steps}), set as the trainer's lr_scheduler.",
        "importance weights: TRL's distillation_is_clip=2.0 is inactive here (it needs rollouts reused "
        "across steps); engrain weights positions only with a sampler that lags the trainer (not hf).",
        "step boundaries: TRL's step is on_step_begin -> on_step_end (training_step with generation, "
        "clipping, optimizer and scheduler step), without the dataloader fetch and logging "
        "(logging_strategy=no); engrain's is its step function.",
        "LoRA init: same config (r, alpha, dropout, target_modules), different random A (B is 0, so the "
        "same function at step 0).",
    ]
    print("\nsettings that differ between the two")
    for line in lines:
        print(f"- {line}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="behaviors/pinapple.yaml")
    ap.add_argument("--methods", default="rmsd,opsd", help="engrain methods to run beside TRL")
    ap.add_argument("--reps", type=int, default=3, help="repetitions per system, in rotating order")
    ap.add_argument("--steps", type=int, default=20, help="training steps per repetition")
    ap.add_argument("--warmup", type=int, default=3, help="first steps of each repetition left out")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quality", action="store_true", help="lab scorecard of each adapter (minutes)")
    ap.add_argument("--quality-n", type=int, default=200, help="prompts per scorecard suite")
    ap.add_argument("--model", help="override the spec's model: a folder, e.g. benchmarks/qwen_shaped.py's")
    ap.add_argument("--sampler", choices=("hf", "vllm"), help="engrain's rollout backend (default: the spec's)")
    ap.add_argument("--no-trl", action="store_true", help="engrain's methods only (TRL not installed)")
    ap.add_argument("--peak-tflops", type=float, help="the device's dense peak TFLOP/s, for MFU")
    ap.add_argument("--to-quality", action="store_true",
                    help="time until each system has an adapter the gate would accept (benchmarks/to_quality.py; "
                         "its own flags follow, e.g. --reps 3 --svg FILE)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)          # set in the per-system subprocess
    ap.add_argument("--with-base", action="store_true", help=argparse.SUPPRESS)
    if "--to-quality" in sys.argv:
        import to_quality
        sys.argv = [to_quality.__file__, *(x for x in sys.argv[1:] if x != "--to-quality")]
        return to_quality.main()
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a)))
        return
    if a.steps <= a.warmup:
        ap.error("--steps must exceed --warmup")
    methods = a.methods.split(",")
    systems = methods if a.no_trl else ["trl", *methods]
    if not set(methods) <= {"rmsd", "opsd"}:
        ap.error("--methods: rmsd and/or opsd (the self-distillation methods)")
    results: dict[str, list[dict]] = {s: [] for s in systems}
    t0 = time.time()
    for rep in range(a.reps):
        order = systems[rep % len(systems):] + systems[:rep % len(systems)]
        quality = a.quality and rep == a.reps - 1
        for s in order:
            results[s].append(run_worker(a, s, quality, with_base=quality and s == systems[0]))
            rows = results[s][-1]["rows"][a.warmup:]
            print(f"rep {rep + 1}/{a.reps} {s}: median step {median(rows, 'seconds'):.3f} s "
                  f"({time.time() - t0:.0f} s so far)", file=sys.stderr, flush=True)
    report(a, systems, results, time.time() - t0)


if __name__ == "__main__":
    main()
