"""One self-contained HTML report of a run: curves, evals with the gate verdict, judge
accounting, and a token view of sampled rollouts colored by the teacher's signal.

Self-contained means one file that opens anywhere, years later, offline: no scripts,
stylesheets or fonts from elsewhere, charts as inline SVG. Rollouts, prompts and even
spec fields are untrusted text (a model wrote them, or a user pasted them), so every
string goes through ``_e`` and a Content-Security-Policy forbids scripts outright.
"""

from __future__ import annotations

import html
import json
import math
import os
from typing import Any, Iterable, Mapping, Sequence

from engrain.spec.figures import SPECIFICITY, is_behavior_suite
from engrain.store.db import Store
from engrain.store.rows import SUBJECTS
from engrain.store.views import RECORDED, RUNNING, gate_row, latest_scores, run_verdict

PALETTE = ("#2563eb", "#db2777", "#16a34a", "#ea580c", "#7c3aed", "#0891b2", "#65a30d", "#b45309")
ROLLOUT_STEPS = 3        # first, middle and last step that logged rollouts
ROLLOUTS_PER_STEP = 3



def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return "nan" if math.isnan(x) else f"{x:.{digits}f}"
    return str(x)


# --- charts ---------------------------------------------------------------------------

def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def line_chart(title: str, series: Sequence[Mapping[str, Any]], *, y_range: tuple | None = None,
               width: int = 560, height: int = 240, x_label: str = "step") -> str:
    """An inline SVG line chart. Each series: {"name", "points": [(x, y)], "dashed"?,
    "key"?}; series with the same key share a color (a base line and its adapter curve)."""
    series = [s for s in series if any(y is not None for _, y in s["points"])]
    if not series:
        return ""
    pts = [(x, y) for s in series for x, y in s["points"] if y is not None and not math.isnan(y)]
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = y_range or (min(ys), max(ys))
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    keys = list(dict.fromkeys(s.get("key", s["name"]) for s in series))
    left, right, top, bottom = 48, 12, 28, 34
    pw, ph = width - left - right, height - top - bottom
    height += 16 * ((len(series) + 1) // 2)  # legend rows under the plot, two per row
    sx = lambda x: left + (x - x0) / (x1 - x0) * pw          # noqa: E731
    sy = lambda y: top + (1 - (y - y0) / (y1 - y0)) * ph     # noqa: E731
    out = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}">',
           f'<text x="{left}" y="16" class="ct">{_e(title)}</text>',
           f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#ccc"/>']
    for t in _ticks(y0, y1):
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#eee"/>'
                   f'<text x="{left - 4}" y="{sy(t) + 4:.1f}" text-anchor="end" class="tk">{t:g}</text>')
    for t in _ticks(x0, x1):
        out.append(f'<text x="{sx(t):.1f}" y="{top + ph + 16}" text-anchor="middle" class="tk">{t:g}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{top + ph + 30}" text-anchor="middle" class="tk">{_e(x_label)}</text>')
    for i, s in enumerate(series):
        color = PALETTE[keys.index(s.get("key", s["name"])) % len(PALETTE)]
        dash = ' stroke-dasharray="5 4"' if s.get("dashed") else ""
        good = [(x, y) for x, y in s["points"] if y is not None and not math.isnan(y)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in good)
        out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.8"{dash}>'
                   f'<title>{_e(s["name"])}</title></polyline>')
        if len(good) <= 60:
            out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{color}">'
                    f'<title>{_e(s["name"])} @ {x:g}: {y:.4g}</title></circle>' for x, y in good]
        lx, ly = left + (i % 2) * pw / 2, top + ph + bottom + 12 + 16 * (i // 2)
        out.append(f'<line x1="{lx:.0f}" x2="{lx + 18:.0f}" y1="{ly - 4}" y2="{ly - 4}" '
                   f'stroke="{color}" stroke-width="2"{dash}/>'
                   f'<text x="{lx + 24:.0f}" y="{ly}" class="lg">{_e(s["name"])}</text>')
    out.append("</svg>")
    return "".join(out)


def _curve_rows(evals: Iterable[Mapping]) -> list[Mapping]:
    """The rows curves are drawn from: the val split (a point every eval_every steps) where
    the run has one, else the temperature-1 eval rows (runs from before val splits)."""
    evals = list(evals)
    val = [e for e in evals if e.get("split") == "val"]
    return val or [e for e in evals if (e.get("split") or "eval") == "eval" and (e.get("decoding") or "sample") == "sample"]


def _eval_series(evals: Iterable[Mapping], suite_filter, label, span: Sequence[float]) -> list[dict]:
    """One series per (subject, suite, metric); a base model evaluated once becomes a
    flat dashed reference line across the run's steps."""
    groups: dict[tuple, list] = {}
    for e in _curve_rows(evals):
        if suite_filter(e["suite"]):
            groups.setdefault((e["subject"], e["suite"], e["metric"]), []).append((e["step"], e["value"]))
    series = []
    for (subject, suite, metric), pts in sorted(groups.items()):
        pts = sorted(pts)
        if subject == "base" and len(pts) == 1 and span:
            pts = [(min(span), pts[0][1]), (max(span), pts[0][1])]
        series.append({"name": label(subject, suite, metric), "points": pts, "dashed": subject == "base",
                       "key": (suite, metric)})
    return series


def _charts(steps: Sequence[Mapping], evals: Sequence[Mapping]) -> str:
    xs = [s["step"] for s in steps] + [e["step"] for e in evals if e["subject"] == "adapter"]
    behavior = [{"name": "train rollouts", "points": [(s["step"], s["behavior_rate"]) for s in steps]}]
    is_target = lambda suite: is_behavior_suite(suite) or suite == SPECIFICITY  # noqa: E731
    name = lambda subj, suite, metric: f"{suite} {metric}" + (" (base)" if subj == "base" else "")  # noqa: E731
    behavior += _eval_series(evals, is_target, name, xs)
    loss = [{"name": key, "points": [(s["step"], s.get(key)) for s in steps]}
            for key in ("loss", "kl", "anchor_kl")]
    drift = [{"name": "‖ΔW‖ / ‖W‖", "points": [(s["step"], s.get("drift")) for s in steps]}]
    regress = _eval_series(evals, lambda s: not is_target(s), name, xs)
    extra = lambda s: s.get("extra") or {}  # noqa: E731
    timed = lambda s: extra(s).get("stage_seconds") or {}  # noqa: E731
    stage_names = dict.fromkeys(name for s in steps for name in timed(s))   # as the steps recorded them
    stages = [{"name": name, "points": [(s["step"], timed(s).get(name)) for s in steps]} for name in stage_names]
    gap = [{"name": "mean |log π_S − log π_sampler|", "points": [(s["step"], extra(s).get("sampler_gap"))
                                                                  for s in steps]}]
    charts = [line_chart("Behavior rate and specificity (val; dashed: base model)", behavior, y_range=(0, 1)),
              line_chart("Loss: divergence at the trained positions, anchor KL", loss),
              line_chart("Drift of the adapter", drift),
              line_chart("Regression suites (val; dashed: base model)", regress),
              line_chart("Seconds per stage of the step", stages),
              line_chart("Sampler / trainer mismatch per token (a sampler that reports log-probs)", gap)]
    charts = [c for c in charts if c]
    return "".join(charts) if charts else '<p class="muted">No steps or evals logged.</p>'


# --- tables ---------------------------------------------------------------------------

def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], classes: Sequence[str] = ()) -> str:
    head = "<thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in headers) + "</tr></thead>" if any(headers) else ""
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{_e(classes[i])}"' if i < len(classes) and classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{_e(_fmt(c))}</td>" for c in row) + "</tr>")
    return f"<table>{head}<tbody>{''.join(body)}</tbody></table>"


