-- The guide's "Monitor During Load Test" queries, verbatim
-- (spec: denormalization-guide.md, section "Monitor During Load Test").
-- Run against the stack: psql "$DATABASE_URL" -f monitoring/load_test.sql
-- The last one needs pg_stat_statements (make up enables it; see README).

-- Check active queries
SELECT pid, query, state, wait_event_type, backend_start
FROM pg_stat_activity
WHERE state = 'active' AND pid != pg_backend_pid()
ORDER BY backend_start;

-- Check cache hit rate
SELECT
    sum(heap_blks_read) as heap_read,
    sum(heap_blks_hit) as heap_hit,
    sum(heap_blks_hit) / (sum(heap_blks_hit) + sum(heap_blks_read)) * 100 AS cache_hit_ratio
FROM pg_statio_user_tables;
-- Target: > 95%

-- Check slow queries
SELECT calls, mean_exec_time, query
FROM pg_stat_statements
ORDER BY mean_exec_time DESC
LIMIT 10;
