"""The store's schema: the append-only migrations, the version a file has, and
docs/SCHEMA.md generated from them (``python -m engrain.store --schema-doc``).

``MIGRATIONS`` is an append-only list of SQL scripts; the table ``schema_version``
records which ones a file has run. Opening a store applies the missing ones in order,
in one transaction. Never edit or reorder a released migration: add a new one (column
comments too: a later migration re-issues ``COMMENT ON``).
"""

from __future__ import annotations

import datetime as dt
import sys
from typing import Sequence

import duckdb

DEFAULT_PATH = "engrain.duckdb"
ENV_VAR = "ENGRAIN_STORE"


def utcnow() -> dt.datetime:
    # Naive UTC: DuckDB's TIMESTAMP round-trips it exactly, with no timezone package.
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)

# (name, script). Append only: a file at version k has run exactly the first k scripts.
MIGRATIONS: list[tuple[str, str]] = [
    ("runs, steps, evals, adapters", """
CREATE TABLE runs (
    run_id        VARCHAR PRIMARY KEY,
    behavior      VARCHAR NOT NULL,
    method        VARCHAR,
    status        VARCHAR NOT NULL,
    spec_json     VARCHAR,
    config_json   VARCHAR,
    model         VARCHAR,
    versions_json VARCHAR,
    seed          BIGINT,
    pid           INTEGER,
    host          VARCHAR,
    started_at    TIMESTAMP NOT NULL,
    updated_at    TIMESTAMP NOT NULL,
    finished_at   TIMESTAMP,
    adapter_path  VARCHAR
);
COMMENT ON TABLE runs IS 'One row per training run (cl fit). Timestamps are UTC.';
COMMENT ON COLUMN runs.run_id IS '32 hex digits; commands accept any unique prefix';
COMMENT ON COLUMN runs.behavior IS 'the spec''s name';
COMMENT ON COLUMN runs.method IS 'rmsd | opsd | sft';
COMMENT ON COLUMN runs.status IS 'running | completed | interrupted | failed | rejected; readers report a running run whose pid is dead on this host as interrupted';
COMMENT ON COLUMN runs.spec_json IS 'the validated behavior spec, as JSON';
COMMENT ON COLUMN runs.config_json IS 'the resolved training configuration, as JSON';
COMMENT ON COLUMN runs.model IS 'base model: lab, a folder or a hub id';
COMMENT ON COLUMN runs.versions_json IS 'package versions (python, engrain, torch, ...), as JSON';
COMMENT ON COLUMN runs.pid IS 'process id of the writer, with host: liveness check';
COMMENT ON COLUMN runs.updated_at IS 'last write or heartbeat';
COMMENT ON COLUMN runs.adapter_path IS 'where the adapter was saved, once one was';

CREATE TABLE steps (
    run_id          VARCHAR NOT NULL,
    step            INTEGER NOT NULL,
    loss            DOUBLE,
    kl              DOUBLE,
    n_candidates    INTEGER,
    n_selected      INTEGER,
    judge_fallbacks INTEGER,
    behavior_rate   DOUBLE,
    seconds         DOUBLE,
    judge_seconds   DOUBLE,
    teacher_version INTEGER,
    extra_json      VARCHAR
);
COMMENT ON TABLE steps IS 'One row per optimizer step.';
COMMENT ON COLUMN steps.kl IS 'mean divergence at the selected positions (the loss before any scaling)';
COMMENT ON COLUMN steps.n_candidates IS 'positions kept by the heuristic pre-filter (T per rollout), summed over the batch';
COMMENT ON COLUMN steps.n_selected IS 'positions the judge selected (at most S per rollout), summed over the batch';
COMMENT ON COLUMN steps.judge_fallbacks IS 'rollouts whose judge answer was unusable and fell back to the pre-filter';
COMMENT ON COLUMN steps.behavior_rate IS 'share of this step''s rollouts showing the target behavior';
COMMENT ON COLUMN steps.seconds IS 'wall time of the whole step';
COMMENT ON COLUMN steps.judge_seconds IS 'wall time spent waiting for the judge';
COMMENT ON COLUMN steps.teacher_version IS '0 = base model; incremented at each teacher refresh';
COMMENT ON COLUMN steps.extra_json IS 'any further metrics, as a JSON object';

CREATE TABLE evals (
    run_id  VARCHAR NOT NULL,
    step    INTEGER NOT NULL,
    subject VARCHAR NOT NULL,
    suite   VARCHAR NOT NULL,
    metric  VARCHAR NOT NULL,
    value   DOUBLE,
    n       INTEGER
);
COMMENT ON TABLE evals IS 'Eval results; higher is better for every metric.';
COMMENT ON COLUMN evals.step IS 'training step the adapter was evaluated at (0 for the base model)';
COMMENT ON COLUMN evals.subject IS 'base | adapter';
COMMENT ON COLUMN evals.suite IS 'behavior (target rates), specificity (probes), or a regression suite such as lab/arithmetic';
COMMENT ON COLUMN evals.metric IS 'e.g. exists, only, accuracy';
COMMENT ON COLUMN evals.n IS 'number of graded samples behind value';

CREATE TABLE adapters (
    run_id       VARCHAR NOT NULL,
    path         VARCHAR NOT NULL,
    behavior     VARCHAR NOT NULL,
    verdict      VARCHAR NOT NULL,
    details_json VARCHAR,
    created_at   TIMESTAMP NOT NULL
);
COMMENT ON TABLE adapters IS 'The forgetting gate''s verdict on each saved adapter.';
COMMENT ON COLUMN adapters.verdict IS 'accepted | rejected | kept (rejected by the gate but kept on request)';
COMMENT ON COLUMN adapters.details_json IS 'the gate verdict (GateVerdict.to_dict()) and anything else, as JSON';
"""),
    ("rollouts with token-level signal", """
CREATE TABLE rollouts (
    run_id         VARCHAR NOT NULL,
    step           INTEGER NOT NULL,
    idx            INTEGER NOT NULL,
    prompt         VARCHAR,
    response       VARCHAR,
    token_ids      INTEGER[],
    tokens         VARCHAR[],
    delta          DOUBLE[],
    teacher_tokens VARCHAR[],
    candidates     INTEGER[],
    selected       INTEGER[]
);
COMMENT ON TABLE rollouts IS 'Sampled student rollouts, token-aligned: index t is the t-th response token in every list.';
COMMENT ON COLUMN rollouts.idx IS 'rollout index within the step''s batch';
COMMENT ON COLUMN rollouts.prompt IS 'what the student saw (never the hint)';
COMMENT ON COLUMN rollouts.token_ids IS 'the exact sampled response token ids';
COMMENT ON COLUMN rollouts.tokens IS 'each response token, decoded';
COMMENT ON COLUMN rollouts.delta IS 'log pi_T(y_t) - log pi_S(y_t): > 0 the teacher prefers this token';
COMMENT ON COLUMN rollouts.teacher_tokens IS 'the teacher''s most likely token at each position, decoded';
COMMENT ON COLUMN rollouts.candidates IS 'response positions kept by the heuristic pre-filter';
COMMENT ON COLUMN rollouts.selected IS 'response positions the judge selected (the loss mask)';
"""),
    ("judge calls", """
CREATE TABLE judge_calls (
    run_id            VARCHAR NOT NULL,
    step              INTEGER NOT NULL,
    idx               INTEGER,
    model             VARCHAR,
    latency_s         DOUBLE,
    prompt_tokens     INTEGER,
    completion_tokens INTEGER,
    cost              DOUBLE,
    outcome           VARCHAR,
    cached            BOOLEAN
);
COMMENT ON TABLE judge_calls IS 'One row per judge request, for latency and cost accounting.';
COMMENT ON COLUMN judge_calls.idx IS 'rollout index within the step''s batch';
COMMENT ON COLUMN judge_calls.cost IS 'USD, as reported by the provider; 0 for local judges';
COMMENT ON COLUMN judge_calls.outcome IS 'e.g. ok | invalid | timeout | error | fallback';
COMMENT ON COLUMN judge_calls.cached IS 'answered from the judge cache without a request';
"""),
    ("anchor, drift and guard per step; eval splits and decodings; gate outcomes", """
ALTER TABLE steps ADD COLUMN anchor_kl DOUBLE;
ALTER TABLE steps ADD COLUMN n_guarded INTEGER;
ALTER TABLE steps ADD COLUMN lr DOUBLE;
ALTER TABLE steps ADD COLUMN grad_norm DOUBLE;
ALTER TABLE steps ADD COLUMN drift DOUBLE;
COMMENT ON COLUMN steps.anchor_kl IS 'KL(pi_base || pi_S) on this step''s anchor answers (unweighted); NULL without an anchor';
COMMENT ON COLUMN steps.n_guarded IS 'positions trained because the teacher all but ruled out the sampled token (train.guard_ratio), beyond the judge''s pick';
COMMENT ON COLUMN steps.lr IS 'learning rate of this step (warmup, cosine decay)';
COMMENT ON COLUMN steps.grad_norm IS 'gradient norm before clipping';
COMMENT ON COLUMN steps.drift IS '||Delta W|| / ||W|| over every adapted weight matrix, after the step';
ALTER TABLE evals ADD COLUMN split VARCHAR;
ALTER TABLE evals ADD COLUMN decoding VARCHAR;
COMMENT ON COLUMN evals.split IS 'eval (the gate''s prompts) | val (checkpoint selection, disjoint questions); NULL = eval';
COMMENT ON COLUMN evals.decoding IS 'sample (temperature 1, what the gate reads) | greedy; NULL = sample';
ALTER TABLE adapters ADD COLUMN outcome VARCHAR;
COMMENT ON COLUMN adapters.outcome IS 'accepted | regressed | not learned (the gate''s outcome)';
"""),
    # Comments only: the earlier ones had gone untrue (run ids, the method registry, the
    # guard and OPSD in the masks, the judge's outcomes, the reserved suites).
    ("column comments corrected", """
COMMENT ON COLUMN runs.run_id IS 'a fit''s: 8 hex digits, then its start date and time (1a2b3c4d-20261202-141500); Store.start_run''s default: 32 hex digits. Commands accept any unique prefix';
COMMENT ON COLUMN runs.method IS 'the training method: a name in engrain.registry.METHODS (rmsd, opsd, sft, or a plugin''s)';
COMMENT ON COLUMN runs.spec_json IS 'the validated behavior spec with the overrides applied, as JSON: what a resume and the readers'' gate read';
COMMENT ON COLUMN runs.config_json IS 'how the run was started, as JSON: the fit''s command-line overrides and eval_n (the resolved settings are in spec_json)';
COMMENT ON COLUMN runs.adapter_path IS 'the adapter to use: set when one is recorded accepted or kept (a rejected one is only in adapters)';
COMMENT ON COLUMN steps.step IS 'the optimizer step, counted from 0 (evals.step counts steps done: after step k it is k + 1)';
COMMENT ON COLUMN steps.loss IS 'what was minimised: kl (sft: the cross-entropy) + anchor.weight * anchor_kl';
COMMENT ON COLUMN steps.kl IS 'mean divergence (train.loss) at the trained positions, weighted by pi_S / pi_sampler where the sampler lags the trainer; NULL for sft';
COMMENT ON COLUMN steps.n_candidates IS 'positions the heuristic pre-filter kept (at most T per rollout), summed over the batch; every response position for opsd and sft';
COMMENT ON COLUMN steps.n_selected IS 'positions trained (the loss mask): the judge''s pick (at most S per rollout) plus the guard''s (n_guarded), summed over the batch; every response position for opsd and sft';
COMMENT ON COLUMN steps.n_guarded IS 'positions trained beyond the judge''s pick because both the teacher and the base model find the sampled token less than train.guard_ratio times as likely as the student does';
COMMENT ON COLUMN steps.judge_fallbacks IS 'rollouts whose judge answer was unusable (outcome fallback:<reason>): the pre-filter''s heuristic pick was trained instead';
COMMENT ON COLUMN steps.behavior_rate IS 'share of this step''s rollouts showing the target behavior (sft: of the teacher''s samples)';
COMMENT ON COLUMN steps.extra_json IS 'further metrics, as a JSON object: stage_seconds (wall time per stage of the step), sampler_gap (mean |log pi_S - log pi_sampler| per token)';
COMMENT ON TABLE rollouts IS 'The first rollouts of each distillation step (up to 4 per step; none for sft), token-aligned: index t is the t-th response token in every list.';
COMMENT ON COLUMN rollouts.candidates IS 'response positions kept by the heuristic pre-filter (every position for opsd)';
COMMENT ON COLUMN rollouts.selected IS 'response positions trained (the loss mask): the judge''s pick plus the guard''s; every position for opsd';
COMMENT ON TABLE judge_calls IS 'One row per rollout the judge answered for (rmsd steps; cached answers too), for latency and cost accounting.';
COMMENT ON COLUMN judge_calls.model IS 'the judge: rule (the spec''s patterns), self (the base model) or a litellm model string';
COMMENT ON COLUMN judge_calls.cost IS 'USD, from the provider''s prices; 0 for the rule judge and where the price is unknown';
COMMENT ON COLUMN judge_calls.outcome IS 'ok | fallback:<reason> (the answer was unusable: the pre-filter''s heuristic pick was trained)';
COMMENT ON COLUMN evals.step IS 'steps the adapter had trained when evaluated (the final evals: the kept checkpoint''s; val points: every eval_every steps); 0 for the base model';
COMMENT ON COLUMN evals.suite IS 'behavior (rates without the hint), behavior_hinted (the base model''s, with it), specificity (probes), well_formed (answers that neither loop nor run out), or a regression suite such as lab/arithmetic';
COMMENT ON TABLE adapters IS 'The gate''s verdict (forgetting and learning) on each saved adapter.';
COMMENT ON COLUMN adapters.path IS 'where the adapter was saved (a folder adapter.rejected when the gate refused it and it was not kept)';
"""),
    ("promotions: each behavior's current adapter", """
CREATE TABLE promotions (
    behavior VARCHAR NOT NULL,
    run_id   VARCHAR NOT NULL,
    action   VARCHAR NOT NULL,
    actor    VARCHAR,
    created_at TIMESTAMP NOT NULL,
    forced   BOOLEAN NOT NULL
);
COMMENT ON TABLE promotions IS 'Which adapter of a behavior is current (cl adapters promote / rollback), append-only: replayed in order, a promote pushes its run and a rollback pops back to the one before; the current adapter is the top.';
COMMENT ON COLUMN promotions.run_id IS 'promote: the run made current; rollback: the run that stopped being current';
COMMENT ON COLUMN promotions.action IS 'promote | rollback';
COMMENT ON COLUMN promotions.actor IS 'who: user@host unless the caller named someone; a fit that promoted its behavior''s first accepted adapter adds " (fit)"';
COMMENT ON COLUMN promotions.forced IS 'promoted with --force although the gate had not accepted it';
"""),
]
LATEST_VERSION = len(MIGRATIONS)