def _eval_section(evals: Sequence[Mapping], run: Mapping, adapters: Sequence[Mapping]) -> str:
    shown = run_verdict(run, evals, adapters)
    verdict = shown.gate
    parts = []
    if adapters:
        a = adapters[-1]
        parts.append(f'<p class="verdict {_e(a["verdict"])}">Adapter verdict: <b>{_e(a["verdict"])}</b> '
                     f'<code>{_e(a["path"])}</code></p>')
    if verdict is not None:
        cls = "accepted" if verdict.passed else "rejected"
        origin = ("as recorded by the fit" if shown.source == RECORDED else
                  "recomputed by the fit's gate from the stored spec and evals: no verdict was recorded")
        parts.append(f'<p class="verdict {cls}">Gate ({_e(origin)}): {_e(verdict.summary())}</p>')
        parts.append('<p class="muted">Held-out prompts, temperature 1 (what the gate reads); greedy '
                     'figures beside them.</p>')
    elif shown.source == RUNNING:
        parts.append(f'<p class="verdict running">Gate: running ({_e(shown.note)})</p>')
    else:
        parts.append(f'<p class="muted">Gate: no verdict ({_e(shown.note)})</p>')
    if not evals:
        return "".join(parts) + '<p class="muted">No evals logged.</p>'
    base, adapter = (latest_scores(evals, s) for s in SUBJECTS)
    greedy_base, greedy = (latest_scores(evals, s, decoding="greedy") for s in SUBJECTS)
    rows, classes = [], []
    for suite, metric in sorted(set(base) | set(adapter)):
        b, a = base.get((suite, metric)), adapter.get((suite, metric))
        g = gate_row(verdict, suite, metric)
        status = "" if g is None else ("ok" if g.ok else g.reason)
        delta = None if a is None or b is None else a - b
        rows.append((suite, metric, b, a, None if delta is None else f"{delta:+.3f}",
                     greedy_base.get((suite, metric)), greedy.get((suite, metric)), status))
        classes.append("" if g is None else ("ok" if g.ok else "bad"))
    return "".join(parts) + _table(("suite", "metric", "base", "adapter", "adapter − base", "greedy base",
                                    "greedy adapter", "gate"), rows, classes)


