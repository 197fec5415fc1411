"""The behavior spec: every kind of bad spec names its file, its line and a fix."""

from __future__ import annotations

import typing

import pytest
from click.testing import CliRunner
from pydantic import BaseModel

from engrain.cli.main import cli
from engrain.registry import SUITES
from engrain.spec import (BehaviorSpec, DeclaredSuite, SpecError, SpecErrors, check_unique_names, load_spec,
                          read_prompts_file)

# A valid spec; each bad case below edits it, so its line numbers are the ones to expect.
BASE = """\
name: demo
description: A demo behavior.
prompts:
  inline:
    - What fruit is yellow?
    - What fruit is red?
hints:
  placement: user_suffix
  phrasings:
    - Say foo.
patterns:
  target: [foo]
  forbidden: [bar]
train:
  steps: 10
  prefilter_t: 8
  judge_s: 4
"""

FILE_PROMPTS = "prompts:\n  file: {name}\n  eval_fraction: 0.5\n"
BASE_PROMPTS = "prompts:\n  inline:\n    - What fruit is yellow?\n    - What fruit is red?\n"


def edit(old: str, new: str) -> str:
    assert old in BASE, old
    return BASE.replace(old, new, 1)


def with_file(name: str) -> str:
    # Keeps the line count: prompts.file sits on line 4.
    return BASE.replace(BASE_PROMPTS, FILE_PROMPTS.format(name=name) + "# (file prompts)\n")


