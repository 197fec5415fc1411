"""What `cl serve` answers per second: requests/s, output tokens/s and time to first token at
1, 4 and 16 concurrent clients, for the base model alone and for two adapters in one server
(the multi-LoRA cost), beside `cl generate` in-process on the same prompts.

    python benchmarks/serve.py                         # the lab model; in the vLLM environment
    python benchmarks/serve.py --clients 1,4 --requests 32 --tokens 48

Runs where vLLM is installed (the README's vLLM recipe). Loopback only: each server is
`cl serve` on 127.0.0.1 and a free port, started, measured and stopped in turn. The two
adapters are the lab's shape with random LoRA B weights (a timing does not depend on what
an adapter learned; a fresh one, B = 0, would cost the same too, but could hide a bug that
skipped it). Requests are streamed chat completions at temperature 1 with
`max_tokens=--tokens`; each concurrency level sends `--requests` requests (at least 2 per
client) or stops at `--budget-s`, whichever comes first, and the first request of each
server is left out (warm-up). Tokens are the server's own `usage.completion_tokens`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_store(folder: Path, behaviors: list[str]) -> Path:
    """A store whose current adapters are ``behaviors``, each the lab's LoRA with random B."""
    import torch

    from engrain.engine.models import load_model
    from engrain.library import promote
    from engrain.store import Store
    db = Store(folder / "serve.duckdb")
    for i, behavior in enumerate(behaviors):
        torch.manual_seed(i)
        loaded = load_model("lab")
        with torch.no_grad():
            for name, p in loaded.model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.05)
        run_id = f"{i:08x}-bench"
        path = folder / "adapters" / behavior / run_id / "adapter"
        loaded.model.save_pretrained(path)
        db.start_run(behavior, "rmsd", model="lab", config={"on": []}, run_id=run_id)
        db.record_adapter(run_id, path, "accepted", {"passed": True, "rows": [], "learning": []})
        db.finish_run(run_id, "completed")
        promote(db, run_id)
    return db.path


class Server:
    """`cl serve` on a loopback port for the ``with`` block."""

    def __init__(self, store: Path, log: Path):
        self.port, self.store, self.log = _free_port(), store, log
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "Server":
        self.out = open(self.log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "engrain.cli.main", "serve", "--port", str(self.port),
                                      "--store", str(self.store), "--", "--host", "127.0.0.1", "--enforce-eager"],
                                     stdout=self.out, stderr=subprocess.STDOUT, start_new_session=True,
                                     env=dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1"))
        t0 = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"cl serve exited {self.proc.returncode}; its log: {self.log}")
            try:
                urllib.request.urlopen(f"{self.url}/v1/models", timeout=5).read()
                self.start_s = time.monotonic() - t0
                return self
            except OSError:
                if time.monotonic() - t0 > 300:
                    raise SystemExit(f"cl serve did not answer in 300 s; its log: {self.log}") from None
                time.sleep(0.5)

    def __exit__(self, *exc) -> None:
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, None)):
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(wait)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        self.out.close()


