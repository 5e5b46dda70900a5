-- Named queries of the nightly reconciliation (tasks/reconciliation.py).
-- The truth/stored comparison and the repair of present rows use
-- phase1_truth.sql (the *_truth, *_stored and *_rebuild queries); this file
-- adds key batches that also find extra rows, the removal of extra rows, the
-- Redis truth, and the run bookkeeping (0060_reconciliation.sql).

-- ---------------------------------------------------------------------------
-- Key batches: keyset pagination over (base keys UNION stored keys), so a row
-- missing from the denormalized table and a row whose entity no longer exists
-- both show up. Both branches are primary-key range scans. "after" is the
-- last key of the previous batch (the nil uuid to start).
-- ---------------------------------------------------------------------------

-- name: user_dashboard_stats_keys
SELECT k FROM (
    (SELECT id AS k FROM users WHERE id > CAST(:after AS uuid) ORDER BY id LIMIT :lim)
    UNION
    (SELECT user_id FROM user_dashboard_stats WHERE user_id > CAST(:after AS uuid) ORDER BY user_id LIMIT :lim)
) keys ORDER BY k LIMIT :lim;

-- name: message_conversations_denorm_keys
SELECT k FROM (
    (SELECT id AS k FROM conversations WHERE id > CAST(:after AS uuid) ORDER BY id LIMIT :lim)
    UNION
    (SELECT conversation_id FROM message_conversations_denorm WHERE conversation_id > CAST(:after AS uuid)
     ORDER BY conversation_id LIMIT :lim)
) keys ORDER BY k LIMIT :lim;

-- name: intro_request_stats_keys
SELECT k FROM (
    (SELECT id AS k FROM users WHERE id > CAST(:after AS uuid) ORDER BY id LIMIT :lim)
    UNION
    (SELECT user_id FROM intro_request_stats WHERE user_id > CAST(:after AS uuid) ORDER BY user_id LIMIT :lim)
) keys ORDER BY k LIMIT :lim;

-- name: project_stats_keys
SELECT k FROM (
    (SELECT id AS k FROM projects WHERE id > CAST(:after AS uuid) ORDER BY id LIMIT :lim)
    UNION
    (SELECT project_id FROM project_stats WHERE project_id > CAST(:after AS uuid) ORDER BY project_id LIMIT :lim)
) keys ORDER BY k LIMIT :lim;

-- ---------------------------------------------------------------------------
-- Extra rows (their entity does not exist: only possible when the foreign key
-- was bypassed, e.g. session_replication_role = replica during a bulk load).
-- Run *_lock_keys, then *_delete_extra as the NEXT statement of the same READ
-- COMMITTED transaction: the delete's snapshot is taken after the keys' row
-- locks (the ones rebuild_* and the fold take), and it re-checks that the
-- entity is still absent, so a key created meanwhile keeps its row.
-- ---------------------------------------------------------------------------

-- name: user_dashboard_stats_lock_keys
SELECT count(pg_advisory_xact_lock(731001, k.h))
FROM (SELECT DISTINCT uuid_hash(x) AS h FROM unnest(CAST(:ids AS uuid[])) x ORDER BY 1) k;

-- name: message_conversations_denorm_lock_keys
SELECT count(pg_advisory_xact_lock(731002, k.h))
FROM (SELECT DISTINCT uuid_hash(x) AS h FROM unnest(CAST(:ids AS uuid[])) x ORDER BY 1) k;

-- name: intro_request_stats_lock_keys
SELECT count(pg_advisory_xact_lock(731003, k.h))
FROM (SELECT DISTINCT uuid_hash(x) AS h FROM unnest(CAST(:ids AS uuid[])) x ORDER BY 1) k;

-- name: project_stats_lock_keys
SELECT count(pg_advisory_xact_lock(731004, k.h))
FROM (SELECT DISTINCT uuid_hash(x) AS h FROM unnest(CAST(:ids AS uuid[])) x ORDER BY 1) k;

-- name: user_dashboard_stats_delete_extra
WITH deltas AS (
    DELETE FROM user_dashboard_stats_deltas d
    WHERE d.user_id = ANY (CAST(:ids AS uuid[])) AND NOT EXISTS (SELECT 1 FROM users u WHERE u.id = d.user_id)
)
DELETE FROM user_dashboard_stats s
WHERE s.user_id = ANY (CAST(:ids AS uuid[])) AND NOT EXISTS (SELECT 1 FROM users u WHERE u.id = s.user_id)
RETURNING s.user_id::text;