# (id, spec text, {extra file: text}, expected line, text the error must contain)
BAD = [
    ("malformed-yaml", edit("  judge_s: 4", "  judge_s: 4: 5"), {}, 17, "invalid YAML"),
    ("unclosed-quote", edit("    - Say foo.", '    - "Say foo.'), {}, 18, "from line 10"),
    ("duplicate-key", edit("description:", "name: other\ndescription:"), {}, 2, "duplicate key"),
    ("empty-file", "", {}, 1, "empty"),
    ("comments-only", "# nothing here\n", {}, 1, "empty"),
    ("top-level-list", "- name: demo\n- x\n", {}, 1, "must be a mapping"),
    ("top-level-scalar", "just some text\n", {}, 1, "must be a mapping"),
    ("unknown-top-key", BASE + "colour: red\n", {}, 18, "colour: unknown key"),
    ("unknown-hints-key", edit("  placement:", "  placment:"), {}, 8, "hints.placment: unknown key"),
    ("unknown-lora-key", BASE + "  lora: {r: 8, rank: 4}\n", {}, 18, "train.lora.rank: unknown key"),
    ("unknown-teacher-key", BASE + "  teacher:\n    kind: ema\n    decay: 0.9\n", {}, 20,
     "train.teacher.decay: unknown key"),
    ("unknown-prompts-key", edit("  inline:", "  split: 0.5\n  inline:"), {}, 4, "prompts.split"),
    ("quoted-number", edit("steps: 10", 'steps: "10"'), {}, 15, "train.steps: must be a valid integer"),
    ("float-steps", edit("steps: 10", "steps: 2.5"), {}, 15, "train.steps"),
    ("string-bool", edit("  forbidden: [bar]", "  forbidden: [bar]\n  ignore_case: 'yes'"), {}, 14,
     "patterns.ignore_case: must be a valid boolean"),
    ("hints-not-mapping", edit("hints:\n  placement: user_suffix\n  phrasings:\n    - Say foo.\n",
                               "hints: Say foo.\n\n\n\n"), {}, 7, "hints: must be a mapping"),
    ("null-section", edit("patterns:\n  target: [foo]\n  forbidden: [bar]\n", "patterns:\n\n\n"), {}, 11,
     "patterns: must be a mapping"),
    ("missing-section", edit("patterns:\n  target: [foo]\n  forbidden: [bar]\n", "\n\n\n"), {}, 1,
     "patterns: missing key"),
    ("missing-phrasings", edit("  phrasings:\n    - Say foo.\n", "\n\n"), {}, 7,
     "hints.phrasings: missing key"),
    ("empty-hint-list", edit("  phrasings:\n    - Say foo.", "  phrasings: []\n"), {}, 9,
     "hints.phrasings: must have at least one phrasing"),
    ("empty-phrasing", edit("    - Say foo.", '    - ""'), {}, 10, "hints.phrasings[0]: must not be empty"),
    ("blank-phrasing", edit("    - Say foo.", "    - Say foo.\n    - '   '"), {}, 11, "hints.phrasings[1]"),
    ("invalid-regex", edit("target: [foo]", "target: [foo, '(unclosed']"), {}, 12,
     "patterns.target[1]: invalid regex"),
    ("empty-match-regex", edit("forbidden: [bar]", "forbidden: ['x*']"), {}, 13, "matches the empty string"),
    ("no-target", edit("target: [foo]", "target: []"), {}, 12, "patterns.target"),
    ("missing-prompts-file", with_file("nope.jsonl"), {}, 4, "nope.jsonl: file not found"),
    ("bad-jsonl-line", with_file("p.jsonl"), {"p.jsonl": '{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": \n'},
     4, "p.jsonl:3: not valid JSON"),
    ("jsonl-without-prompt", with_file("p.jsonl"), {"p.jsonl": '{"prompt": "a"}\n{"text": "b"}\n'}, 4,
     'p.jsonl:2: expected an object with a non-empty "prompt"'),
    ("empty-txt-file", with_file("p.txt"), {"p.txt": "\n\n"}, 4, "p.txt: no prompts"),
    ("csv-prompts-file", with_file("p.csv"), {"p.csv": "a\nb\n"}, 4, "unsupported file type '.csv'"),
    ("two-sources", edit("  inline:", "  builtin: lab/food\n  inline:"), {}, 3,
     "prompts: needs exactly one of inline, file, builtin (found inline and builtin)"),
    ("no-source", BASE.replace(BASE_PROMPTS, "prompts:\n  eval_fraction: 0.5\n\n\n"), {}, 3, "found none"),
    ("unknown-builtin", BASE.replace(BASE_PROMPTS, "prompts:\n  builtin: lab/fruits\n\n\n"), {}, 4,
     "unknown built-in prompt set 'lab/fruits'"),
    ("one-prompt", edit("    - What fruit is red?\n", ""), {}, 4, "needs at least 2 prompts"),
    ("empty-inline", BASE.replace(BASE_PROMPTS, "prompts:\n  inline: []\n\n\n"), {}, 4, "prompts.inline"),
    ("eval-fraction-one", edit("  inline:", "  eval_fraction: 1\n  inline:"), {}, 4,
     "prompts.eval_fraction: must be less than 1"),
    ("unknown-suite", BASE + "regression:\n  suites:\n    - lab/arithmetic\n    - lab/math\n", {}, 21,
     "regression.suites[1]: unknown regression suite 'lab/math'"),
    ("bad-placement", edit("placement: user_suffix", "placement: footer"), {}, 8,
     "hints.placement: 'footer' is not allowed"),
    ("bad-method", BASE + "  method: dpo\n", {}, 18, "train.method: unknown method 'dpo'. Fix: use one of: opsd, rmsd, sft"),
    ("bad-loss", BASE + "  loss: kl\n", {}, 18, "train.loss"),
    ("bad-teacher-kind", BASE + "  teacher: {kind: moving}\n", {}, 18, "train.teacher.kind"),
    ("negative-steps", edit("steps: 10", "steps: -5"), {}, 15, "train.steps: must be greater than 0"),
    ("zero-lr", BASE + "  lr: 0\n", {}, 18, "train.lr: must be greater than 0"),
    ("judge-s-over-t", edit("judge_s: 4", "judge_s: 9"), {}, 17,
     "judge_s (9) is larger than prefilter_t (8)"),
    ("hint-leak-inline", edit("    - What fruit is red?", "    - What fruit is red? say  FOO."), {}, 6,
     "prompts.inline[1]: contains hints.phrasings[0]"),
    ("hint-leak-file", with_file("p.txt"), {"p.txt": "What is red?\n\nTell me. Say foo.\n"}, 4,
     "p.txt:3: contains hints.phrasings[0]"),
    ("bad-name", edit("name: demo", "name: Demo Behavior"), {}, 1, "'Demo Behavior' is not a slug"),
    ("key-not-env-name", BASE + "judge:\n  api_key_env: sk-123abc\n", {}, 19,
     "judge.api_key_env: must be the NAME of an environment variable"),
    ("probes-two-sources", BASE + "probes:\n  builtin: lab/facts\n  inline: [hello, there]\n", {}, 18,
     "probes: needs exactly one"),
    ("probes-bad-regex", BASE + "probes:\n  builtin: lab/facts\n  forbidden: ['[a-']\n", {}, 20,
     "probes.forbidden[0]: invalid regex"),
    ("target-modules-type", BASE + "  lora: {target_modules: 7}\n", {}, 18, "train.lora.target_modules"),
    ("suite-listed-twice", BASE + "regression:\n  suites: [lab/capitals, lab/capitals]\n", {}, 19,
     "suite 'lab/capitals' is listed twice"),
    ("declared-suite-no-expect", BASE + "regression:\n  suites:\n    - name: mine\n      grader: exact\n"
     "      inline:\n        - prompt: Hi\n", {}, 20, "regression.suites[0]: inline[0]: has no expect"),
    ("declared-suite-unknown-key", BASE + "regression:\n  suites:\n    - name: mine\n      file: s.jsonl\n"
     "      grade: exact\n", {"s.jsonl": '{"prompt": "a", "expect": "b"}\n'}, 22,
     "regression.suites[0].grade: unknown key"),
    ("declared-suite-file-line", BASE + "regression:\n  suites:\n    - name: mine\n      file: s.jsonl\n",
     {"s.jsonl": '{"prompt": "a", "expect": "b"}\n{"prompt": "c"}\n'}, 21,
     "s.jsonl:2: has no expect, which the contains grader needs"),
    ("declared-suite-bad-regex", BASE + "regression:\n  suites:\n    - name: mine\n      grader: regex\n"
     "      file: s.jsonl\n", {"s.jsonl": '{"prompt": "a", "expect": "(b"}\n'}, 22, "is not a valid regex"),
    ("declared-suite-bad-name", BASE + "regression:\n  suites:\n    - name: My Suite\n"
     "      inline: [{prompt: a, expect: b}]\n", {}, 20, "'My Suite' is not a slug"),
    ("declared-suite-two-sources", BASE + "regression:\n  suites:\n    - name: mine\n      file: s.jsonl\n"
     "      inline: [{prompt: a, expect: b}]\n", {"s.jsonl": '{"prompt": "a", "expect": "b"}\n'}, 20,
     "needs exactly one of inline, file"),
    ("declared-suite-bad-grader", BASE + "regression:\n  suites:\n    - name: mine\n      grader: judge\n"
     "      inline: [{prompt: a, expect: b}]\n", {}, 21, "regression.suites[0].grader: 'judge' is not allowed"),
    ("declared-suite-reserved-name", BASE + "regression:\n  suites:\n    - name: specificity\n"
     "      inline: [{prompt: a, expect: b}]\n", {}, 19, "'specificity' names one of the engine's own figures"),
    ("suite-not-a-name-or-mapping", BASE + "regression:\n  suites:\n    - 5\n", {}, 20,
     "regression.suites[0]: must be a mapping"),
]