def _judge_section(summary: Mapping) -> str:
    if not summary.get("calls"):
        return '<p class="muted">No judge calls logged.</p>'
    outcomes = ", ".join(f"{k}: {v}" for k, v in summary["by_outcome"].items())
    rows = [("calls", summary["calls"]), ("by outcome", outcomes),
            ("mean latency (s)", summary["mean_latency_s"]),
            ("total cost (USD)", f'{summary["total_cost"]:.4f}'),
            ("cached share", summary["cached_share"]),
            ("prompt / completion tokens", f'{summary["prompt_tokens"]} / {summary["completion_tokens"]}')]
    return _table(("", ""), rows)


# --- token view -------------------------------------------------------------------------

def _delta_scale(rollouts: Iterable[Mapping]) -> float:
    # The 95th percentile of |Δ|, not the max: one extreme token must not wash out the rest.
    mags = sorted(abs(d) for r in rollouts for d in (r.get("delta") or ()) if d is not None)
    return max(mags[int(0.95 * (len(mags) - 1))], 1e-6) if mags else 1.0


def token_spans(rollout: Mapping, scale: float) -> str:
    """The response as one span per token: green where the teacher prefers the sampled
    token (Δ > 0), red where it prefers another (Δ < 0), intensity by |Δ|; dotted outline
    for pre-filter candidates, solid for the trained positions (the loss mask: the judge's
    pick and the guard's); tooltip with the detail."""
    tokens = rollout.get("tokens")
    if not tokens:
        return f'<span class="plain">{_e(rollout.get("response"))}</span>'
    delta = rollout.get("delta") or [None] * len(tokens)
    teacher = rollout.get("teacher_tokens") or [None] * len(tokens)
    candidates, selected = set(rollout.get("candidates") or ()), set(rollout.get("selected") or ())
    spans = []
    for t, tok in enumerate(tokens):
        d = delta[t] if t < len(delta) else None
        style, tip = "", [f"position {t}"]
        if d is not None and not math.isnan(d):
            alpha = 0.8 * min(1.0, abs(d) / scale)
            if alpha >= 0.005:
                rgb = "22,163,74" if d > 0 else "220,38,38"
                style = f' style="background:rgba({rgb},{alpha:.2f})"'
            tip.append(f"Δ = {d:+.3f}")
        tt = teacher[t] if t < len(teacher) else None
        if tt is not None:
            tip.append("teacher prefers this token" if tt == tok else f"teacher prefers {tt!r}")
        cls = "tok s" if t in selected else ("tok c" if t in candidates else "tok")
        if t in selected:
            tip.append("trained (the loss mask)")
        elif t in candidates:
            tip.append("pre-filter candidate")
        shown = tok.replace("\n", "↵\n") if tok else "∅"
        spans.append(f'<span class="{cls}"{style} title="{_e(chr(10).join(tip))}">{_e(shown)}</span>')
    return "".join(spans)


def _pick_steps(steps: Sequence[int], n: int = ROLLOUT_STEPS) -> list[int]:
    if len(steps) <= n:
        return list(steps)
    return sorted({steps[round(i * (len(steps) - 1) / (n - 1))] for i in range(n)})


