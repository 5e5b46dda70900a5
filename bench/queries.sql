-- SQL of `make bench` (bench/run.py loads it with schema.db.load_queries).
--
-- The first three are the guide's own monitoring queries, verbatim
-- (denormalization-guide.md, "Monitor During Load Test" and Step 2.5), run
-- after the load test.

-- name: cache_hit_ratio
SELECT
    sum(heap_blks_read) as heap_read,
    sum(heap_blks_hit) as heap_hit,
    sum(heap_blks_hit) / (sum(heap_blks_hit) + sum(heap_blks_read)) * 100 AS cache_hit_ratio
FROM pg_statio_user_tables;

-- name: mv_refresh_avg
SELECT view_name, AVG(duration_ms), COUNT(*) FROM mv_refresh_log WHERE status = 'completed' GROUP BY view_name;

-- name: slow_queries
SELECT calls, mean_exec_time, query
FROM pg_stat_statements
ORDER BY mean_exec_time DESC
LIMIT 10;

-- The bench's own.

-- name: reset_statistics
-- Counters of this database (pg_statio_*, pg_stat_*) start again from zero,
-- so the cache hit ratio covers one phase of the run only.
SELECT pg_stat_reset();

-- name: reset_statements
SELECT pg_stat_statements_reset();

-- name: create_pg_stat_statements
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;

-- name: upvote_commit_times
-- When each upvote row written in the window committed (track_commit_timestamp
-- is on in the bench's cluster). An upvote toggled off again in the window has
-- no row left and is not counted.
SELECT extract(epoch FROM committed) AS committed
FROM (SELECT pg_xact_commit_timestamp(xmin) AS committed FROM project_upvotes) w
WHERE committed BETWEEN to_timestamp(:since) AND to_timestamp(:until)
ORDER BY committed;

-- name: row_counts
SELECT relname, n_live_tup FROM pg_stat_user_tables
WHERE relname IN ('users', 'projects', 'project_upvotes', 'project_comments', 'chains', 'chain_members',
                  'chain_posts', 'messages', 'mv_feed_projects', 'mv_search_index', 'mv_project_details')
ORDER BY relname;

-- name: database_size
SELECT pg_size_pretty(pg_database_size(current_database()));

-- name: server_settings
SELECT name, current_setting(name) FROM pg_settings
WHERE name IN ('server_version', 'shared_buffers', 'fsync', 'synchronous_commit', 'max_connections',
               'track_commit_timestamp', 'work_mem', 'jit', 'shared_preload_libraries')
ORDER BY name;

-- name: mv_refresh_avg_engine
-- The guide's query without the seed's rows: the data generator populates every
-- view once (a plain, non-concurrent REFRESH) and logs it as worker 'seed' so
-- the API has a generation; a deployment's log has no such row.
SELECT view_name, AVG(duration_ms), COUNT(*) FROM mv_refresh_log
WHERE status = 'completed' AND worker IS DISTINCT FROM 'seed' GROUP BY view_name;

-- name: top_builder
SELECT user_id FROM mv_leaderboard_builders ORDER BY rank LIMIT 1;
