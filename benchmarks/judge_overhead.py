"""The judge's share of step time, uncached then cached, in one run.

    python benchmarks/judge_overhead.py [--steps 6] [--latency 0.3] [--concurrency 8]

A loopback OpenAI-compatible server (tests/judge_server.py) answers each judge call
after ``--latency`` seconds, like a hosted model. The same fit runs twice with the same
seed: the first run fills the judge cache, the second is served from it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from judge_server import serve  # noqa: E402

from engrain.fit import fit  # noqa: E402
from engrain.store.db import Store  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="behaviors/pinapple.yaml")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--latency", type=float, default=0.3)
    ap.add_argument("--concurrency", type=int, default=8)
    a = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="engrain-judge-"))
    os.environ["XDG_CACHE_HOME"] = str(work / "cache")
    os.environ["ENGRAIN_BENCH_KEY"] = "not-a-real-key"
    print(f"judge latency {a.latency}s, concurrency {a.concurrency}, {a.steps} steps; work dir {work}")
    print(f"{'run':10}{'s/step':>10}{'judge s/step':>14}{'judge share':>13}{'calls':>7}{'cached':>8}")
    with serve(f"delay:{a.latency}") as url:
        spec = yaml.safe_load(Path(a.spec).read_text())
        spec["judge"] = {"model": "openai/bench-judge", "api_base": url.api_base,
                         "api_key_env": "ENGRAIN_BENCH_KEY", "max_concurrency": a.concurrency,
                         "timeout_s": 30, "max_retries": 0}
        spec_path = work / "spec.yaml"
        spec_path.write_text(yaml.safe_dump(spec))
        # relative prompt files resolve against the spec's folder
        for label in ("uncached", "cached"):
            r = fit(spec_path, steps=a.steps, out_dir=work / "adapters", store=work / "s.duckdb",
                    eval_n=8, progress=False, log=lambda *x: None, keep_rejected=True)
            db = Store(work / "s.duckdb")
            steps = db.steps(r.run_id)
            js = db.judge_summary(r.run_id)
            secs = statistics.mean(s["seconds"] for s in steps)
            judge = statistics.mean(s["judge_seconds"] for s in steps)
            print(f"{label:10}{secs:10.2f}{judge:14.2f}{judge / secs:13.1%}{js['calls']:7d}"
                  f"{js['cached_share']:8.0%}")


if __name__ == "__main__":
    main()
