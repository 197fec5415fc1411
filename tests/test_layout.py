"""The plan of the house, checked: the stages import downward only, no package imports
itself back through another, and the spec and the store never import torch (so
`cl validate`, `cl runs` and the report stay instant and run without it)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SDK = Path(__file__).resolve().parents[1] / "sdk"

# From the ground up (docs/ARCHITECTURE.md): a module may import its own floor or lower.
FLOORS = {"errors": 0, "events": 0, "registry": 1, "judge": 1, "spec": 2, "engine": 3, "checks": 3, "lab": 3,
          "store": 4, "rundir": 4, "console": 4, "library": 4, "export": 4, "fit": 5, "composition": 5, "use": 5,
          "consolidation": 6}


def room(module: str) -> str | None:
    """``engrain.spec.schema`` -> ``spec``; the package's own ``__init__`` has no room."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "engrain" else None


def modules():
    for path in sorted(SDK.rglob("*.py")):
        rel = path.relative_to(SDK).with_suffix("")
        if rel.parts == ("__init__",):
            continue
        name = ".".join(("engrain", *rel.parts)).removesuffix(".__init__")
        yield name, path


def imports(path: Path) -> set[str]:
    """Every engrain module the file imports, at the top or inside a function (not the
    names a type annotation reads under ``if TYPE_CHECKING:``)."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and getattr(block.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(block)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("engrain"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("engrain")}
    return found


def test_every_room_has_a_floor():
    assert {room(m) for m, _ in modules()} == set(FLOORS)


def test_no_stage_imports_a_higher_one():
    upward = [f"{m} (floor {FLOORS[room(m)]}) imports {target} (floor {FLOORS[room(target)]})"
              for m, path in modules() for target in imports(path)
              if room(target) in FLOORS and FLOORS[room(target)] > FLOORS[room(m)]]
    assert upward == []


def test_no_cycles_between_rooms():
    graph = {r: set() for r in FLOORS}
    for m, path in modules():
        graph[room(m)] |= {room(t) for t in imports(path) if room(t) in FLOORS and room(t) != room(m)}

    def reaches(start, goal, seen=()):
        return any(n == goal or (n not in seen and reaches(n, goal, (*seen, n))) for n in graph[start])
    assert [r for r in graph if reaches(r, r)] == []


@pytest.mark.parametrize("module", ["engrain.spec", "engrain.store", "engrain.spec.behavior",
                                    "engrain.store.report", "engrain.checks.gate", "engrain.registry"])
def test_never_imports_torch(module):
    code = (f"import sys, {module}, engrain.registry as r; r.load_plugins(); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
