"""Parts check their own settings at `cl validate`, and `cl fit` never shows a traceback.

A registered method, teacher, loss or sampler may carry ``check(train)``, returning
``(loc, message, fix)`` problems; the spec loader reports each at its file:line with the
other cross-field problems, before any model loads (``engrain.spec.load.part_problems``).
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from engrain.cli.main import cli
from engrain.registry import LOSSES, METHODS, SAMPLERS, TEACHERS
from engrain.spec import Behavior, SpecError, load_spec

SPEC = """\
name: demo
description: A demo behavior.
prompts:
  inline:
    - What fruit is yellow?
    - What fruit is red?
hints:
  phrasings:
    - Say foo.
patterns:
  target: [foo]
train:
  steps: 10
{train}
"""
PART = "test-strict"
FIX = "set train.teacher.refresh_after, e.g. 10"


class StrictPart:
    """A part whose settings are wanting unless ``train.teacher.refresh_after`` is set; it
    also stands in as a teacher factory (what ``TEACHERS`` holds)."""

    def __init__(self, loc: tuple = ("train", "teacher", "refresh_after"), crash: bool = False):
        self.loc, self.crash = loc, crash

    def __call__(self, **_):
        raise AssertionError("validation must not build the part")

    def check(self, train) -> list[tuple[tuple, str, str]]:
        if self.crash:
            raise RuntimeError("the check itself is broken")
        if train.teacher.refresh_after is None:
            return [(self.loc, f"the {PART} part needs refresh_after", FIX)]
        return []


@pytest.fixture
def strict():
    """Register StrictPart(s) under PART in the registries the test asks for; unregister after."""
    added = []

    def register(registry=TEACHERS, part=None):
        registry.register(PART, part or StrictPart())
        added.append(registry)
    yield register
    for registry in added:
        registry.unregister(PART)


def write(tmp_path, train: str):
    path = tmp_path / "bad.yaml"
    path.write_text(SPEC.format(train=train))
    return path


def line_of(path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def validate(*paths):
    return CliRunner().invoke(cli, ["validate", *map(str, paths)])


def test_a_parts_check_fails_validate_at_the_line_of_its_setting(tmp_path, strict):
    strict(TEACHERS)
    path = write(tmp_path, f"  teacher:\n    kind: {PART}\n    ema_decay: 0.9")
    result = validate(path)
    assert result.exit_code == 1, result.output
    shown = [line for line in result.output.splitlines() if line.startswith(f"{path}:")]
    # refresh_after is not written: the nearest key above it is `teacher:`.
    assert shown == [f"{path}:{line_of(path, 'teacher:')}: train.teacher.refresh_after: "
                     f"the {PART} part needs refresh_after. Fix: {FIX}."]
    assert "Traceback" not in result.output


def test_a_parts_check_points_at_the_key_when_it_is_written(tmp_path, strict):
    strict(TEACHERS, StrictPart(loc=("train", "teacher", "kind")))
    path = write(tmp_path, f"  teacher:\n    kind: {PART}")
    result = validate(path)
    assert result.exit_code == 1 and f"bad.yaml:{line_of(path, 'kind:')}: train.teacher.kind:" in result.output


def test_a_part_whose_settings_are_right_validates(tmp_path, strict):
    strict(TEACHERS)
    path = write(tmp_path, f"  teacher: {{kind: {PART}, refresh_after: 5}}")
    result = validate(path)
    assert result.exit_code == 0, result.output
    assert load_spec(path).train.teacher.kind == PART


@pytest.mark.parametrize("registry, field", [(METHODS, "method"), (LOSSES, "loss"), (SAMPLERS, "sampler")],
                         ids=["method", "loss", "sampler"])
def test_every_kind_of_part_is_checked(tmp_path, strict, registry, field):
    strict(registry, StrictPart(loc=("train", field)))
    path = write(tmp_path, f"  {field}: {PART}")
    result = validate(path)
    assert result.exit_code == 1, result.output
    assert f"bad.yaml:{line_of(path, f'{field}:')}: train.{field}: the {PART} part needs" in result.output


def test_part_problems_are_reported_with_the_other_problems(tmp_path, strict):
    strict(TEACHERS)
    path = write(tmp_path, f"  teacher: {{kind: {PART}}}")
    path.write_text(path.read_text().replace("What fruit is red?", "What fruit is red? Say foo."))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    lines = sorted(e.line for e in info.value.errors)
    assert lines == [line_of(path, "red? Say foo."), line_of(path, "teacher:")]
    result = validate(path)
    assert result.exit_code == 1 and len([s for s in result.output.splitlines() if ". Fix: " in s]) == 2


def test_a_check_that_raises_is_reported_not_a_traceback(tmp_path, strict):
    strict(TEACHERS, StrictPart(crash=True))
    path = write(tmp_path, f"  teacher:\n    kind: {PART}")
    result = validate(path)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"bad.yaml:{line_of(path, 'kind:')}: train.teacher.kind: the teacher {PART!r} could not " \
           "check its settings (RuntimeError: the check itself is broken)" in result.output


def test_an_override_that_chooses_a_part_is_checked(tmp_path, strict):
    strict(SAMPLERS, StrictPart(loc=("train", "sampler")))
    path = write(tmp_path, "  seed: 1")
    behavior = Behavior(load_spec(path), path)
    with pytest.raises(SpecError, match="train.sampler: the test-strict part needs refresh_after"):
        behavior.with_overrides({"sampler": PART})
    assert behavior.with_overrides({"steps": 3}).spec.train.steps == 3


def test_continuation_teacher_without_refresh_after_fails_validate(tmp_path):
    path = write(tmp_path, "  teacher: {kind: continuation}")
    result = validate(path)
    assert result.exit_code == 1, result.output
    shown = [line for line in result.output.splitlines()
             if line.startswith(f"{path}:{line_of(path, 'teacher:')}: ")]
    assert shown and "refresh_after" in shown[0].split(". Fix: ", 1)[1]


# --- `cl fit`: one line, never a traceback --------------------------------------------

def fit(tmp_path, *args, **kw):
    return CliRunner().invoke(cli, ["fit", *map(str, args), "--store", str(tmp_path / "s.duckdb"),
                                    "--out-dir", str(tmp_path / "adapters"), "--no-progress"], **kw)


@pytest.fixture
def boom(monkeypatch):
    import engrain.fit

    def setup_fails(*args, **kwargs):
        raise RuntimeError("boom:\n  the model's parts could not be built")
    monkeypatch.setattr(engrain.fit, "fit", setup_fails)


def test_fit_setup_error_is_one_line(tmp_path, boom):
    result = fit(tmp_path, "behaviors/pinapple.yaml")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "error: boom: the model's parts could not be built (RuntimeError; --debug shows the traceback)"]
    assert "Traceback" not in result.output


@pytest.mark.parametrize("how", ["flag", "env"])
def test_fit_debug_shows_the_traceback(tmp_path, boom, how):
    result = fit(tmp_path, "behaviors/pinapple.yaml", *(["--debug"] if how == "flag" else []),
                 env={"ENGRAIN_DEBUG": "1"} if how == "env" else {})
    assert isinstance(result.exception, RuntimeError) and "boom" in str(result.exception)
    assert result.exit_code == 1 and "error: boom" not in result.output


def test_fit_spec_error_is_file_line_and_fix_before_any_model_loads(tmp_path, strict, monkeypatch):
    import engrain.fit

    strict(TEACHERS)
    monkeypatch.setattr(engrain.fit, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    path = write(tmp_path, f"  teacher: {{kind: {PART}}}")
    result = fit(tmp_path, path)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.splitlines() == [
        f"error: {path}:{line_of(path, 'teacher:')}: train.teacher.refresh_after: "
        f"the {PART} part needs refresh_after. Fix: {FIX}."]