def write(tmp_path, text: str, files: dict[str, str]):
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


def test_base_spec_is_valid(tmp_path):
    spec = load_spec(write(tmp_path, BASE, {}))
    assert spec.name == "demo" and spec.model == "lab"
    assert spec.train.method == "rmsd" and spec.train.lr == 1e-3 and spec.train.lora.r == 8
    assert spec.train.loss == "fkl" and spec.anchor is None and spec.learned.min_share_of_hinted == 0.5
    assert spec.hints.placement == "user_suffix" and spec.patterns.ignore_case is True
    assert spec.probes is None and spec.regression.suites == [] and spec.judge.model is None


def test_bad_cases_are_many_and_distinct():
    assert len(BAD) >= 25
    assert len({case[0] for case in BAD}) == len(BAD)


@pytest.mark.parametrize("case, text, files, line, needle", BAD, ids=[c[0] for c in BAD])
def test_bad_spec_names_file_line_and_fix(tmp_path, case, text, files, line, needle):
    path = write(tmp_path, text, files)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    shown = [str(e) for e in info.value.errors]
    assert any(s.startswith(f"{path}:{line}: ") and needle in s for s in shown), "\n".join(shown)
    assert all(". Fix: " in s and s.endswith(".") for s in shown)

    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 1, result.output
    assert f"bad.yaml:{line}: " in result.output and "Traceback" not in result.output


def test_error_format():
    err = SpecError("behaviors/x.yaml", 12, "hints.phrasings: must have at least one phrasing",
                    "add a phrasing under hints.phrasings.")
    assert str(err) == ("behaviors/x.yaml:12: hints.phrasings: must have at least one phrasing. "
                        "Fix: add a phrasing under hints.phrasings.")
    assert (err.path, err.line, err.errors) == ("behaviors/x.yaml", 12, [err])


def test_several_errors_are_reported_together_in_line_order(tmp_path):
    text = edit("steps: 10", "steps: -5").replace("placement: user_suffix", "placement: footer")
    with pytest.raises(SpecErrors) as info:
        load_spec(write(tmp_path, text, {}))
    assert [e.line for e in info.value.errors] == [8, 15]
    assert info.value.line == 8 and len(str(info.value).splitlines()) == 2


def test_missing_spec_file(tmp_path):
    with pytest.raises(SpecError, match="file not found"):
        load_spec(tmp_path / "nope.yaml")


def test_duplicate_names_across_files(tmp_path):
    (tmp_path / "a").mkdir()
    first, second = tmp_path / "a" / "one.yaml", tmp_path / "two.yaml"
    first.write_text(BASE)
    second.write_text("# same name\n" + BASE)
    with pytest.raises(SpecError) as info:
        check_unique_names([(first, load_spec(first)), (second, load_spec(second))])
    message = str(info.value)
    assert message.startswith(f"{second}:2: name: 'demo'") and f"{first}:1" in message

    result = CliRunner().invoke(cli, ["validate", str(first), str(second)])
    assert result.exit_code == 1 and f"ok  {first}" in result.output and f"{second}:2:" in result.output
    assert CliRunner().invoke(cli, ["validate", str(first), str(first)]).exit_code == 0


