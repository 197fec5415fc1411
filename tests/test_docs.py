"""docs/SPEC.md and docs/CLI.md are generated from the code (engrain.cli.docgen) and must match it."""

from __future__ import annotations

import subprocess
import sys
import time
import typing
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import BaseModel

from engrain.cli.main import COMMANDS, cli
from engrain.cli.docgen import cli_reference, spec_reference
from engrain.spec.schema import BehaviorSpec

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.mark.parametrize("kind, file, render", [("spec", "SPEC.md", spec_reference),
                                                 ("cli", "CLI.md", cli_reference)])
def test_committed_docs_are_fresh(kind, file, render):
    committed = (DOCS / file).read_text(encoding="utf-8")
    assert committed == render(), (
        f"docs/{file} is out of date; regenerate it: python -m engrain.cli.docgen {kind} > docs/{file}")


def _fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    # Walked here rather than with docgen's own walker, so a bug there cannot hide a field.
    out = []
    for name, field in model.model_fields.items():
        dotted = prefix + name
        out.append(dotted)
        for arg in (field.annotation, *typing.get_args(field.annotation)):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                out += _fields(arg, dotted + ".")
    return out


def test_every_spec_field_is_documented():
    text = (DOCS / "SPEC.md").read_text(encoding="utf-8")
    fields = _fields(BehaviorSpec)
    assert "train.lora.r" in fields and "train.teacher.kind" in fields   # the walk recurses
    assert [f for f in fields if f"| `{f}` |" not in text] == []


def test_every_command_is_documented():
    text = (DOCS / "CLI.md").read_text(encoding="utf-8")
    assert [name for name in COMMANDS if f"## cl {name}\n" not in text] == []
    # A command whose module fails to import is silently replaced by a stub (cli/main.py).
    assert "not available in this build" not in text


@pytest.mark.parametrize("args", [[], ["fit"], ["lab"], ["lab", "build"], ["lab", "eval"]])
def test_docs_show_the_real_help(args):
    # docgen builds click contexts by hand; this checks they print what `cl ... --help` does.
    result = CliRunner().invoke(cli, [*args, "--help"], prog_name="cl", terminal_width=78)
    assert result.exit_code == 0, result.output
    assert result.output in (DOCS / "CLI.md").read_text(encoding="utf-8")


def test_help_is_fast_and_does_not_import_torch():
    code = ("import sys; from click.testing import CliRunner; from engrain.cli.main import cli; "
            "CliRunner().invoke(cli, ['--help']); assert 'torch' not in sys.modules")
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    seconds = time.perf_counter() - t0
    assert done.returncode == 0, done.stderr
    assert seconds < 3, f"`cl --help` took {seconds:.1f} s; keep heavy imports inside commands"


def test_the_readme_file_map_is_the_tree():
    # One file map: every folder and top-level module of sdk/ has its row, and every path a
    # row names exists (a move that forgets the map fails here).
    import re
    root = DOCS.parent
    readme = (root / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("## File map"):].split("\n## ")[0]
    rows = re.findall(r"^\| `(sdk/[^`]+)` \|", table, re.M)
    tree = {f"sdk/{p.name}/" if p.is_dir() else f"sdk/{p.name}" for p in (root / "sdk").iterdir()
            if not p.name.startswith(("_", ".")) and (p.is_dir() or p.suffix == ".py")}
    assert set(rows) == tree
    for row in re.findall(r"^\| `sdk/([a-z_]+)/` \| (.*) \|$", table, re.M):
        folder, text = row
        named = set(re.findall(r"`([a-z_]+\.py)`", text))
        assert named <= {p.name for p in (root / "sdk" / folder).glob("*.py")}, folder
