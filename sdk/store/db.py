"""The run store: every run, step, rollout, judge call, eval and adapter verdict in one
DuckDB file (``engrain.duckdb`` in the working directory unless ``path=`` or the
``ENGRAIN_STORE`` environment variable says otherwise). The schema is in ``schema.py``,
each row's shape in ``rows.py``, what the readers show in ``views.py``.

Concurrency. DuckDB lets one process write a file, and while it holds the file even a
read-only open from another process fails ("Could not set lock ... Conflicting lock is
held"). So the store never keeps a connection: every write opens the file, writes in one
transaction and closes it; every read opens it read-only, reads and closes it; both retry
with jittered exponential backoff for up to ``lock_timeout_s`` (10 s) on lock conflicts.
A training loop that writes once a step therefore leaves the file free most of the time:
``cl runs`` works while a fit runs, and two fits can share one store.

Bulk inserts go through DuckDB's appender (one statement per table per flush); measured
here on 5,000 rollout rows with 48-element lists: appender 0.24 s, ``read_json`` of a temp
file 0.52 s, one multi-row ``INSERT ... VALUES`` 2.2 s, ``executemany`` 1.2 s per 500
rows. DuckDB builds without the appender (< 2.0) fall back to chunked multi-row VALUES.
"""

from __future__ import annotations

import os
import random
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import duckdb

from engrain.errors import EngrainError
from engrain.store.rows import (PROMOTION_ACTIONS, RUN_STATUSES, VERDICTS, effective_status, from_json, installed_versions,
                                prepare, to_json)
from engrain.store.schema import DEFAULT_PATH, ENV_VAR, LATEST_VERSION, apply_migrations, schema_version, utcnow

LOCK_TIMEOUT_S = 10.0


class StoreError(EngrainError):
    """Any store problem worth a one-line message rather than a traceback."""


class StoreNotFoundError(StoreError):
    pass


class StoreBusyError(StoreError):
    pass


class UnknownRunError(StoreError, LookupError):
    pass


