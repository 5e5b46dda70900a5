-- Named queries of the refresh engine (tasks/refresh_engine.py).
-- The bookkeeping functions are defined in
-- migrations/0020_phase2_refresh_queue.sql (contract: docs/internals.md).
-- View names are always bound parameters; the SQL functions check them
-- against mv_registry before any dynamic SQL.

-- name: view_lookup
-- The one statement an unknown name ever reaches.
SELECT view_name, enabled FROM mv_registry WHERE view_name = :view;

-- name: registered_views
SELECT view_name FROM mv_registry ORDER BY refresh_order, view_name;

-- name: request_lock_timeout
-- mv_request_refresh() updates the view's registry row, which a running
-- refresh holds locked until it commits: give up after a moment (the task
-- retries) instead of holding a worker slot for a whole refresh.
SELECT set_config('lock_timeout', '2s', true);

-- name: request_refresh
-- A debounced refresh request for one view (no write to its tables needed).
SELECT mv_request_refresh(:view);

-- name: try_advisory_lock
-- Session-level, taken without waiting. The second gate after the Redis lock
-- (and the only one when Redis is unreachable): two refreshes of one view
-- never both reach mv_refresh_run, so none sits on a connection waiting for
-- the other's registry row lock. Released explicitly, or by Postgres when the
-- session ends (a killed worker's connection drops).
SELECT pg_try_advisory_lock(:namespace, hashtext(:view));

-- name: advisory_unlock
SELECT pg_advisory_unlock(:namespace, hashtext(:view));

-- name: next_fence
SELECT nextval('mv_refresh_fence_seq');

-- name: refresh_begin
SELECT mv_refresh_begin(:view, :source, :worker);

-- name: set_statement_timeout
-- Transaction-local: the refresh transaction gives up before the task's soft
-- time limit instead of refreshing on after the task is gone.
SELECT set_config('statement_timeout', :timeout_ms, true);

-- name: refresh_run
SELECT status, requests_cleared, duration_ms, rows_in_view FROM mv_refresh_run(:view, :log_id, :fence, :force);

-- name: refresh_fail
SELECT mv_refresh_fail(:log_id, :error);

-- name: mark_abandoned
SELECT mv_mark_abandoned();

-- name: fold_deltas_kind
-- Phase 1 may provide fold_denorm_deltas() (a function or a procedure).
SELECT p.prokind FROM pg_proc p WHERE p.oid = to_regprocedure('fold_denorm_deltas()');

-- name: fold_deltas_function
SELECT fold_denorm_deltas();

-- name: fold_deltas_procedure
CALL fold_denorm_deltas();

-- name: due_views
-- What the sweep enqueues: mv_due_views() (quiet for the window, or the oldest
-- request has waited max_wait), looking ahead by :lead seconds. The next sweep
-- comes one interval later and a task takes a moment to start, so waiting for
-- the oldest request to reach max_wait exactly would start refreshes up to a
-- sweep interval late; a view whose oldest request reaches max_wait within
-- :lead (one sweep interval plus a hand-off margin) is due now. Under a steady
-- stream of writes refreshes then start at most max_wait apart.
-- covered_us: when the view's last committed refresh covered its requests
-- (epoch microseconds, 0 = never), read in the same snapshot as "due". The
-- sweep hands it to the refresh it enqueues (see refreshed_since).
SELECT d.view_name, d.pending_requests, d.first_requested_at, d.last_requested_at,
       d.due OR a.ahead AS due,
       CASE WHEN a.ahead AND NOT d.due THEN 'max_wait' ELSE d.reason END AS reason,
       coalesce((extract(epoch FROM r.covered_at) * 1000000)::bigint, 0) AS covered_us
FROM mv_due_views() d
JOIN mv_registry r ON r.view_name = d.view_name
CROSS JOIN LATERAL (
    SELECT d.reason = 'debouncing'
           AND clock_timestamp() - d.first_requested_at
               >= make_interval(secs => greatest(r.max_wait_seconds - CAST(:lead AS float8), 0)) AS ahead
) a
ORDER BY r.refresh_order, d.view_name;

-- name: refreshed_since
-- Whether a refresh of the view committed after the sweep read covered_us.
SELECT coalesce((extract(epoch FROM covered_at) * 1000000)::bigint, 0) <> :seen_us
FROM mv_registry WHERE view_name = :view;

-- name: refresh_health
-- Per view: queue status, last outcome, failures in the last hour, staleness.
-- A view is stale when an enabled view's oldest pending request is older than
-- :stale_after seconds (the guide's health check uses 1 minute).
SELECT q.view_name,
       q.enabled,
       q.status,
       q.pending_requests,
       extract(epoch FROM clock_timestamp() - q.refresh_requested_at)::float8 AS oldest_pending_seconds,
       q.last_status,
       q.last_refresh_started_at,
       q.last_refresh_completed_at,
       q.last_error,
       (SELECT count(*)
        FROM mv_refresh_log l
        WHERE l.view_name = q.view_name AND l.status = 'failed'
          AND l.refresh_started_at > clock_timestamp() - interval '1 hour') AS failures_last_hour,
       coalesce(q.enabled AND q.pending_requests > 0
                AND q.refresh_requested_at < clock_timestamp() - make_interval(secs => :stale_after), false) AS stale
FROM mv_refresh_queue q
ORDER BY q.view_name;
