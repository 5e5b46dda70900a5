-- Named queries of api/freshness.py.

-- name: view_generations
-- Every registered view with its last completed refresh: the log row id names
-- the view's contents (its "generation"). One backward scan of
-- idx_mv_refresh_log_status (status, view_name, refresh_started_at) per view.
-- Refreshes of one view never overlap (fenced), so the latest started
-- completed refresh is also the latest completed one.
SELECT r.view_name,
       l.id AS generation,
       (extract(epoch FROM l.refresh_started_at) * 1000000)::bigint AS started_us,
       l.refresh_completed_at,
       (extract(epoch FROM clock_timestamp()) * 1000000)::bigint AS pg_now_us
FROM mv_registry r
LEFT JOIN LATERAL (
    SELECT g.id, g.refresh_started_at, g.refresh_completed_at
    FROM mv_refresh_log g
    WHERE g.view_name = r.view_name AND g.status = 'completed'
    ORDER BY g.refresh_started_at DESC
    LIMIT 1
) l ON true;
