-- Monitoring: the guide's monitoring_dashboard view (its four rows first, as
-- written), then rows of our own, all as (metric, value, unit).
--   psql -v ON_ERROR_STOP=1 -f schema/migrations/0050_monitoring.sql
--   SELECT * FROM monitoring_dashboard;
--
-- value is numeric (UNION ALL resolves the guide's bigint counts and our
-- averages to numeric). Rows that are one per view name the view in the
-- metric ("Oldest Pending Request Age: mv_feed_projects") and read 0 when
-- nothing is pending, so a graph of them is continuous.
BEGIN;

CREATE OR REPLACE VIEW monitoring_dashboard AS
SELECT
    'Materialized Views' as metric,
    COUNT(*) as value,
    'views' as unit
FROM pg_matviews WHERE schemaname = 'public'

UNION ALL

SELECT
    'Denormalized Tables' as metric,
    COUNT(*) as value,
    'tables' as unit
FROM pg_tables
WHERE schemaname = 'public' AND tablename IN ('user_dashboard_stats', 'message_conversations_denorm', 'intro_request_stats')

UNION ALL

SELECT
    'Active MV Refreshes' as metric,
    COUNT(*) as value,
    'refreshes' as unit
FROM mv_refresh_queue WHERE status = 'in_progress'

UNION ALL

SELECT
    'Failed Refreshes (24h)' as metric,
    COUNT(*) as value,
    'failures' as unit
FROM mv_refresh_log
WHERE status = 'failed' AND refresh_started_at > CURRENT_TIMESTAMP - INTERVAL '24 hours'

-- ----- ours -----------------------------------------------------------------

UNION ALL
SELECT 'Registered Views', COUNT(*), 'views' FROM mv_registry

UNION ALL
SELECT 'Pending Refresh Requests', COUNT(*), 'requests' FROM mv_refresh_requests

UNION ALL
SELECT 'Views Pending', COUNT(*), 'views' FROM mv_refresh_queue WHERE status = 'pending'

-- The health check's definition of stale (pending for over a minute).
UNION ALL
SELECT 'Stale Views (pending > 1 min)', COUNT(*), 'views'
FROM mv_refresh_queue
WHERE status = 'pending' AND refresh_requested_at < CURRENT_TIMESTAMP - INTERVAL '1 minute'

UNION ALL
SELECT 'Views Whose Last Refresh Failed', COUNT(*), 'views' FROM mv_refresh_queue WHERE last_status = 'failed'

UNION ALL
SELECT 'Completed Refreshes (1h)', COUNT(*), 'refreshes'
FROM mv_refresh_log
WHERE status = 'completed' AND refresh_started_at > CURRENT_TIMESTAMP - INTERVAL '1 hour'

UNION ALL
SELECT 'Skipped Refreshes (1h)', COUNT(*), 'refreshes'
FROM mv_refresh_log
WHERE status = 'skipped' AND refresh_started_at > CURRENT_TIMESTAMP - INTERVAL '1 hour'

UNION ALL
SELECT 'Abandoned Refreshes (24h)', COUNT(*), 'refreshes'
FROM mv_refresh_log
WHERE status = 'abandoned' AND refresh_started_at > CURRENT_TIMESTAMP - INTERVAL '24 hours'

UNION ALL
SELECT 'Avg Refresh Time (1h)', coalesce(round(AVG(duration_ms), 1), 0), 'ms'
FROM mv_refresh_log
WHERE status = 'completed' AND refresh_started_at > CURRENT_TIMESTAMP - INTERVAL '1 hour'

UNION ALL
SELECT 'Max Refresh Time (1h)', coalesce(MAX(duration_ms), 0), 'ms'
FROM mv_refresh_log
WHERE status = 'completed' AND refresh_started_at > CURRENT_TIMESTAMP - INTERVAL '1 hour'

UNION ALL
SELECT * FROM (
    SELECT 'Oldest Pending Request Age: ' || q.view_name,
           coalesce(round(extract(epoch FROM clock_timestamp() - q.refresh_requested_at), 1), 0),
           'seconds'
    FROM mv_refresh_queue q
    ORDER BY q.view_name
) per_view_pending

UNION ALL
SELECT * FROM (
    SELECT 'Last Refresh Age: ' || q.view_name,
           round(extract(epoch FROM clock_timestamp() - q.last_refresh_completed_at), 1),
           'seconds'
    FROM mv_refresh_queue q
    ORDER BY q.view_name
) per_view_last;

COMMENT ON VIEW monitoring_dashboard IS
    'The guide''s four rows (views, denormalized tables, active refreshes, failures 24h) then refresh-queue health rows.';

COMMIT;
