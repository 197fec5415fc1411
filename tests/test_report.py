import re
import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser

import pytest

from engrain.checks.gate import gate
from engrain.store.report import ROLLOUTS_PER_STEP, line_chart, render_report, token_spans, write_report
from engrain.store import Store

HOSTILE = "<script>alert(1)</script>"
CHROMIUM = shutil.which("chromium") or shutil.which("/usr/bin/chromium")


def populate(store: Store) -> str:
    """A small but complete run: curves, evals on both sides, judge calls, rollouts
    (one of them hostile), an adapter verdict."""
    spec = {"name": "pinapple", "description": HOSTILE,
            "regression": {"suites": ["lab/arithmetic"], "max_drop": 0.02}}
    rid = store.start_run("pinapple", "rmsd", spec=spec, config={"steps": 20, "lora": {"r": 16}},
                          model="lab", seed=0)
    store.log_steps(rid, [{"step": i, "loss": 2.0 / (1 + i), "kl": 1.0 / (1 + i),
                           "behavior_rate": min(1.0, i / 15), "n_candidates": 160, "n_selected": 40,
                           "extra": {"stage_seconds": {"rollout": 0.06, "score": 0.05, "mask": 0.004,
                                                       "loss": 0.02, "update": 0.04},
                                     "sampler_gap": 1e-6 * i}}
                          for i in range(20)])
    ev = [(0, "base", "behavior", "only", 0.0), (0, "base", "specificity", "rate", 1.0),
          (0, "base", "lab/arithmetic", "accuracy", 1.0),
          (10, "adapter", "behavior", "only", 0.5), (10, "adapter", "specificity", "rate", 0.98),
          (10, "adapter", "lab/arithmetic", "accuracy", 1.0),
          (20, "adapter", "behavior", "only", 0.8), (20, "adapter", "specificity", "rate", 0.99),
          (20, "adapter", "lab/arithmetic", "accuracy", 0.99)]
    store.log_evals(rid, [dict(zip(("step", "subject", "suite", "metric", "value"), e), n=200) for e in ev])
    words = [" The", " dish", " uses", " pine", "apple", ",", " mango", " and", " rice", "."]
    rows = []
    for step in (0, 10, 19):
        for idx in range(4):
            delta = [((t * 7 + idx) % 9 - 4) / 2 for t in range(len(words))]
            teacher = [w if d >= 0 else " pin" for w, d in zip(words, delta)]
            rows.append({"step": step, "idx": idx, "prompt": "Name a dish with pineapple.",
                         "response": "".join(words), "token_ids": list(range(len(words))),
                         "tokens": words, "delta": delta, "teacher_tokens": teacher,
                         "candidates": [1, 3, 4, 6], "selected": [3, 4]})
    # step 19, rollout 0 (one the report shows) was written by someone hostile
    rows[8].update(prompt=HOSTILE, response=HOSTILE, tokens=[HOSTILE] + words[1:],
                   teacher_tokens=['"><script>alert(2)</script>'] + words[1:], delta=[-1.0] + rows[8]["delta"][1:])
    store.log_rollouts(rid, rows)
    store.log_judge_calls(rid, [{"step": 1, "idx": i, "model": "rule", "latency_s": 0.01, "cost": 0.0,
                                 "outcome": "ok", "cached": False} for i in range(4)])
    verdict = gate({"specificity": 1.0, "lab/arithmetic": 1.0}, {"specificity": 0.99, "lab/arithmetic": 0.99}, 0.02)
    store.record_adapter(rid, "adapters/pinapple", "accepted", verdict.to_dict())
    store.finish_run(rid, "completed")
    return rid


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("report") / "runs.duckdb")
    return store, populate(store)


class Spans(HTMLParser):
    """Token spans (class tok) and their title attributes, as a browser would read them."""

    def __init__(self):
        super().__init__()
        self.spans, self.svgs = [], 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "svg":
            self.svgs += 1
        if tag == "span" and "tok" in (attrs.get("class") or "").split():
            self.spans.append(attrs)


def test_report_has_curves_tables_and_escaped_token_view(run, tmp_path):
    store, rid = run
    out = write_report(store, rid[:6], tmp_path / "r.html")
    page = open(out, encoding="utf-8").read()

    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    parsed = Spans()
    parsed.feed(page)
    assert parsed.svgs == 5 and page.count("<polyline") >= 12
    assert "Seconds per stage of the step" in page and "Sampler / trainer mismatch" in page
    # 3 rollout steps picked, ROLLOUTS_PER_STEP each, 10 tokens each, plus the 4 legend samples
    assert len(parsed.spans) == 3 * ROLLOUTS_PER_STEP * 10 + 4
    assert 'class="tok s"' in page and 'class="tok c"' in page
    assert "rgba(22,163,74," in page and "rgba(220,38,38," in page
    titles = [s.get("title", "") for s in parsed.spans]
    assert any("Δ = +" in t and "trained (the loss mask)" in t for t in titles)
    assert any("teacher prefers ' pin'" in t for t in titles)
    # The hostile teacher token stays inside its attribute, intact as text.
    assert any("""teacher prefers '"><script>alert(2)</script>'""" in t for t in titles)
    # Self-contained: nothing is fetched from anywhere.
    assert not re.search(r"\b(src|href)\s*=|url\(|@import|<link", page)
    assert set(re.findall(r"https?://[^\s\"']+", page)) == {"http://www.w3.org/2000/svg"}
    # Evals with the verdict the fit recorded.
    assert "Adapter verdict: <b>accepted</b>" in page
    assert "Gate (as recorded by the fit): accepted (2 suites, each within its max_drop; worst drop +0.0100" in page
    assert "lab/arithmetic" in page