-- name: message_conversations_denorm_delete_extra
WITH deltas AS (
    DELETE FROM message_conversations_denorm_deltas d
    WHERE d.conversation_id = ANY (CAST(:ids AS uuid[]))
      AND NOT EXISTS (SELECT 1 FROM conversations c WHERE c.id = d.conversation_id)
)
DELETE FROM message_conversations_denorm s
WHERE s.conversation_id = ANY (CAST(:ids AS uuid[]))
  AND NOT EXISTS (SELECT 1 FROM conversations c WHERE c.id = s.conversation_id)
RETURNING s.conversation_id::text;

-- name: intro_request_stats_delete_extra
WITH deltas AS (
    DELETE FROM intro_request_stats_deltas d
    WHERE d.user_id = ANY (CAST(:ids AS uuid[])) AND NOT EXISTS (SELECT 1 FROM users u WHERE u.id = d.user_id)
)
DELETE FROM intro_request_stats s
WHERE s.user_id = ANY (CAST(:ids AS uuid[])) AND NOT EXISTS (SELECT 1 FROM users u WHERE u.id = s.user_id)
RETURNING s.user_id::text;

-- name: project_stats_delete_extra
WITH deltas AS (
    DELETE FROM project_stats_deltas d
    WHERE d.project_id = ANY (CAST(:ids AS uuid[])) AND NOT EXISTS (SELECT 1 FROM projects p WHERE p.id = d.project_id)
)
DELETE FROM project_stats s
WHERE s.project_id = ANY (CAST(:ids AS uuid[])) AND NOT EXISTS (SELECT 1 FROM projects p WHERE p.id = s.project_id)
RETURNING s.project_id::text;

-- ---------------------------------------------------------------------------
-- Redis user cache: what user:upvotes:<u> must hold (api/cache.py's
-- user_upvoted_ids, for a batch of users). A primary-key range scan per user.
-- ---------------------------------------------------------------------------

-- name: upvotes_of_users
SELECT user_id::text, project_id::text
FROM project_upvotes
WHERE user_id = ANY (CAST(:ids AS uuid[]));

-- ---------------------------------------------------------------------------
-- Run bookkeeping
-- ---------------------------------------------------------------------------

-- name: try_run_lock
-- Session lock held by the connection that records the run, for the whole
-- run. Class 731100 is used by nothing else (Phase 1 uses 731001-731020, the
-- refresh engine 19798).
SELECT pg_try_advisory_lock(731100, 1);

-- name: release_run_lock
SELECT pg_advisory_unlock(731100, 1);

-- name: run_lock_holder
-- Who holds the run lock (for the refusal message), with its running row if any.
SELECT a.pid AS backend_pid, a.application_name, a.client_addr::text AS client_addr, a.backend_start,
       r.id AS run_id, r.started_at, r.source, r.host, r.pid
FROM pg_locks l
JOIN pg_stat_activity a ON a.pid = l.pid
LEFT JOIN LATERAL (SELECT id, started_at, source, host, pid FROM reconciliation_runs
                   WHERE status = 'running' AND backend_pid = l.pid
                   ORDER BY id DESC LIMIT 1) r ON true
WHERE l.locktype = 'advisory' AND l.classid = 731100 AND l.objid = 1 AND l.objsubid = 2 AND l.granted
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
LIMIT 1;

-- name: mark_abandoned
-- Called while holding the run lock: no other run can be alive, so every
-- 'running' row belongs to a process that died.
UPDATE reconciliation_runs
   SET status = 'abandoned', finished_at = clock_timestamp(),
       error = coalesce(error, 'process ended without finishing (killed or crashed); marked by run '
                               || CAST(:by_run AS text))
 WHERE status = 'running' AND id <> :by_run
RETURNING id;

-- name: insert_run
INSERT INTO reconciliation_runs (auto_fix, tables, source, host, pid, backend_pid)
VALUES (:auto_fix, CAST(:tables AS text[]), :source, :host, :pid, pg_backend_pid())
RETURNING id, started_at;

-- name: update_run_progress
UPDATE reconciliation_runs
   SET rows_checked = :rows_checked, discrepancies_found = :found, discrepancies_fixed = :fixed
 WHERE id = :run_id;

-- name: finish_run
UPDATE reconciliation_runs
   SET finished_at = clock_timestamp(), status = :status, rows_checked = :rows_checked,
       discrepancies_found = :found, discrepancies_fixed = :fixed, summary = CAST(:summary AS jsonb),
       error = :error
 WHERE id = :run_id;

-- name: insert_finding
INSERT INTO reconciliation_findings (run_id, table_name, row_key, column_name, stored, truth, fixed)
VALUES (:run_id, :table_name, :row_key, :column_name, :stored, :truth, :fixed);
