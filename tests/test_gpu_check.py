"""benchmarks/gpu_check.sh: its CPU rehearsal (--dry-run) runs every phase end to end, and
without CUDA the real check refuses with one line and exit 2."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _run(*args: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHON": sys.executable, "GPU_CHECK_OUT": str(tmp_path),
                               **env}, timeout=900)


def test_without_cuda_it_exits_2_with_one_line(tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the real check would run")
    out = _run(tmp_path=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "no CUDA device" in out.stderr
    assert not (tmp_path / "lab").exists()        # nothing was built


# about 140 s alone on 2 cores; in CI, because the issue asks that the dry run passes there
@pytest.mark.timeout(900)
def test_dry_run_runs_every_phase(tmp_path):
    out = _run("--dry-run", tmp_path=tmp_path, PEAK_TFLOPS="1")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = out.stdout.split("=== gpu_check summary")[1]
    for phase in ("lab", "fit", "qwen", "vs_trl/hf"):
        assert re.search(rf"^{re.escape(phase)}\s+[\d.]+ s  exit [034]$", summary, re.M), (phase, summary)
    assert (tmp_path / "lab" / "config.json").exists() and (tmp_path / "qwen" / "config.json").exists()
    # vs_trl's table: a row for rmsd with seconds per step, tokens per second and an MFU figure
    row = next(line for line in out.stdout.splitlines() if line.startswith("rmsd ") and "%" in line)
    assert float(row.split()[-1].rstrip("%")) > 0
    assert "151,936" in out.stdout or "Qwen3-shaped" in out.stdout
