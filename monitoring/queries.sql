-- Queries the health check, metrics and status page read. Loaded by name
-- (schema.db.load_queries); no identifiers are ever interpolated.

-- name: database_ping
SELECT 1

-- name: view_freshness
-- One row per registered view: queue state from mv_refresh_queue plus the
-- age of the oldest unrefreshed request (staleness) and of the last refresh.
SELECT q.view_name,
       q.status,
       q.pending_requests,
       q.refresh_requested_at,
       EXTRACT(EPOCH FROM (clock_timestamp() - q.refresh_requested_at))::float8 AS staleness_seconds,
       q.last_refresh_completed_at,
       EXTRACT(EPOCH FROM (clock_timestamp() - q.last_refresh_completed_at))::float8 AS last_refresh_age_seconds,
       q.last_status,
       q.last_error,
       q.enabled,
       q.debounce_seconds,
       q.max_wait_seconds
FROM mv_refresh_queue q
ORDER BY q.view_name

-- name: stale_view_count
-- The guide's health query, with the threshold as a parameter.
SELECT COUNT(*) AS stale_views
FROM mv_refresh_queue
WHERE status = 'pending' AND refresh_requested_at < CURRENT_TIMESTAMP - make_interval(secs => :stale_after)

-- name: failing_views
-- Views whose most recent finished refresh failed.
SELECT view_name, last_error
FROM mv_refresh_queue
WHERE last_status = 'failed'
ORDER BY view_name

-- name: refresh_stats
-- Per registered view: refreshes by outcome started in the last 24 hours (the
-- guide's "Failed Refreshes (24h)" window; log rows are pruned after 7 days,
-- so an all-time count would fall back), the last finished refresh, and the
-- completion of the last successful one.
SELECT r.view_name,
       COALESCE(s.completed, 0) AS completed,
       COALESCE(s.failed, 0) AS failed,
       COALESCE(s.skipped, 0) AS skipped,
       COALESCE(s.abandoned, 0) AS abandoned,
       last.duration_ms AS last_duration_ms,
       last.status AS last_status,
       last.refresh_started_at AS last_started_at,
       ok.refresh_completed_at AS last_success_at
FROM mv_registry r
LEFT JOIN LATERAL (
    SELECT count(*) FILTER (WHERE l.status = 'completed') AS completed,
           count(*) FILTER (WHERE l.status = 'failed') AS failed,
           count(*) FILTER (WHERE l.status = 'skipped') AS skipped,
           count(*) FILTER (WHERE l.status = 'abandoned') AS abandoned
    FROM mv_refresh_log l
    WHERE l.view_name = r.view_name AND l.refresh_started_at > clock_timestamp() - interval '24 hours'
) s ON true
LEFT JOIN LATERAL (
    SELECT l.duration_ms, l.status, l.refresh_started_at
    FROM mv_refresh_log l
    WHERE l.view_name = r.view_name AND l.status IN ('completed', 'failed', 'abandoned')
    ORDER BY l.refresh_started_at DESC
    LIMIT 1
) last ON true
LEFT JOIN LATERAL (
    SELECT l.refresh_completed_at
    FROM mv_refresh_log l
    WHERE l.view_name = r.view_name AND l.status = 'completed'
    ORDER BY l.refresh_started_at DESC
    LIMIT 1
) ok ON true
ORDER BY r.view_name

-- name: recent_refreshes
-- The newest refreshes of every view (skipped ones too: they show the sweep at work).
SELECT id, view_name, status, source, refresh_started_at, refresh_completed_at, duration_ms,
       requests_cleared, error
FROM mv_refresh_log
ORDER BY refresh_started_at DESC
LIMIT :limit

-- name: recent_failures
SELECT id, view_name, status, source, refresh_started_at, refresh_completed_at, duration_ms, error
FROM mv_refresh_log
WHERE status IN ('failed', 'abandoned') AND refresh_started_at > clock_timestamp() - interval '24 hours'
ORDER BY refresh_started_at DESC
LIMIT :limit

-- name: reconciliation_runs
-- The newest reconciliation runs (a running one included), with per-part counts in summary.
SELECT id, started_at, finished_at, status, auto_fix, tables, rows_checked,
       discrepancies_found, discrepancies_fixed, source, summary, error
FROM reconciliation_runs
ORDER BY started_at DESC
LIMIT :limit

-- name: reconciliation_last_finished
SELECT id, started_at, finished_at, status, auto_fix, tables, rows_checked,
       discrepancies_found, discrepancies_fixed, source, summary, error
FROM reconciliation_runs
WHERE status <> 'running'
ORDER BY started_at DESC
LIMIT 1

-- name: reconciliation_last_completed_at
SELECT max(finished_at) FROM reconciliation_runs WHERE status = 'completed'

-- name: db_cache_hit_ratio
-- The guide's "Monitor During Load Test" cache hit ratio (target > 95%), as a fraction.
SELECT sum(heap_blks_hit)::float8 / NULLIF(sum(heap_blks_hit) + sum(heap_blks_read), 0) AS ratio
FROM pg_statio_user_tables

-- name: monitoring_dashboard
SELECT metric, value, unit FROM monitoring_dashboard
