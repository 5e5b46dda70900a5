-- Nightly reconciliation bookkeeping: one row per run, one row per discrepancy found.
-- The job itself is tasks/reconciliation.py (python -m tasks.reconcile, or the
-- Celery task tasks.reconcile on queue maintenance).
--
-- Status of a run:
--   running    in progress (its process holds the advisory lock 731100/1 for the whole run)
--   completed  every part it was asked for was checked
--   partial    a part could not be checked (Redis unreachable); the other parts ran
--   failed     stopped by an error (error says which)
--   abandoned  left 'running' by a process that died; marked by the next run,
--              which can only take the advisory lock once that process is gone
-- Unfixed discrepancies of a run: discrepancies_found - discrepancies_fixed.
BEGIN;

CREATE TABLE IF NOT EXISTS reconciliation_runs (
    id                   bigserial PRIMARY KEY,
    started_at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at          timestamptz,
    status               text NOT NULL DEFAULT 'running'
                         CHECK (status IN ('running', 'completed', 'partial', 'failed', 'abandoned')),
    auto_fix             boolean NOT NULL,
    tables               text[] NOT NULL,
    rows_checked         bigint NOT NULL DEFAULT 0,
    discrepancies_found  integer NOT NULL DEFAULT 0,
    discrepancies_fixed  integer NOT NULL DEFAULT 0,
    source               text NOT NULL DEFAULT 'cli',
    host                 text,
    pid                  integer,
    backend_pid          integer,
    summary              jsonb,
    error                text
);
COMMENT ON TABLE reconciliation_runs IS 'One row per reconciliation run (python -m tasks.reconcile or the nightly Beat task).';
COMMENT ON COLUMN reconciliation_runs.rows_checked IS
    'Keys compared so far (denormalized rows plus Redis user sets); updated while the run goes on.';
COMMENT ON COLUMN reconciliation_runs.pid IS 'OS process id of the run (CLI or Celery worker child) on host.';
COMMENT ON COLUMN reconciliation_runs.backend_pid IS 'Postgres backend holding the run''s advisory lock.';
COMMENT ON COLUMN reconciliation_runs.summary IS
    'Per part: rows checked, found, fixed, seconds, status (Redis: unavailable with the error when it could not be checked).';

CREATE INDEX IF NOT EXISTS idx_reconciliation_runs_started ON reconciliation_runs (started_at DESC);

CREATE TABLE IF NOT EXISTS reconciliation_findings (
    id          bigserial PRIMARY KEY,
    run_id      bigint NOT NULL REFERENCES reconciliation_runs (id) ON DELETE CASCADE,
    table_name  text NOT NULL,
    row_key     text NOT NULL,
    column_name text NOT NULL,
    stored      text,
    truth       text,
    fixed       boolean NOT NULL DEFAULT false,
    found_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);
COMMENT ON TABLE reconciliation_findings IS 'Each discrepancy a run found: stored value vs the value recomputed from base tables.';
COMMENT ON COLUMN reconciliation_findings.table_name IS
    'user_dashboard_stats, message_conversations_denorm, intro_request_stats, or redis:user:upvotes.';
COMMENT ON COLUMN reconciliation_findings.row_key IS
    'The row''s key (user or conversation id); for Redis <user_id>/<project_id>.';
COMMENT ON COLUMN reconciliation_findings.column_name IS
    'The column that differs; "row" for a missing or extra row (stored/truth say present or absent); '
    '"member" for a Redis set member.';

CREATE INDEX IF NOT EXISTS idx_reconciliation_findings_run ON reconciliation_findings (run_id);
-- "Has this key drifted before?" (the guide's troubleshooting: investigate a specific user).
CREATE INDEX IF NOT EXISTS idx_reconciliation_findings_key ON reconciliation_findings (row_key);

COMMIT;