def _rollout_section(store: Store, run_id: str) -> str:
    picked = []
    for step in _pick_steps(store.rollout_steps(run_id)):
        picked += store.rollouts(run_id, ROLLOUTS_PER_STEP, step=step)
    if not picked:
        return '<p class="muted">No rollouts logged.</p>'
    scale = _delta_scale(picked)
    legend = ('<p class="legend"><span class="tok" style="background:rgba(22,163,74,.8)">teacher prefers '
              'this token (Δ&gt;0)</span> <span class="tok" style="background:rgba(220,38,38,.8)">teacher '
              'prefers another token (Δ&lt;0)</span> <span class="tok c">pre-filter candidate</span> '
              '<span class="tok s">trained (the loss mask)</span> <span class="muted">full color at '
              f'|Δ| ≥ {scale:.2f}; hover a token for details</span></p>')
    blocks = [f'<div class="rollout"><div class="rh">step {_e(r["step"])} · rollout {_e(r["idx"])}</div>'
              f'<div class="prompt">{_e(r.get("prompt"))}</div>'
              f'<div class="resp">{token_spans(r, scale)}</div></div>' for r in
              sorted(picked, key=lambda r: (r["step"], r["idx"]))]
    return legend + "".join(blocks)


# --- the page ---------------------------------------------------------------------------

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1160px;color:#111;padding:0 16px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.muted{color:#666} code{background:#f3f4f6;padding:0 3px}
table{border-collapse:collapse;margin:6px 0} td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f7f7f7} tr.bad td{background:#fee2e2} tr.ok td:last-child{color:#15803d}
.verdict{padding:6px 10px;border-radius:4px;display:inline-block;margin:4px 8px 4px 0}
.verdict.accepted{background:#dcfce7} .verdict.rejected{background:#fee2e2} .verdict.kept{background:#fef9c3}
.verdict.running{background:#e0f2fe}
.charts{display:flex;flex-wrap:wrap;gap:12px} .chart{border:1px solid #eee;background:#fff}
.ct{font-size:13px;font-weight:600} .tk{font-size:10px;fill:#555} .lg{font-size:11px}
.rollout{border:1px solid #e5e7eb;border-radius:4px;padding:8px;margin:8px 0}
.rh{font-size:12px;color:#555} .prompt{color:#374151;font-style:italic;margin:2px 0 6px;white-space:pre-wrap}
.resp{font-family:ui-monospace,Menlo,Consolas,monospace;white-space:pre-wrap;line-height:1.9}
.tok{border-radius:2px;padding:1px 0} .tok.c{outline:1px dotted #333} .tok.s{outline:2px solid #111}
.legend .tok{padding:1px 4px;margin-right:6px} pre{background:#f8f8f8;padding:8px;overflow:auto;max-height:360px}
"""


def _overview(run: Mapping) -> str:
    rows = [("run", run["run_id"]), ("behavior", run["behavior"]), ("method", run["method"]),
            ("status", run["status"]), ("model", run["model"]), ("seed", run["seed"]),
            ("started (UTC)", run["started_at"]), ("duration (s)", round(run["duration_s"], 1)),
            ("host / pid", f'{run["host"]} / {run["pid"]}'), ("adapter", run["adapter_path"])]
    details = "".join(
        f"<details><summary>{_e(label)}</summary><pre>{_e(json.dumps(run[key], indent=2, sort_keys=True))}</pre></details>"
        for label, key in (("spec", "spec"), ("config", "config"), ("versions", "versions"))
        if run.get(key) is not None)
    return _table(("", ""), rows) + details


def render_report(store: Store, run_id: str) -> str:
    run = store.run(run_id)
    rid = run["run_id"]
    steps, evals, adapters = store.steps(rid), store.evals(rid), store.adapters(rid)
    return "".join([
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        # Defense in depth behind the escaping: this page never runs a script.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "style-src 'unsafe-inline'; img-src data:\">",
        f"<title>engrain · {_e(run['behavior'])} · {_e(rid[:8])}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(run['behavior'])} <span class=\"muted\">{_e(run['method'])} · {_e(rid[:8])} · "
        f"{_e(run['status'])}</span></h1>",
        "<h2>Run</h2>", _overview(run),
        "<h2>Training curves</h2><div class=\"charts\">", _charts(steps, evals), "</div>",
        "<h2>Evals: base vs adapter</h2>", _eval_section(evals, run, adapters),
        "<h2>Judge</h2>", _judge_section(store.judge_summary(rid)),
        "<h2>Rollouts: where the teacher disagrees</h2>", _rollout_section(store, rid),
        "</body></html>\n"])


def write_report(store: Store, run_id: str, out_path: str | os.PathLike) -> str:
    """Write the report of ``run_id`` (an id or unique prefix) to ``out_path``; return
    the path written."""
    page = render_report(store, run_id)
    out_path = os.fspath(out_path)
    tmp = out_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(page)
    os.replace(tmp, out_path)  # a half-written report must never look like a finished one
    return out_path