def _bulk_insert(con, table: str, columns: Sequence[str], values: Sequence[Sequence]) -> None:
    if not values:
        return
    if _HAS_APPENDER:
        appender = con.appender(table, columns=list(columns))
        appender.append_rows(values)
        appender.flush()
        return
    # Fallback: multi-row VALUES in chunks that keep the parameter count bounded.
    per_chunk = max(1, 2000 // len(columns))
    row_sql = "(" + ",".join("?" * len(columns)) + ")"
    for k in range(0, len(values), per_chunk):
        chunk = values[k:k + per_chunk]
        con.execute(f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                    + ",".join([row_sql] * len(chunk)), [v for row in chunk for v in row])


_HAS_APPENDER = hasattr(duckdb.DuckDBPyConnection, "appender")

def _dicts(cursor) -> list[dict[str, Any]]:
    columns = [d[0] for d in cursor.description]
    return [dict(zip(columns, row)) for row in cursor.fetchall()]


def _retryable(err: Exception) -> bool:
    text = str(err).lower()
    # Lock held by another process; a same-process connection with another read_only
    # setting; a transaction conflict between two in-process writers.
    return ("could not set lock" in text or "conflicting lock" in text
            or "different configuration" in text or "conflict" in text)


class _Committed(Exception):
    """Raised past the retry loop when closing fails after a commit: retrying would
    write the rows twice."""


class Store:
    """One DuckDB run store. Holds no connection between calls (see module docstring)."""

    def __init__(self, path: str | os.PathLike | None = None, *, create: bool = True,
                 lock_timeout_s: float = LOCK_TIMEOUT_S):
        self.path = Path(path or os.environ.get(ENV_VAR) or DEFAULT_PATH).expanduser().resolve()
        self.lock_timeout_s = lock_timeout_s
        self._host = socket.gethostname()
        if not self.path.exists():
            if not create:
                raise StoreNotFoundError(
                    f"no run store at {self.path} (pass --store PATH or set {ENV_VAR}; "
                    "`cl fit` creates one)")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._write(apply_migrations)
            return
        version = self._read(schema_version)
        if version > LATEST_VERSION:
            raise StoreError(f"{self.path} has schema version {version}, newer than this "
                             f"engrain's {LATEST_VERSION}: upgrade engrain")
        if version < LATEST_VERSION:
            self._write(apply_migrations)

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    # --- connection handling ------------------------------------------------------------

    def _attempt(self, fn: Callable, read_only: bool):
        con = duckdb.connect(str(self.path), read_only=read_only)
        committed = False
        try:
            if read_only:
                return fn(con)
            con.begin()
            try:
                out = fn(con)
                con.commit()
                committed = True
            except BaseException:
                try:
                    con.rollback()
                except duckdb.Error:
                    pass
                raise
            return out
        finally:
            try:
                con.close()
            except duckdb.Error as err:
                if committed:
                    raise _Committed(str(err)) from err
                raise

    def _retrying(self, fn: Callable, read_only: bool):
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.01
        while True:
            try:
                return self._attempt(fn, read_only)
            except _Committed as err:
                raise StoreError(f"{self.path}: written, but closing failed: {err}") from err
            except duckdb.Error as err:
                if not _retryable(err):
                    if isinstance(err, duckdb.IOException):
                        raise StoreError(f"cannot open {self.path}: {err}") from err
                    raise
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StoreBusyError(
                        f"{self.path} stayed locked for {self.lock_timeout_s:.0f} s: {err}") from err
                # Full jitter: two writers that collided must not collide again in step.
                time.sleep(min(left, random.uniform(0.3, 1.0) * delay))
                delay = min(delay * 2, 0.25)

    def _write(self, fn: Callable):
        return self._retrying(fn, read_only=False)

    def _read(self, fn: Callable):
        return self._retrying(fn, read_only=True)

    # --- writers --------------------------------------------------------------------------

    def start_run(self, behavior: str, method: str, *, spec: Any = None, config: Any = None,
                  model: str | None = None, versions: Mapping[str, str] | None = None,
                  seed: int | None = None, run_id: str | None = None,
                  adapter_path: str | None = None) -> str:
        """Insert a ``running`` run owned by this process; return its id. ``spec``,
        ``config`` and ``versions`` are JSON-serialisable (or already JSON text);
        ``versions`` defaults to the installed package versions."""
        run_id = run_id or uuid.uuid4().hex
        now = utcnow()
        row = [run_id, behavior, method, "running", to_json(spec), to_json(config), model,
               to_json(versions if versions is not None else installed_versions()),
               seed, os.getpid(), self._host, now, now, None,
               adapter_path and os.path.abspath(adapter_path)]

        def insert(con):
            con.execute("INSERT INTO runs (run_id, behavior, method, status, spec_json, "
                        "config_json, model, versions_json, seed, pid, host, started_at, "
                        "updated_at, finished_at, adapter_path) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
        self._write(insert)
        return run_id

    def log(self, run_id: str, *, steps: Iterable[Mapping] = (), rollouts: Iterable[Mapping] = (),
            judge_calls: Iterable[Mapping] = (), evals: Iterable[Mapping] = ()) -> None:
        """Write rows to several tables in one transaction (one open of the file): the
        cheapest way for a training step to log everything it has."""
        batches = [(t, *prepare(t, rows)) for t, rows in
                   (("steps", steps), ("rollouts", rollouts),
                    ("judge_calls", judge_calls), ("evals", evals))]
        batches = [(t, cols, [[run_id, *v] for v in vals]) for t, cols, vals in batches if vals]
        if not batches:
            return

        def insert(con):
            self._touch(con, run_id)
            for table, columns, values in batches:
                _bulk_insert(con, table, columns, values)
        self._write(insert)

    def log_steps(self, run_id: str, rows: Iterable[Mapping]) -> None:
        self.log(run_id, steps=rows)

    def log_rollouts(self, run_id: str, rows: Iterable[Mapping]) -> None:
        self.log(run_id, rollouts=rows)

    def log_judge_calls(self, run_id: str, rows: Iterable[Mapping]) -> None:
        self.log(run_id, judge_calls=rows)

    def log_evals(self, run_id: str, rows: Iterable[Mapping]) -> None:
        self.log(run_id, evals=rows)

    def record_adapter(self, run_id: str, path: str | os.PathLike, verdict: str,
                       details: Any = None) -> None:
        """Record the gate's verdict on a saved adapter; accepted and kept adapters
        become the run's ``adapter_path``. The path is stored absolute, so that `cl serve`,
        `cl export` and `cl adapters promote` find it from any folder."""
        if verdict not in VERDICTS:
            raise ValueError(f"verdict {verdict!r} is not one of {VERDICTS}")
        path = os.path.abspath(path)

        outcome = details.get("outcome") if isinstance(details, Mapping) else None

        def insert(con):
            behavior = self._touch(con, run_id)
            con.execute("INSERT INTO adapters (run_id, path, behavior, verdict, details_json, created_at, "
                        "outcome) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [run_id, path, behavior, verdict, to_json(details), utcnow(), outcome])
            if verdict != "rejected":
                con.execute("UPDATE runs SET adapter_path = ? WHERE run_id = ?", [path, run_id])
        self._write(insert)

    def record_promotion(self, run_id: str, action: str, *, actor: str | None = None,
                         forced: bool = False) -> None:
        """Append a promote or rollback of ``run_id`` to its behavior's history (the
        library, engrain.library, decides what is allowed; this only writes)."""
        if action not in PROMOTION_ACTIONS:
            raise ValueError(f"action {action!r} is not one of {PROMOTION_ACTIONS}")

        def insert(con):
            behavior = con.execute("SELECT behavior FROM runs WHERE run_id = ?", [run_id]).fetchall()
            if not behavior:
                raise UnknownRunError(f"no run {run_id!r} in the store")
            con.execute("INSERT INTO promotions (behavior, run_id, action, actor, created_at, forced) "
                        "VALUES (?, ?, ?, ?, ?, ?)", [behavior[0][0], run_id, action, actor, utcnow(), forced])
        self._write(insert)

    def finish_run(self, run_id: str, status: str) -> None:
        if status not in RUN_STATUSES or status == "running":
            raise ValueError(f"final status {status!r} is not one of {RUN_STATUSES[1:]}")

        def update(con):
            self._touch(con, run_id)
            con.execute("UPDATE runs SET status = ?, finished_at = updated_at WHERE run_id = ?",
                        [status, run_id])
        self._write(update)

    def resume_run(self, run_id: str) -> None:
        """A resumed run is ``running`` again, owned by this process."""
        def update(con):
            self._touch(con, run_id)
            con.execute("UPDATE runs SET status = 'running', finished_at = NULL, pid = ?, host = ? "
                        "WHERE run_id = ?", [os.getpid(), self._host, run_id])
        self._write(update)

    def heartbeat(self, run_id: str) -> None:
        self._write(lambda con: self._touch(con, run_id))

    def mark_stale_interrupted(self) -> list[str]:
        """Set ``interrupted`` on running runs whose process died on this host; return
        their ids. Their ``finished_at`` is their last sign of life."""
        def update(con):
            rows = _dicts(con.execute("SELECT run_id, status, pid, host FROM runs "
                                      "WHERE status = 'running' AND host = ?", [self._host]))
            stale = [r["run_id"] for r in rows if effective_status(r, self._host) == "interrupted"]
            for run_id in stale:
                con.execute("UPDATE runs SET status = 'interrupted', finished_at = updated_at "
                            "WHERE run_id = ?", [run_id])
            return stale
        return self._write(update)

    @staticmethod
    def _touch(con, run_id: str) -> str:
        """Bump ``updated_at`` (every write doubles as a heartbeat); return the behavior.
        Refuses rows for a run that does not exist: a typo'd id must not log silently."""
        found = con.execute("UPDATE runs SET updated_at = ? WHERE run_id = ? RETURNING behavior",
                            [utcnow(), run_id]).fetchall()
        if not found:
            raise UnknownRunError(f"no run {run_id!r} in the store")
        return found[0][0]

    # --- readers --------------------------------------------------------------------------

    def _resolve(self, con, run_id_or_prefix: str) -> str:
        key = str(run_id_or_prefix).strip()
        if not key:
            raise UnknownRunError("empty run id")
        ids = [r[0] for r in con.execute(
            "SELECT run_id FROM runs WHERE starts_with(run_id, ?) ORDER BY run_id", [key]).fetchall()]
        if key in ids:
            return key
        if not ids:
            raise UnknownRunError(f"no run {run_id_or_prefix!r} in {self.path} (see `cl runs`)")
        if len(ids) > 1:
            raise UnknownRunError(f"run id prefix {run_id_or_prefix!r} is ambiguous: "
                                  + ", ".join(i[:12] for i in ids[:5]))
        return ids[0]

    def _run_row(self, row: dict) -> dict:
        row["stored_status"] = row["status"]
        row["status"] = effective_status(row, self._host)
        end = row["finished_at"] or (row["updated_at"] if row["status"] != "running" else utcnow())
        row["duration_s"] = (end - row["started_at"]).total_seconds()
        for key in ("spec", "config", "versions"):
            row[key] = from_json(row[f"{key}_json"])
        return row

    def schema_version(self) -> int:
        return self._read(schema_version)

    def runs(self) -> list[dict]:
        """All runs, newest first, with the effective status and parsed JSON fields."""
        rows = self._read(lambda con: _dicts(con.execute(
            "SELECT * FROM runs ORDER BY started_at DESC, run_id")))
        return [self._run_row(r) for r in rows]

    def run(self, run_id_or_prefix: str) -> dict:
        def read(con):
            run_id = self._resolve(con, run_id_or_prefix)
            return _dicts(con.execute("SELECT * FROM runs WHERE run_id = ?", [run_id]))[0]
        return self._run_row(self._read(read))

    def _select(self, run_id_or_prefix: str, sql: str, params: Sequence = ()) -> list[dict]:
        def read(con):
            run_id = self._resolve(con, run_id_or_prefix)
            return _dicts(con.execute(sql, [run_id, *params]))
        return self._read(read)

    def steps(self, run_id: str) -> list[dict]:
        rows = self._select(run_id, "SELECT * FROM steps WHERE run_id = ? ORDER BY step")
        for r in rows:
            r["extra"] = from_json(r.pop("extra_json")) or {}
        return rows

    def rollouts(self, run_id: str, limit: int | None = None, *,
                 step: int | None = None) -> list[dict]:
        """Rollouts, latest step first (or of one ``step``), ``limit`` rows at most."""
        sql, params = "SELECT * FROM rollouts WHERE run_id = ?", []
        if step is not None:
            sql, params = sql + " AND step = ?", [step]
        sql += " ORDER BY step DESC, idx"
        if limit is not None:
            sql, params = sql + " LIMIT ?", [*params, int(limit)]
        return self._select(run_id, sql, params)

    def rollout_steps(self, run_id: str) -> list[int]:
        rows = self._select(run_id, "SELECT DISTINCT step FROM rollouts WHERE run_id = ? ORDER BY step")
        return [r["step"] for r in rows]

    def evals(self, run_id: str) -> list[dict]:
        return self._select(run_id, "SELECT * FROM evals WHERE run_id = ? "
                                    "ORDER BY step, subject, suite, metric")

    def judge_calls(self, run_id: str) -> list[dict]:
        return self._select(run_id, "SELECT * FROM judge_calls WHERE run_id = ? ORDER BY step, idx")

    def adapters(self, run_id: str) -> list[dict]:
        rows = self._select(run_id, "SELECT * FROM adapters WHERE run_id = ? ORDER BY created_at")
        for r in rows:
            r["details"] = from_json(r["details_json"])
        return rows

    def resolve(self, run_id_or_prefix: str) -> str:
        """The full run id of a unique prefix (UnknownRunError otherwise)."""
        return self._read(lambda con: self._resolve(con, run_id_or_prefix))

    def promotions(self, behavior: str | None = None) -> list[dict]:
        """The promote / rollback history, oldest first (of one behavior, or all)."""
        sql, params = "SELECT * FROM promotions", []
        if behavior is not None:
            sql, params = sql + " WHERE behavior = ?", [behavior]
        return self._read(lambda con: _dicts(con.execute(sql + " ORDER BY created_at, rowid", params)))

    def library(self) -> dict[str, list[dict]]:
        """What the adapter library lists, read in one open: ``adapters`` (each run's latest
        adapter row with its run's method, model and config), ``evals`` (the adapters'
        eval-split rows) and ``promotions`` (oldest first)."""
        def read(con):
            adapters = _dicts(con.execute(
                "SELECT a.run_id, a.path, a.behavior, a.verdict, a.details_json, a.created_at, r.method, "
                "r.model, r.config_json, r.spec_json, r.status FROM (SELECT *, row_number() OVER "
                "(PARTITION BY run_id ORDER BY created_at DESC) AS k FROM adapters) a "
                "JOIN runs r USING (run_id) WHERE a.k = 1 ORDER BY a.behavior, a.created_at, a.run_id"))
            evals = _dicts(con.execute("SELECT * FROM evals WHERE subject = 'adapter' AND "
                                       "coalesce(split, 'eval') = 'eval' ORDER BY run_id, step"))
            promotions = _dicts(con.execute("SELECT * FROM promotions ORDER BY created_at, rowid"))
            return adapters, evals, promotions
        adapters, evals, promotions = self._read(read)
        for a in adapters:
            a["details"], a["config"], a["spec"] = (from_json(a.pop(k)) for k in
                                                    ("details_json", "config_json", "spec_json"))
        return {"adapters": adapters, "evals": evals, "promotions": promotions}

    def judge_summary(self, run_id: str) -> dict:
        """Calls by outcome, mean latency, total cost, cached share, token counts."""
        def read(con):
            rid = self._resolve(con, run_id)
            total = _dicts(con.execute(
                "SELECT count(*) AS calls, avg(latency_s) AS mean_latency_s, "
                "coalesce(sum(cost), 0) AS total_cost, "
                "coalesce(avg(CASE WHEN cached THEN 1.0 ELSE 0.0 END), 0) AS cached_share, "
                "coalesce(sum(prompt_tokens), 0) AS prompt_tokens, "
                "coalesce(sum(completion_tokens), 0) AS completion_tokens "
                "FROM judge_calls WHERE run_id = ?", [rid]))[0]
            total["by_outcome"] = dict(con.execute(
                "SELECT coalesce(outcome, 'unknown'), count(*) FROM judge_calls "
                "WHERE run_id = ? GROUP BY ALL ORDER BY 2 DESC, 1", [rid]).fetchall())
            return total
        return self._read(read)

    def overview(self) -> list[dict]:
        """``runs()``, each with its ``evals``, the behavior rate of its last logged step
        (``last_rate``) and its latest adapter row (``adapter``: verdict and parsed
        details, or None), read in one open: what ``views.summaries`` (`cl runs`) shows."""
        def read(con):
            runs = _dicts(con.execute("SELECT * FROM runs ORDER BY started_at DESC, run_id"))
            evals = _dicts(con.execute("SELECT * FROM evals ORDER BY step, subject, suite, metric"))
            rates = dict(con.execute(
                "SELECT run_id, arg_max(behavior_rate, step) FILTER (WHERE behavior_rate IS NOT NULL) "
                "FROM steps GROUP BY run_id").fetchall())
            adapters = {r[0]: {"verdict": r[1], "details": from_json(r[2])} for r in con.execute(
                "SELECT run_id, arg_max(verdict, created_at), arg_max(details_json, created_at) "
                "FROM adapters GROUP BY run_id").fetchall()}
            return runs, evals, rates, adapters
        runs, evals, rates, adapters = self._read(read)
        by_run: dict[str, list[dict]] = {}
        for e in evals:
            by_run.setdefault(e["run_id"], []).append(e)
        return [{**self._run_row(r), "evals": by_run.get(r["run_id"], []), "last_rate": rates.get(r["run_id"]),
                 "adapter": adapters.get(r["run_id"])} for r in runs]
