"""``cl validate`` and ``cl compile`` through click, as a user runs them."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from engrain.cli.main import cli
from engrain.spec import load_spec

BEHAVIORS = sorted((Path(__file__).parents[1] / "behaviors").glob("*.yaml"))
PINAPPLE = BEHAVIORS[0].parent / "pinapple.yaml"


@pytest.fixture(scope="module")
def tokenizer_dir(lab_tokenizer, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("lab-tokenizer")
    lab_tokenizer.save_pretrained(folder)
    return folder


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_validate_examples():
    result = run("validate", *BEHAVIORS)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [f"ok  {p}" for p in BEHAVIORS]


def test_validate_bad_spec_exits_1_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(PINAPPLE.read_text().replace("  phrasings:", "  phrasings: []\n  old:"))
    result = run("validate", PINAPPLE, bad)
    assert result.exit_code == 1
    assert f"ok  {PINAPPLE}" in result.output and "bad.yaml:" in result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)


def test_validate_usage_errors_exit_2(tmp_path):
    assert run("validate").exit_code == 2
    assert run("validate", tmp_path).exit_code == 2  # a folder, not a file


def test_validate_missing_file_exits_1(tmp_path):
    result = run("validate", tmp_path / "nope.yaml")
    assert result.exit_code == 1 and "file not found" in result.output


def test_compile_show_puts_the_hint_only_on_the_teacher_side(tokenizer_dir):
    result = run("compile", PINAPPLE, "--show", "-n", "3", "--model", tokenizer_dir)
    assert result.exit_code == 0, result.output
    hints = load_spec(PINAPPLE).hints.phrasings
    blocks = result.output.split("student\n")[1:]
    assert len(blocks) == 3
    for index, block in enumerate(blocks):
        student, teacher = block.split(f"teacher (hint {index})")
        assert not any(h in student for h in hints)
        assert hints[index] in teacher
        assert "<|assistant|>" in student and "<|assistant|>" in teacher


def test_compile_without_show_prints_a_summary(tokenizer_dir):
    result = run("compile", PINAPPLE, "--model", tokenizer_dir)
    assert result.exit_code == 0, result.output
    assert "pinapple" in result.output and "400 train, 200 eval, 200 probe prompts" in result.output
    assert "student" not in result.output


def test_compile_bad_input_exits_1_without_traceback(tmp_path, tokenizer_dir):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    result = run("compile", bad, "--show", "--model", tokenizer_dir)
    assert result.exit_code == 1 and "bad.yaml:" in result.output and "Traceback" not in result.output

    result = run("compile", PINAPPLE, "--show", "--model", tmp_path / "no-model-here")
    assert result.exit_code == 1 and "could not load the tokenizer" in result.output


def test_an_unreachable_learning_bar_is_refused_with_its_range_and_why(tmp_path):
    bad = tmp_path / "bad.yaml"
    text = PINAPPLE.read_text()
    assert "min_share_of_hinted: 0.9" in text
    bad.write_text(text.replace("min_share_of_hinted: 0.9", "min_share_of_hinted: 5"))
    result = run("validate", bad)
    assert result.exit_code == 1
    line = [i + 1 for i, x in enumerate(text.splitlines()) if "min_share_of_hinted" in x][0]
    assert f"bad.yaml:{line}" in result.output and "use 0 to 2" in result.output
    assert "no rate exceeds 1" in result.output
