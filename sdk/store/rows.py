"""Each row's shape: built from what the fit has, and checked before it is written.

One definition per table: the columns a row may carry (``ROW_KEYS``), the builders that
make rows from the fit's records (``step_row``, ``rollout_rows``, ``judge_rows``,
``eval_rows``) and the checks the writers run on every row (``prepare``). ``run_id`` is
never a row key: the writer methods take it as an argument.

Pure: the builders take plain objects (a ``StepResult``, a tokenizer, eval figures)
and read their attributes; tensors and numpy values become Python values through their
own ``tolist``, so this module imports neither torch nor numpy.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from typing import Any, Iterable, Mapping

RUN_STATUSES = ("running", "completed", "interrupted", "failed", "rejected")
SUBJECTS = ("base", "adapter")
VERDICTS = ("accepted", "rejected", "kept")
PROMOTION_ACTIONS = ("promote", "rollback")
ROLLOUTS_LOGGED_PER_STEP = 4     # the first rollouts of each distillation step

# The steps table's scalar columns, in the order `cl show --json` and the report see them;
# each is an attribute of the step's record (engine.step.StepResult) of the same name.
STEP_COLUMNS = ("step", "loss", "kl", "anchor_kl", "n_candidates", "n_selected", "n_guarded",
                "judge_fallbacks", "behavior_rate", "lr", "grad_norm", "drift", "seconds",
                "judge_seconds", "teacher_version")
STEP_EXTRA = ("stage_seconds", "sampler_gap")     # kept in extra_json when present
TOKEN_LISTS = ("token_ids", "tokens", "delta", "teacher_tokens")   # index t = response token t
ROLLOUT_COLUMNS = ("step", "idx", "prompt", "response", *TOKEN_LISTS, "candidates", "selected")
JUDGE_COLUMNS = ("step", "idx", "model", "latency_s", "prompt_tokens", "completion_tokens",
                 "cost", "outcome", "cached")
EVAL_COLUMNS = ("step", "subject", "suite", "metric", "value", "n", "split", "decoding")

# Table -> (columns the rows may carry, columns they must carry).
ROW_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "steps": ((*STEP_COLUMNS, "extra"), ("step",)),
    "rollouts": (ROLLOUT_COLUMNS, ("step", "idx")),
    "judge_calls": (JUDGE_COLUMNS, ("step",)),
    "evals": (EVAL_COLUMNS, ("step", "subject", "suite", "metric", "value")),
}


# --- builders ---------------------------------------------------------------------------

def step_row(out: Any) -> dict:
    """A step's row, from its ``StepResult`` (or anything with the same attributes)."""
    row = {k: getattr(out, k) for k in STEP_COLUMNS}
    extra = {k: v for k in STEP_EXTRA if (v := getattr(out, k, None)) is not None}
    return {**row, "extra": extra or None}


def rollout_rows(out: Any, tokenizer: Any, limit: int = ROLLOUTS_LOGGED_PER_STEP) -> list[dict]:
    """The token view of a step's first ``limit`` rollouts: ids, decoded tokens, Δ, the
    teacher's top token, the pre-filter's candidates and the trained positions, cut to
    each response's length. No rows for a step without Δ (SFT)."""
    if getattr(out, "delta", None) is None:
        return []
    ro, rows = out.rollouts, []
    for i in range(min(limit, len(ro.texts))):
        ids = list(ro.response_ids[i])
        n = len(ids)
        rows.append({"step": out.step, "idx": i, "prompt": ro.prompts[i], "response": ro.texts[i],
                     "token_ids": ids, "tokens": [tokenizer.decode([t]) for t in ids],
                     "delta": [round(float(d), 4) for d in out.delta[i, :n].tolist()],
                     "teacher_tokens": [tokenizer.decode([int(t)]) for t in out.teacher_top[i, :n, 0].tolist()],
                     "candidates": _positions(out.candidates[i, :n]),
                     "selected": _positions(out.selected[i, :n])})
    return rows


def _positions(mask_row: Any) -> list[int]:
    return [t for t, on in enumerate(mask_row.tolist()) if on]


