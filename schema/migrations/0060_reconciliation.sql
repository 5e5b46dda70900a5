-- Nightly reconciliation bookkeeping: one row per run, one row per discrepancy found.
-- The job itself is tasks/reconciliation.py (python -m tasks.reconcile).
BEGIN;

CREATE TABLE IF NOT EXISTS reconciliation_runs (
    id                   bigserial PRIMARY KEY,
    started_at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at          timestamptz,
    status               text NOT NULL DEFAULT 'running'
                         CHECK (status IN ('running', 'completed', 'failed', 'abandoned')),
    auto_fix             boolean NOT NULL,
    tables               text[] NOT NULL,
    rows_checked         bigint NOT NULL DEFAULT 0,
    discrepancies_found  integer NOT NULL DEFAULT 0,
    discrepancies_fixed  integer NOT NULL DEFAULT 0,
    source               text NOT NULL DEFAULT 'cli',
    error                text
);
COMMENT ON TABLE reconciliation_runs IS 'One row per reconciliation run (python -m tasks.reconcile or the nightly Beat task).';

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

CREATE INDEX IF NOT EXISTS idx_reconciliation_findings_run ON reconciliation_findings (run_id);

COMMIT;
