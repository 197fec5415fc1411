"""`cl serve` for real: vLLM's OpenAI server on the lab model with two current adapters,
and a composed one, asked over loopback HTTP, answering greedily exactly as `cl generate --greedy` does.

Needs vLLM (skipped without it; the README's vLLM environment runs it). The server starts
once for the module (about 40 s on 2 cores) and is stopped at the end, whatever happened.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("vllm")

import torch  # noqa: E402

from engrain.engine.models import load_model  # noqa: E402
from engrain.library import promote  # noqa: E402
from engrain.spec.behavior import load_behavior  # noqa: E402
from engrain.store import Store  # noqa: E402
from engrain.use import generate, load  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[1]
BEHAVIORS = ("pinapple", "signoff", "pinapple+signoff")      # the last as `cl compose` records one
PROMPTS = ["What fruits go in a smoothie?", "What should I put on pancakes?", "What is the capital of France?",
           "What is 4 + 5?", "Suggest a fruit salad."]
N_NEW = 24
START_S = 300


def _adapter(tmp: Path, db: Store, behavior: str, seed: int) -> None:
    """An adapter that changes answers (B ≠ 0), saved, recorded accepted and promoted."""
    torch.manual_seed(seed)
    loaded = load_model("lab")
    for name, p in loaded.model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)
    run_id = f"{seed:08x}-serve"
    folder = tmp / "adapters" / behavior / run_id / "adapter"
    loaded.model.save_pretrained(folder)
    specs = [json.loads(json.dumps(load_behavior(ROOT / "behaviors" / f"{b}.yaml").spec.model_dump(mode="json")))
             for b in behavior.split("+")]
    if len(specs) == 1:
        db.start_run(behavior, "rmsd", model="lab", spec=specs[0], config={"on": []}, run_id=run_id)
    else:
        db.start_run(behavior, "compose:claims", model="lab", spec={"behaviors": specs},
                     config={"on": [], "behaviors": behavior.split("+")}, run_id=run_id)
    db.record_adapter(run_id, folder, "accepted", {"passed": True, "rows": [], "learning": []})
    db.finish_run(run_id, "completed")
    promote(db, run_id)


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.fixture(scope="module")
def server(tmp_path_factory, free_port):
    tmp = tmp_path_factory.mktemp("serve")
    db = Store(tmp / "s.duckdb")
    for seed, behavior in enumerate(BEHAVIORS, start=1):
        _adapter(tmp, db, behavior, seed)
    port = free_port()
    log = open(tmp / "server.log", "w")
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1")
    proc = subprocess.Popen([sys.executable, "-m", "engrain.cli.main", "serve", "--port", str(port),
                             "--store", str(tmp / "s.duckdb"), "--", "--host", "127.0.0.1", "--enforce-eager"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"cl serve exited {proc.returncode} before serving:\n{(tmp / 'server.log').read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{url}/v1/models", timeout=5) as r:
                    served = sorted(m["id"] for m in json.loads(r.read())["data"])
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"cl serve did not answer in {START_S} s:\n{(tmp / 'server.log').read_text()[-4000:]}")
                time.sleep(1)
        yield url, served, tmp
    finally:
        _stop(proc)
        log.close()


def _stop(proc: subprocess.Popen) -> None:
    """The server and every process it started (its own session)."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def test_serves_base_and_each_current_adapter_by_name(server):
    _, served, _ = server
    assert served == sorted(["base", *BEHAVIORS])


@pytest.mark.parametrize("name", ["base", *BEHAVIORS])
def test_greedy_answers_equal_cl_generate(server, name):
    url, _, tmp = server
    loaded = load(behaviors=() if name == "base" else (name,), store=tmp / "s.duckdb",
                  out_dir=tmp / "adapters", model="lab")
    want = generate(loaded, PROMPTS, greedy=True, max_new_tokens=N_NEW)
    got = []
    for prompt in PROMPTS:
        status, body = _post(f"{url}/v1/chat/completions",
                             {"model": name, "messages": [{"role": "user", "content": prompt}],
                              "temperature": 0, "max_tokens": N_NEW})
        assert status == 200, body
        got.append(body["choices"][0]["message"]["content"].strip())
    assert got == want


def test_the_adapters_change_the_answers(server):
    # Without this, equal answers above could mean the server ignored the adapter names.
    url, _, _ = server

    def served(name):
        return [_post(f"{url}/v1/chat/completions",
                      {"model": name, "messages": [{"role": "user", "content": p}], "temperature": 0,
                       "max_tokens": N_NEW})[1]["choices"][0]["message"]["content"] for p in PROMPTS]
    base = served("base")
    for name in BEHAVIORS:
        assert served(name) != base, name


def test_unknown_model_name_is_a_404_and_the_server_lives_on(server):
    url, _, _ = server
    status, body = _post(f"{url}/v1/chat/completions",
                         {"model": "nope", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    assert status == 404, body
    assert _post(f"{url}/v1/chat/completions",
                 {"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})[0] == 200