def judge_rows(out: Any, model: str | None) -> list[dict]:
    """One row per judge answer of the step (rollout ``idx``); ``model`` None: the rule judge."""
    return [{"step": out.step, "idx": i, "model": model or "rule", "latency_s": r.latency_s,
             "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
             "cost": r.cost, "outcome": r.outcome, "cached": r.cached}
            for i, r in enumerate(out.judge)]


def eval_rows(figures: Iterable[Mapping[str, Any]], *, step: int, subject: str) -> list[dict]:
    """Eval figures (``checks.evals.evaluate``'s {"suite", "metric", "value", "n", "split",
    "decoding"}) as rows of ``subject`` at ``step``."""
    if subject not in SUBJECTS:
        raise ValueError(f"subject {subject!r} is not one of {SUBJECTS}")
    return [{**r, "step": step, "subject": subject} for r in figures]


# --- a run row's status and versions ------------------------------------------------------

def pid_alive(pid: int | None) -> bool:
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:  # a zombie has exited: its run is over even though the pid still answers
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def effective_status(run: Mapping[str, Any], host: str | None = None) -> str:
    """The status readers show: a ``running`` run whose process died on this host was
    interrupted (killed, OOM, power loss) before it could say so."""
    host = host or socket.gethostname()
    if run["status"] == "running" and run.get("host") == host and not pid_alive(run.get("pid")):
        return "interrupted"
    return run["status"]


def installed_versions() -> dict[str, str]:
    """A run row's default ``versions``. Package metadata only: importing torch here
    would cost seconds."""
    from importlib import metadata
    out = {"python": sys.version.split()[0]}
    for name in ("engrain", "torch", "transformers", "peft", "duckdb", "vllm", "litellm"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


# --- values ------------------------------------------------------------------------------

def plain(value: Any) -> Any:
    """Tensors and numpy values to Python ones, without importing either library."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (list, tuple)):  # e.g. a list of numpy floats
        return [v.tolist() if hasattr(v, "tolist") else v for v in value]
    return value


def to_json(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def from_json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


# --- checks ------------------------------------------------------------------------------

def check_row(table: str, row: Mapping[str, Any], i: int) -> dict[str, Any]:
    allowed, required = ROW_KEYS[table]
    unknown = sorted(set(row) - set(allowed))
    if unknown:
        raise ValueError(f"{table} row {i}: unknown keys {unknown}; allowed: {list(allowed)}")
    missing = [k for k in required if row.get(k) is None]
    if missing:
        raise ValueError(f"{table} row {i}: missing {missing}")
    return {k: plain(v) for k, v in row.items()}


def check_alignment(row: Mapping[str, Any], i: int) -> None:
    # Misaligned token lists are the off-by-one bug that silently ruins a run's signal;
    # refuse them at the door rather than draw a wrong picture of them later.
    lengths = {k: len(row[k]) for k in TOKEN_LISTS if row.get(k) is not None}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"rollouts row {i}: token lists differ in length: {lengths}")
    n = next(iter(lengths.values()), None)
    for k in ("candidates", "selected"):
        bad = [p for p in row.get(k) or () if p < 0 or (n is not None and p >= n)]
        if bad:
            raise ValueError(f"rollouts row {i}: {k} positions {bad} outside 0..{n}")


def prepare(table: str, rows: Iterable[Mapping[str, Any]]) -> tuple[list[str], list[list]]:
    """Check rows and turn them into (columns, value lists) for one bulk insert
    (``run_id`` first, for the writer to fill in)."""
    rows = [check_row(table, r, i) for i, r in enumerate(rows)]
    if table == "steps":
        for r in rows:
            if "extra" in r:
                r["extra_json"] = to_json(r.pop("extra"))
    elif table == "evals":
        for i, r in enumerate(rows):
            if r["subject"] not in SUBJECTS:
                raise ValueError(f"evals row {i}: subject {r['subject']!r} is not one of {SUBJECTS}")
    elif table == "rollouts":
        for i, r in enumerate(rows):
            check_alignment(r, i)
    columns = sorted({k for r in rows for k in r})
    return ["run_id", *columns], [[r.get(c) for c in columns] for r in rows]