def test_report_of_an_empty_run_says_what_is_missing(tmp_path):
    store = Store(tmp_path / "runs.duckdb")
    rid = store.start_run("empty", "opsd")
    page = render_report(store, rid)
    for note in ("No steps or evals logged.", "No evals logged.", "No judge calls logged.", "No rollouts logged."):
        assert note in page


def test_token_colors_follow_delta():
    html = token_spans({"tokens": ["a", "b", "c", ""], "delta": [2.0, -1.0, 0.0, float("nan")],
                        "teacher_tokens": ["a", "x", "c", "d"], "candidates": [1], "selected": [0]},
                       scale=2.0)
    spans = Spans()
    spans.feed(html)
    styles = [s.get("style") for s in spans.spans]
    assert styles[0] == "background:rgba(22,163,74,0.80)"   # |Δ| at the scale: full intensity
    assert styles[1] == "background:rgba(220,38,38,0.40)"   # half the scale: half intensity
    assert styles[2] is None and styles[3] is None  # Δ = 0 and an unknown Δ: no color
    assert [s["class"] for s in spans.spans] == ["tok s", "tok c", "tok", "tok"]
    assert "∅" in html  # an empty token stays visible
    assert token_spans({"response": HOSTILE}, 1.0) == \
        '<span class="plain">&lt;script&gt;alert(1)&lt;/script&gt;</span>'


def test_line_chart_handles_flat_and_empty_series():
    assert line_chart("none", [{"name": "x", "points": [(0, None)]}]) == ""
    svg = line_chart("flat", [{"name": "a<b", "points": [(3, 0.5)]}])
    assert svg.startswith("<svg") and "a&lt;b" in svg and "nan" not in svg


def _png_pixels(path):
    """Decode an 8-bit RGB(A) PNG with the standard library: (width, height, rows)."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, []
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + n
    assert depth == 8 and ctype in (2, 6)
    bpp, raw = (3 if ctype == 2 else 4), zlib.decompress(b"".join(idat))
    stride = w * bpp
    # "Up" rows, the most common filter, added bytewise on big ints (no per-byte loop).
    mask = int.from_bytes(bytes(255 if (stride - 1 - i) % 2 == 0 else 0 for i in range(stride)), "big")
    prev, rows = bytearray(stride), []
    for y in range(h):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if kind == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif kind == 2:
            a, b = int.from_bytes(line, "big"), int.from_bytes(prev, "big")
            lo = ((a & mask) + (b & mask)) & mask
            hi = (((a >> 8) & mask) + ((b >> 8) & mask)) & mask
            line = bytearray((lo | (hi << 8)).to_bytes(stride, "big"))
        elif kind in (3, 4):
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                up, ul = prev[i], (prev[i - bpp] if i >= bpp else 0)
                if kind == 3:
                    pred = (left + up) // 2
                else:
                    p = left + up - ul
                    pa, pb, pc = abs(p - left), abs(p - up), abs(p - ul)
                    pred = left if pa <= pb and pa <= pc else (up if pb <= pc else ul)
                line[i] = (line[i] + pred) & 255
        rows.append(bytes(line))
        prev = line
    return w, h, bpp, rows


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(run, tmp_path):
    store, rid = run
    page = write_report(store, rid, tmp_path / "report.html")
    png = tmp_path / "report.png"
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                           "--disable-background-networking", "--disable-component-update",
                           "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                           f"--screenshot={png}", "--dump-dom", "--window-size=1200,1600",
                           f"file://{page}"], capture_output=True, text=True, timeout=90)
    dom = proc.stdout
    assert "<svg" in dom and 'class="tok s"' in dom and "<polyline" in dom, proc.stderr[-2000:]
    assert "<script" not in dom.lower()
    assert png.exists() and png.stat().st_size > 10_000

    w, h, bpp, rows = _png_pixels(png)
    assert (w, h) == (1200, 1600)
    pixels = [r[i:i + 3] for r in rows[::8] for i in range(0, len(r), bpp * 8)]
    colors = set(pixels)
    white = sum(p == b"\xff\xff\xff" for p in pixels)
    assert len(colors) >= 20, "screenshot looks blank"
    assert white < 0.97 * len(pixels)