def one_request(url: str, model: str, prompt: str, tokens: int) -> tuple[float, float, int]:
    """(seconds to the first content token, seconds in all, completion tokens) of one stream."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
            "temperature": 1.0, "stream": True, "stream_options": {"include_usage": True}}
    req = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    first, n = None, 0
    with urllib.request.urlopen(req, timeout=300) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
                first = time.perf_counter() - t0
            if chunk.get("usage"):
                n = chunk["usage"]["completion_tokens"]
    total = time.perf_counter() - t0
    return (first if first is not None else total), total, n


def load_level(url: str, models: list[str], prompts: list[str], clients: int, requests: int, tokens: int,
               budget_s: float) -> dict:
    """``requests`` streamed requests from ``clients`` threads (models and prompts in turn)."""
    lock, results, next_i = threading.Lock(), [], [0]
    t0 = time.perf_counter()

    def client():
        while True:
            with lock:
                i = next_i[0]
                if i >= requests or time.perf_counter() - t0 > budget_s:
                    return
                next_i[0] += 1
            r = one_request(url, models[i % len(models)], prompts[i % len(prompts)], tokens)
            with lock:
                results.append(r)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttft = sorted(r[0] for r in results)
    return {"clients": clients, "requests": len(results), "wall_s": wall, "req_s": len(results) / wall,
            "tok_s": sum(r[2] for r in results) / wall, "ttft_med": statistics.median(ttft),
            "ttft_p90": ttft[min(len(ttft) - 1, int(0.9 * len(ttft)))], "tokens": sum(r[2] for r in results)}


def in_process(store: Path, behavior: str | None, prompts: list[str], tokens: int, batch: int) -> dict:
    """`cl generate`'s path (engrain.use.generate) on the same prompts, ``batch`` at a time."""
    from engrain.use import generate, load
    loaded = load("lab", behaviors=(behavior,) if behavior else (), store=store)
    generate(loaded, prompts[:batch], max_new_tokens=tokens)     # warm-up
    t0 = time.perf_counter()
    n = 0
    for i in range(0, len(prompts), batch):
        answers = generate(loaded, prompts[i:i + batch], max_new_tokens=tokens, seed=i)
        n += sum(len(loaded.tokenizer(a, add_special_tokens=False)["input_ids"]) + 1 for a in answers)
    wall = time.perf_counter() - t0
    return {"requests": len(prompts), "wall_s": wall, "req_s": len(prompts) / wall, "tok_s": n / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--requests", type=int, default=48, help="Requests per concurrency level (at least 2 per client).")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--budget-s", type=float, default=60.0, help="Most seconds per concurrency level.")
    a = ap.parse_args()
    import torch

    from engrain.registry import PROMPT_SETS
    levels = [int(c) for c in a.clients.split(",")]
    prompts = PROMPT_SETS.get("lab/tropical")(64, "eval")
    print(f"{len(prompts)} lab/tropical prompts, up to {a.tokens} tokens, T=1; torch threads {torch.get_num_threads()}; "
          f"{os.cpu_count()} cores shared by server and clients")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "none").mkdir()
        (tmp / "two").mkdir()
        stores = {"base alone": (make_store(tmp / "none", []), ["base"]),
                  "2 adapters": (make_store(tmp / "two", ["pinapple", "signoff"]), ["pinapple", "signoff"])}
        for label, (store, models) in stores.items():
            with Server(store, tmp / f"{label.split()[0]}.log") as server:
                print(f"{label}: server answering after {server.start_s:.0f} s", flush=True)
                one_request(server.url, models[0], prompts[0], a.tokens)      # warm-up, left out
                for c in levels:
                    row = load_level(server.url, models, prompts, c, max(a.requests, 2 * c), a.tokens, a.budget_s)
                    rows.append((label, f"serve, {c} client{'s' if c > 1 else ''}", row))
                    print(f"  {c:>2} clients: {row['req_s']:.2f} req/s, {row['tok_s']:.0f} tok/s, "
                          f"ttft {row['ttft_med']:.3f} s", flush=True)
            inp = in_process(store, models[0] if models != ["base"] else None, prompts[:max(a.requests, 16)],
                             a.tokens, 16)
            how = "cl generate in-process, batch 16" + ("" if models == ["base"] else f" ({models[0]})")
            rows.append((label, how, inp))
    print()
    print(f"{'server':<12} {'how':<45} {'requests':>8} {'req/s':>7} {'tok/s':>7} {'ttft med':>9} {'ttft p90':>9}")
    print("-" * 103)
    for label, how, r in rows:
        ttft = (f"{r['ttft_med']:>9.3f} {r['ttft_p90']:>9.3f}" if "ttft_med" in r else f"{'-':>9} {'-':>9}")
        print(f"{label:<12} {how:<45} {r['requests']:>8} {r['req_s']:>7.2f} {r['tok_s']:>7.0f} {ttft}")
    base = {h: r for lbl, h, r in rows if lbl == "base alone"}
    for lbl, h, r in rows:
        h = h.split(" (")[0]
        if lbl == "2 adapters" and h in base:
            print(f"multi-LoRA cost, {h}: tok/s {r['tok_s'] / base[h]['tok_s']:.2f}x the base alone")


if __name__ == "__main__":
    main()
