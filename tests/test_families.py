"""The real-model specs on tiny Qwen3-style and Llama-3-style models (tests/families.py):
the chat text each side sees, where rollouts stop, left padding, pattern spans under
byte-level BPE, the mask, and one `cl fit` step, on each family."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from engrain.cli.main import cli
from engrain.engine.models import load_model, load_tokenizer
from engrain.engine.rollout import HFSampler, stop_ids
from engrain.spec.behavior import load_behavior
from engrain.spec.chat import place_hint
from engrain.store.db import Store
from families import ANSWER, taught_prompts

ROOT = Path(__file__).resolve().parents[1]
REAL_SPECS = ["bank-tone", "billing-api", "json-envelope"]


def spec_copy(tmp_path: Path, name: str, model_dir: Path, **sections) -> Path:
    """A real-model spec from behaviors/ pointed at ``model_dir``, its prompt files beside it."""
    spec = yaml.safe_load((ROOT / f"behaviors/{name}.yaml").read_text())
    spec["model"] = str(model_dir)
    for section, values in sections.items():
        if values is None:
            spec.pop(section, None)
        elif isinstance(values, dict):
            spec.setdefault(section, {}).update(values)
        else:
            spec[section] = values
    if not (tmp_path / "prompts").exists():
        (tmp_path / "prompts").symlink_to(ROOT / "behaviors/prompts")
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True))
    return path


@pytest.mark.parametrize("name", REAL_SPECS)
def test_compile_shows_each_sides_exact_text(family, name, tmp_path):
    fam, folder = family
    res = CliRunner().invoke(cli, ["compile", str(ROOT / f"behaviors/{name}.yaml"), "--model", str(folder),
                                   "--show", "-n", "2"])
    assert res.exit_code == 0, res.output
    compiled = load_behavior(ROOT / f"behaviors/{name}.yaml").compile(load_tokenizer(str(folder)))
    for i, prompt in enumerate(compiled.train_prompts[:2]):
        student = fam.prompt_text(place_hint(prompt, None, compiled.placement))
        teacher = fam.prompt_text(place_hint(prompt, compiled.hints[i % len(compiled.hints)], compiled.placement))
        assert student in res.output and teacher in res.output
    if compiled.placement == "system":       # the hint has a system turn of its own
        assert ("system" + ("\n" if fam.name == "qwen3" else "<|end_header_id|>\n\n")) in teacher
    else:
        assert "system" not in teacher
    if fam.name == "qwen3":                  # the thinking switch is off unless the spec says so
        assert student.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


@pytest.mark.parametrize("name", ["nwpay-docs", "support-demos", "support-logs"])
def test_teacher_context_specs_compile_on_each_family(family, name):
    # documents, demonstrations, a log: the teacher's chat holds what it reads, the student's never.
    fam, folder = family
    res = CliRunner().invoke(cli, ["compile", str(ROOT / f"behaviors/{name}.yaml"), "--model", str(folder),
                                   "--show", "-n", "2"])
    assert res.exit_code == 0, res.output
    compiled = load_behavior(ROOT / f"behaviors/{name}.yaml").compile(load_tokenizer(str(folder)))
    for prompt in compiled.train_prompts[:2]:
        student = fam.prompt_text(compiled.student_messages(prompt))
        teacher = fam.prompt_text(compiled.teacher_messages(prompt, 0))
        assert student in res.output and teacher in res.output and student != teacher
        for text in compiled.context.privileged(prompt, 0):
            assert text in teacher and text not in student


def test_a_logged_answer_is_the_answer_then_one_end_of_turn(family):
    # What a fit from a log trains on: the answer's ids as the model would have written them,
    # ending with the family's end of turn and nothing after it.
    fam, folder = family
    tok = load_tokenizer(str(folder))
    cb = load_behavior(ROOT / "behaviors/support-logs.yaml").compile(tok)
    key = cb.train_prompts[0]
    ids = cb.logged_answer_ids(key)
    assert ids[-1] == tok.convert_tokens_to_ids(fam.end_of_turn)
    assert tok.decode(ids[:-1], skip_special_tokens=False).strip() == cb.context.logged_answer(key)


def test_the_spec_turns_thinking_on_and_passes_template_kwargs(family_dirs, tmp_path):
    from families import QWEN3
    folder = family_dirs["qwen3"]
    path = spec_copy(tmp_path, "bank-tone", folder, chat={"enable_thinking": True})
    tok = load_tokenizer(str(folder))
    cb = load_behavior(path).compile(tok)
    prompt = cb.train_prompts[0]
    assert tok.decode(cb.student_ids(prompt)) == QWEN3.prompt_text([{"role": "user", "content": prompt}],
                                                                   thinking=True)
    # A template's own switches reach it: one that reads a `house` variable.
    tok.chat_template = QWEN3.template.replace("'<|im_start|>assistant\\n'", "'<|im_start|>' + house + '\\n'")
    path = spec_copy(tmp_path, "bank-tone", folder, chat={"template_kwargs": {"house": "agent"}})
    cb = load_behavior(path).compile(tok)
    assert tok.decode(cb.student_ids(prompt)).endswith("<|im_start|>agent\n<think>\n\n</think>\n\n")


def test_stop_ids_are_every_end_of_turn_the_model_declares(family):
    fam, folder = family
    loaded = load_model(str(folder))
    tok = loaded.tokenizer
    assert set(stop_ids(loaded.model, tok)) == {tok.convert_tokens_to_ids(t) for t in fam.gen_eos}
    assert tok.convert_tokens_to_ids(fam.end_of_turn) in stop_ids(loaded.model, tok)


def test_rollouts_stop_at_the_familys_end_of_turn(family, tmp_path):
    fam, folder = family
    loaded = load_model(str(folder))
    tok = loaded.tokenizer
    cb = load_behavior(spec_copy(tmp_path, "bank-tone", folder)).compile(tok)
    out = HFSampler(loaded.model, tok).sample([cb.student_ids(p) for p in taught_prompts()], 40, 0.0)
    end = tok.convert_tokens_to_ids(fam.end_of_turn)
    for row in out:
        assert row[-1] == end and end not in row[:-1]
        assert tok.decode(row, skip_special_tokens=True) == ANSWER


def test_left_padding_gives_the_unbatched_greedy_answer(family, tmp_path):
    fam, folder = family
    loaded = load_model(str(folder))
    cb = load_behavior(spec_copy(tmp_path, "json-envelope", folder)).compile(loaded.tokenizer)
    ids = [cb.student_ids(p) for p in taught_prompts()[:2] + cb.train_prompts[:4]]
    assert len({len(i) for i in ids}) > 2                 # the batch is padded
    sampler = HFSampler(loaded.model, loaded.tokenizer, batch_size=len(ids))
    batched = sampler.sample(ids, 12, 0.0)
    assert batched == [sampler.sample([i], 12, 0.0)[0] for i in ids]


def test_pattern_spans_under_byte_level_bpe(family, tmp_path):
    fam, folder = family
    tok = load_tokenizer(str(folder))
    cb = load_behavior(spec_copy(tmp_path, "bank-tone", folder)).compile(tok)
    text = " Hello, your card works again! Thanks for waiting."
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids(fam.end_of_turn)]
    pieces = tok.convert_ids_to_tokens(ids)
    assert pieces[0].startswith("Ġ") and any(p.startswith("Ġ") and len(p) > 1 for p in pieces[1:])
    target, forbidden = cb.pattern_token_mask(ids)
    decoded = [tok.decode([i], skip_special_tokens=True) for i in ids]
    # ^\s*Hello\b: the leading space and "Hello", however BPE cut them, and nothing after.
    assert "".join(d for d, t in zip(decoded, target) if t).strip() == "Hello"
    assert target == [i < sum(target) for i in range(len(ids))]
    assert [d for d, f in zip(decoded, forbidden) if f] == [d for d in decoded if "!" in d]
    assert not target[-1] and not forbidden[-1]           # the end-of-turn token is no text


def test_the_mask_selects_pattern_positions_inside_the_response(family, tmp_path):
    from engrain.engine.context import build_context
    from engrain.engine.rollout import rollout
    from engrain.engine.scoring import score
    fam, folder = family
    behavior = load_behavior(spec_copy(tmp_path, "bank-tone", folder, judge=None,
                                       train={"prefilter_t": 6, "judge_s": 3}))
    torch.manual_seed(0)
    loaded = load_model(str(folder), lora=behavior.spec.train.lora)
    cb = behavior.compile(loaded.tokenizer)
    ctx = build_context(behavior.spec, cb, loaded)
    ro = rollout(ctx.sampler, cb, loaded.tokenizer, taught_prompts()[:2], [0, 1], 40, 0.0)
    sc = score(loaded, ctx.teacher, ro, base=ctx.needs_base)
    mask = ctx.mask(ro, sc)
    for i, ids in enumerate(ro.response_ids):
        target, _ = cb.pattern_token_mask(ids)
        assert sc.valid[i].sum() == len(ids)
        assert not (mask.selected[i] & ~sc.valid[i]).any()
        hello = [p for p, t in enumerate(target) if t]
        assert hello and all(mask.candidates[i, p] for p in hello)     # patterns boosted into the T


@pytest.mark.parametrize("name", ["json-envelope", "bank-tone"])
def test_one_fit_step_end_to_end(family, name, tmp_path):
    fam, folder = family
    spec = spec_copy(tmp_path, name, folder, judge=None,
                     train={"batch_size": 2, "max_new_tokens": 8, "eval_every": 1, "val_n": 2},
                     anchor={"per_step": 2})
    res = CliRunner().invoke(cli, ["fit", str(spec), "--steps", "1", "--eval-n", "2", "--no-progress",
                                   "--store", str(tmp_path / "s.duckdb"), "--out-dir", str(tmp_path / "a")])
    # A random model learns nothing in one step: the gate says so (exit 4), the fit ran.
    assert res.exit_code in (0, 3, 4), res.output
    store = Store(tmp_path / "s.duckdb")
    run = store.runs()[0]
    steps = store.steps(run["run_id"])
    assert len(steps) == 1 and torch.isfinite(torch.tensor(steps[0]["loss"]))
    assert list((tmp_path / "a").rglob("adapter_model.safetensors"))