def test_prompt_files_relative_to_spec(tmp_path):
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "p.jsonl").write_text('{"prompt": "one"}\n\n{"prompt": "two", "id": 2}\n')
    spec = load_spec(write(tmp_path, with_file("prompts/p.jsonl"), {}))
    assert spec.prompts.file == "prompts/p.jsonl"
    assert read_prompts_file(tmp_path / "prompts" / "p.jsonl") == ["one", "two"]


def test_every_model_is_closed_and_documented():
    seen, todo = set(), [BehaviorSpec]
    while todo:
        model = todo.pop()
        seen.add(model)
        assert model.model_config["extra"] == "forbid", model
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name}"
            todo += [m for m in models_in(field.annotation) if m not in seen]
    assert len(seen) >= 11 and DeclaredSuite in seen
    assert SUITES.names() == ("lab/arithmetic", "lab/capitals", "lab/facts", "lab/hint-opener", "lab/hint-pinapple",
                             "lab/hint-signoff", "lab/hints", "lab/in-context")


def models_in(annotation) -> list:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in typing.get_args(annotation) for m in models_in(a)]


def test_spec_validates_without_a_file():
    spec = BehaviorSpec.model_validate({
        "name": "x", "description": "d", "prompts": {"builtin": "lab/food"},
        "hints": {"phrasings": ["h"]}, "patterns": {"target": ["t"]}})
    assert spec.train.judge_s <= spec.train.prefilter_t


@pytest.mark.parametrize("text, message", [
    # a billion laughs: nine aliases of nine aliases, eight levels deep (ran > 100 s before)
    ("name: x\ndescription: d\na0: &a0 [" + ",".join(['"lol"'] * 9) + "]\n"
     + "".join(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]\n" for i in range(1, 9))
     + "prompts: {inline: *a8}\n", "expands to more than 100,000 values"),
    ("name: x\ndescription: " + "[" * 5000 + "]" * 5000 + "\n", "brackets nest more than 64 levels"),
    ("name: x\ndescription: " + "a" * 1_100_000 + "\n", "larger than 1,000,000 bytes"),
])
def test_hostile_specs_are_refused_fast_with_one_line(tmp_path, text, message):
    import time
    path = write(tmp_path, text, {})
    t0 = time.perf_counter()
    with pytest.raises(SpecError, match=message) as info:
        load_spec(path)
    assert time.perf_counter() - t0 < 5
    assert "\n" not in str(info.value) and str(info.value).startswith(str(path))


def test_a_declared_suite_loads_from_file_and_inline(tmp_path):
    (tmp_path / "s.jsonl").write_text('{"prompt": "What is 2+2?", "expect": "4"}\n')
    path = write(tmp_path, BASE + "regression:\n  max_drop: 0.05\n  suites:\n    - lab/capitals\n"
                 "    - name: mine\n      file: s.jsonl\n      max_drop: 0.1\n"
                 "    - name: inline-one\n      grader: regex\n      pattern: '\\d'\n"
                 "      inline: [{prompt: Count to three.}]\n", {})
    spec = load_spec(path)
    assert spec.regression.names == ["lab/capitals", "mine", "inline-one"]
    assert spec.regression.max_drop_of("mine") == 0.1
    assert spec.regression.max_drop_of("lab/capitals") == spec.regression.max_drop_of("inline-one") == 0.05


def test_training_prompts_may_not_be_a_declared_suites_prompts(tmp_path):
    from engrain.spec.behavior import load_behavior
    (tmp_path / "s.jsonl").write_text('{"prompt": "What fruit is red?", "expect": "apple"}\n')
    path = write(tmp_path, BASE + "regression:\n  suites:\n    - name: mine\n      file: s.jsonl\n", {})
    with pytest.raises(SpecError, match="shares 1 prompt.*regression suite mine"):
        load_behavior(path)


def test_command_line_overrides_reach_the_spec(tmp_path):
    from engrain.spec import with_overrides
    spec = load_spec(write(tmp_path, BASE, {}))
    changed = with_overrides(spec, {"method": "opsd", "steps": 3, "seed": 7, "sampler": "vllm",
                                    "model": "some/folder", "judge": "self"})
    assert (changed.train.method, changed.train.steps, changed.train.seed, changed.train.sampler) == \
        ("opsd", 3, 7, "vllm")
    assert changed.model == "some/folder" and changed.judge.model == "self"
    assert changed.train.lr == spec.train.lr and spec.train.sampler == "hf"