def schema_version(con) -> int:
    """The number of migrations a connection's database has run (0 for a new file)."""
    has_table = con.execute("SELECT count(*) FROM duckdb_tables() "
                            "WHERE table_name = 'schema_version'").fetchone()[0]
    if not has_table:
        return 0
    return con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]


def apply_migrations(con, upto: int | None = None) -> list[int]:
    """Run the missing migrations (up to version ``upto``) on an open read-write
    connection, inside the caller's transaction; return the versions applied."""
    con.execute("CREATE TABLE IF NOT EXISTS schema_version "
                "(version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL)")
    current, target = schema_version(con), LATEST_VERSION if upto is None else upto
    applied = []
    for version in range(current + 1, target + 1):
        name, script = MIGRATIONS[version - 1]
        con.execute(script)
        con.execute("INSERT INTO schema_version VALUES (?, ?, ?)", [version, name, utcnow()])
        applied.append(version)
    return applied


def schema_doc() -> str:
    """docs/SCHEMA.md, generated from a fresh in-memory store."""
    con = duckdb.connect(":memory:")
    apply_migrations(con)
    lines = ["# Run store schema", "",
             "Generated by `python -m engrain.store --schema-doc > docs/SCHEMA.md`; do not edit",
             "by hand (tests/test_store.py checks it matches the code).", "",
             f"One DuckDB file, `{DEFAULT_PATH}` in the working directory unless `--store PATH` or",
             f"`{ENV_VAR}` names another. Schema version {LATEST_VERSION}; migrations, applied in order",
             "when a store is opened (append-only: never edit one, add a new one); the table",
             "`schema_version` (version, name, applied_at) records the ones a file has run:", ""]
    lines += [f"{i}. {name}" for i, (name, _) in enumerate(MIGRATIONS, start=1)]
    tables = con.execute("SELECT table_name, comment FROM duckdb_tables() "
                         "WHERE table_name != 'schema_version' ORDER BY table_oid").fetchall()
    for table, comment in tables:
        lines += ["", f"## `{table}`", ""]
        if comment:
            lines += [comment, ""]
        lines += ["| column | type | null | notes |", "|---|---|---|---|"]
        for name, dtype, nullable, note in con.execute(
                "SELECT column_name, data_type, is_nullable, comment FROM duckdb_columns() "
                "WHERE table_name = ? ORDER BY column_index", [table]).fetchall():
            notes = (note or "").replace("|", "\\|")
            lines.append(f"| `{name}` | {dtype} | {'yes' if nullable else 'no'} | {notes} |")
    con.close()
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    import argparse
    parser = argparse.ArgumentParser(prog="python -m engrain.store")
    parser.add_argument("--schema-doc", action="store_true", help="print docs/SCHEMA.md")
    args = parser.parse_args(argv)
    if args.schema_doc:
        sys.stdout.write(schema_doc())
        return 0
    parser.print_help()
    return 2
