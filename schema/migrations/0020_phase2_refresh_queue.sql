-- Phase 2, part 1: the bookkeeping of debounced materialized-view refreshes.
--   psql -v ON_ERROR_STOP=1 -f schema/migrations/0020_phase2_refresh_queue.sql
--
-- Shared by the Celery refresh engine (tasks/) and the SQL fallback
-- process_mv_refresh_queue(). The contract is docs/internals.md; the design
-- follows DESIGN.md "A refresh design that meets these requirements", with
-- one change measured to matter (bench/read_models.py, writer throughput):
--
--   * Requests are rows, inserted and never updated. A statement-level
--     trigger on every base table inserts ONE narrow row per write statement
--     (table name, writing transaction id), at most once per table and
--     transaction. Inserts never wait on each other, so the enqueue path does
--     not serialize writers. (One row per dependent view, with an index,
--     cost 30% of single-row write throughput with 8 clients; one
--     unindexed row per statement costs a few percent.)
--   * Which requests a view has absorbed is recorded per view, not by
--     deleting rows: mv_registry.covered_snapshot is the snapshot its last
--     successful refresh was taken after. A request is pending for a view when
--     its transaction is not visible in that snapshot. A refresh is ONE
--     transaction (mv_refresh_run): lock + fence check on the registry row,
--     record covered_snapshot := the current snapshot, REFRESH ...
--     CONCURRENTLY (its snapshot is at least as new, so every covered write
--     is in the view), log row completed, COMMIT. A write that commits after
--     that snapshot is not visible in it, so its request stays pending and
--     causes exactly one more refresh; a failed refresh rolls back its
--     covered_snapshot, so its requests are pending again. This is the
--     DELETE-the-requests design with the DELETE's visibility rule kept and
--     the per-view copies of each request gone. Rows every enabled dependent
--     view has covered are deleted (SKIP LOCKED) at the end of each refresh.
--   * in_progress is visible at once: mv_refresh_begin inserts the log row in
--     its own short transaction, recording the backend (pid + backend_start).
--     mv_mark_abandoned turns rows of vanished backends into 'abandoned'; the
--     killed refresh's covered_snapshot was rolled back with it, so its
--     requests are still pending and cause the next refresh.
--
-- Identifiers reach dynamic SQL only after the name was found in mv_registry
-- (or mv_dependencies for tables), and then only through format('%I').
BEGIN;

-- ---------------------------------------------------------------------------
-- Registry of refreshable views and what feeds them
-- ---------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS mv_registry (
    view_name         text PRIMARY KEY,
    enabled           boolean NOT NULL DEFAULT true,
    -- Debounce: refresh once the view has been quiet this long...
    debounce_seconds  real NOT NULL DEFAULT 5 CHECK (debounce_seconds >= 0),
    -- ...or when its oldest pending request is this old (no starvation under
    -- a steady stream of writes). Keep well under the health check's 1 minute.
    max_wait_seconds  real NOT NULL DEFAULT 30 CHECK (max_wait_seconds >= debounce_seconds),
    refresh_order     integer NOT NULL DEFAULT 100,
    -- Highest fencing token that has refreshed this view. A refresh holding a
    -- lower token (its Redis lock expired and was taken over) is refused.
    fence             bigint NOT NULL DEFAULT 0,
    description       text NOT NULL DEFAULT '',
    -- Every request whose transaction is visible in this snapshot is in the
    -- view. NULL: none is known to be (never refreshed through mv_refresh_run).
    covered_snapshot  pg_snapshot,
    covered_at        timestamptz
);
COMMENT ON TABLE mv_registry IS
    'Materialized views the refresh engine may refresh; the only source of names that reach dynamic SQL.';

CREATE TABLE IF NOT EXISTS mv_dependencies (
    view_name   text NOT NULL REFERENCES mv_registry (view_name) ON DELETE CASCADE,
    table_name  text NOT NULL,
    PRIMARY KEY (view_name, table_name)
);
COMMENT ON TABLE mv_dependencies IS
    'Base tables whose writes make a view stale.';
CREATE INDEX IF NOT EXISTS idx_mv_dependencies_table ON mv_dependencies (table_name, view_name);

-- ---------------------------------------------------------------------------
-- Requests: insert-only
-- ---------------------------------------------------------------------------
-- Narrow and unindexed on purpose: write statements on base tables insert
-- here, and each index would be one more insert (into a hot right-most page)
-- per write. The table stays small (rows go once every dependent view has
-- covered them), so the per-view aggregates scan it.
-- A row names a base table (written by the request trigger: it is a request
-- for every view depending on that table) or a view (an explicit request:
-- mv_request_refresh, the API's manual path, a re-enabled view).
CREATE TABLE IF NOT EXISTS mv_refresh_requests (
    table_name    text,
    view_name     text,
    xid           xid8 NOT NULL DEFAULT pg_current_xact_id(),
    requested_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    CHECK (table_name IS NOT NULL OR view_name IS NOT NULL)
);
COMMENT ON TABLE mv_refresh_requests IS
    'Insert-only refresh requests, one per (base table or view, writing transaction); pending for a view until its covered_snapshot includes xid.';
-- Rows come and go quickly; vacuum the table often so it stays small.
ALTER TABLE mv_refresh_requests SET (autovacuum_vacuum_scale_factor = 0.0, autovacuum_vacuum_threshold = 5000,
                                     autovacuum_vacuum_insert_scale_factor = 0.0,
                                     autovacuum_vacuum_insert_threshold = 50000);

-- Fencing tokens survive a Redis flush because they live here.
CREATE SEQUENCE IF NOT EXISTS mv_refresh_fence_seq;

-- ---------------------------------------------------------------------------
-- Refresh log
-- ---------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS mv_refresh_log (
    id                    bigserial PRIMARY KEY,
    view_name             text NOT NULL,
    -- Written by mv_refresh_begin, then moved forward by mv_refresh_run to the
    -- moment the registry row lock was obtained, so that the logged intervals
    -- of one view never overlap (they are the real execution).
    refresh_started_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    refresh_completed_at  timestamptz,
    duration_ms           integer,
    status                text NOT NULL DEFAULT 'in_progress'
                          CHECK (status IN ('in_progress', 'completed', 'failed', 'skipped', 'abandoned')),
    requests_cleared      integer,
    rows_in_view          bigint,
    fence                 bigint,
    source                text NOT NULL DEFAULT 'sql' CHECK (source IN ('sweep', 'manual', 'sql')),
    worker                text,
    backend_pid           integer,
    backend_start         timestamptz,
    error                 text
);
COMMENT ON TABLE mv_refresh_log IS
    'One row per refresh attempt: in_progress while it runs, then completed, failed, skipped or abandoned.';
-- The guide: ORDER BY refresh_started_at DESC LIMIT n.
CREATE INDEX IF NOT EXISTS idx_mv_refresh_log_started ON mv_refresh_log (refresh_started_at DESC);
-- Latest refresh per view (mv_refresh_queue, metrics).
CREATE INDEX IF NOT EXISTS idx_mv_refresh_log_view_started ON mv_refresh_log (view_name, refresh_started_at DESC);
-- The guide: AVG(duration_ms) ... WHERE status = 'completed' GROUP BY view_name (index-only),
-- and the dashboard's failures in the last 24 h.
CREATE INDEX IF NOT EXISTS idx_mv_refresh_log_status
    ON mv_refresh_log (status, view_name, refresh_started_at) INCLUDE (duration_ms);
-- Running refreshes are looked up on every queue read; few rows ever match.
CREATE INDEX IF NOT EXISTS idx_mv_refresh_log_in_progress
    ON mv_refresh_log (view_name) WHERE status = 'in_progress';
-- "Has this session started a newer refresh since?" (mv_refresh_backend_alive).
CREATE INDEX IF NOT EXISTS idx_mv_refresh_log_backend ON mv_refresh_log (backend_pid, id);

-- ---------------------------------------------------------------------------
-- Helpers
-- ---------------------------------------------------------------------------

-- Raise unless the name is a registered view. Every function that takes a view
-- name calls this before anything else, in particular before dynamic SQL.
CREATE OR REPLACE FUNCTION mv_check_registered(p_view text) RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF p_view IS NULL OR NOT EXISTS (SELECT 1 FROM mv_registry r WHERE r.view_name = p_view) THEN
        RAISE EXCEPTION 'unknown materialized view %', coalesce(quote_literal(p_view), 'NULL')
            USING ERRCODE = 'undefined_object',
                  HINT = 'Registered views: ' || coalesce((SELECT string_agg(view_name, ', ' ORDER BY view_name)
                                                           FROM mv_registry), '(none)');
    END IF;
END $$;

-- Is the backend that wrote an in_progress log row still refreshing?
-- Dead when its backend (pid + backend_start, so a reused pid does not count)
-- is gone, when that session has since started a newer refresh, or when the
-- session has sat idle (outside any transaction) for 30 s since the row was
-- written: a refresh runs inside a transaction, so an idle session is not
-- refreshing; the grace period covers the moment between mv_refresh_begin's
-- commit and the refresh transaction's first statement.
-- Columns hidden from other roles (state, backend_start read as NULL) are
-- treated as "alive" rather than guessed.
CREATE OR REPLACE FUNCTION mv_refresh_backend_alive(p_log_id bigint, p_pid integer, p_backend_start timestamptz)
RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT EXISTS (
        SELECT 1
        FROM pg_stat_activity a
        WHERE a.pid = p_pid
          AND (a.backend_start IS NULL OR p_backend_start IS NULL OR a.backend_start = p_backend_start)
          AND NOT (a.state = 'idle' AND a.state_change < clock_timestamp() - interval '30 seconds')
    )
    AND NOT EXISTS (
        SELECT 1 FROM mv_refresh_log n
        WHERE n.backend_pid = p_pid AND n.backend_start IS NOT DISTINCT FROM p_backend_start AND n.id > p_log_id
    )
$$;

-- ---------------------------------------------------------------------------
-- Snapshots
-- ---------------------------------------------------------------------------

-- The current statement's snapshot, except that this transaction's own
-- writes count as not yet visible. A refresh running in a transaction that
-- also writes sees those writes, but the same transaction may write again
-- after the refresh under the same transaction id; treating its id as
-- uncovered keeps those later writes pending (one extra refresh at worst).
CREATE OR REPLACE FUNCTION mv_covering_snapshot() RETURNS pg_snapshot
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    snap pg_snapshot := pg_current_snapshot();
    own  xid8 := pg_current_xact_id_if_assigned();
BEGIN
    IF own IS NULL OR NOT pg_visible_in_snapshot(own, snap) THEN
        RETURN snap;
    END IF;
    -- Own id into the in-progress list (and xmin lowered to it if needed:
    -- every id between it and the old xmin had finished, as before).
    RETURN (least(pg_snapshot_xmin(snap), own)::text || ':' || pg_snapshot_xmax(snap)::text || ':'
            || coalesce((SELECT string_agg(x::text, ',' ORDER BY x::text::numeric)
                         FROM (SELECT pg_snapshot_xip(snap) AS x UNION ALL SELECT own) xs), ''))::pg_snapshot;
END $$;

-- Is a request (by transaction id) absorbed into a view with this covered snapshot?
CREATE OR REPLACE FUNCTION mv_request_covered(p_xid xid8, p_covered pg_snapshot) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p_covered IS NOT NULL AND pg_visible_in_snapshot(p_xid, p_covered)
$$;

-- ---------------------------------------------------------------------------
-- Request triggers
-- ---------------------------------------------------------------------------

-- Statement-level AFTER trigger on base tables: one request row for
-- TG_TABLE_NAME (a request for every view depending on it). Within one transaction a table is requested once (a
-- transaction-local setting remembers it), so a transaction of many
-- statements writes one row per table, not one per statement. The setting is
-- transactional: a rolled-back savepoint forgets it together with the row it
-- inserted. The dependent views are looked up when the queue is read, not
-- here: the write path does one narrow insert whatever the number of views.
CREATE OR REPLACE FUNCTION request_mv_refresh() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    done text := coalesce(current_setting('mv_refresh.requested_tables', true), '');
    key  text := ',' || TG_TABLE_NAME || ',';
BEGIN
    IF strpos(done, key) > 0 THEN
        RETURN NULL;
    END IF;
    INSERT INTO mv_refresh_requests (table_name) VALUES (TG_TABLE_NAME);
    PERFORM set_config('mv_refresh.requested_tables', done || key, true);
    RETURN NULL;
END $$;

-- (Re)create the request trigger on one base table. The table must be named in
-- mv_dependencies (the registry of what feeds views) and exist in this schema;
-- phase 3 calls this for its own tables after inserting its dependency rows.
CREATE OR REPLACE FUNCTION mv_install_request_trigger(p_table text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM mv_dependencies d WHERE d.table_name = p_table) THEN
        RAISE EXCEPTION 'table % is not a dependency of any registered view', quote_literal(p_table)
            USING ERRCODE = 'undefined_object';
    END IF;
    IF to_regclass(format('public.%I', p_table)) IS NULL THEN
        RAISE EXCEPTION 'table % does not exist', quote_literal(p_table) USING ERRCODE = 'undefined_table';
    END IF;
    -- CREATE OR REPLACE (PG >= 14): re-running is quiet and keeps one trigger per table.
    EXECUTE format('CREATE OR REPLACE TRIGGER trg_mv_request_refresh
                        AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON public.%I
                        FOR EACH STATEMENT EXECUTE FUNCTION request_mv_refresh()', p_table);
END $$;

-- Install the request trigger on every table named in mv_dependencies; returns
-- how many tables got one. Idempotent.
CREATE OR REPLACE FUNCTION mv_install_request_triggers() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    t text;
    n integer := 0;
BEGIN
    FOR t IN SELECT DISTINCT d.table_name FROM mv_dependencies d ORDER BY 1 LOOP
        PERFORM mv_install_request_trigger(t);
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;

-- Ask for a refresh of one view without writing to its tables (e.g. after
-- changing its definition). An insert like any other request: it never waits
-- for a running refresh.
CREATE OR REPLACE FUNCTION mv_request_refresh(p_view text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM mv_check_registered(p_view);
    INSERT INTO mv_refresh_requests (view_name) VALUES (p_view);
END $$;

-- Enable or disable a view. Requests are pruned without waiting for disabled
-- views, so a re-enabled view gets a request of its own.
CREATE OR REPLACE FUNCTION mv_set_enabled(p_view text, p_enabled boolean) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    was boolean;
BEGIN
    PERFORM mv_check_registered(p_view);
    SELECT r.enabled INTO was FROM mv_registry r WHERE r.view_name = p_view;
    UPDATE mv_registry r SET enabled = p_enabled WHERE r.view_name = p_view;
    IF p_enabled AND NOT was THEN
        INSERT INTO mv_refresh_requests (view_name) VALUES (p_view);
    END IF;
END $$;

-- Each request row once per view it is for: table requests fan out to the
-- views depending on the table, view requests are for that view.
CREATE OR REPLACE VIEW mv_request_targets AS
SELECT d.view_name, q.xid, q.requested_at
FROM mv_refresh_requests q
JOIN mv_dependencies d ON d.table_name = q.table_name
UNION ALL
SELECT q.view_name, q.xid, q.requested_at
FROM mv_refresh_requests q
WHERE q.view_name IS NOT NULL;

-- Pending requests per enabled view.
CREATE OR REPLACE VIEW mv_pending_requests AS
SELECT t.view_name,
       count(*) AS pending_requests,
       min(t.requested_at) AS first_requested_at,
       max(t.requested_at) AS last_requested_at
FROM mv_request_targets t
JOIN mv_registry r ON r.view_name = t.view_name
WHERE r.enabled AND NOT mv_request_covered(t.xid, r.covered_snapshot)
GROUP BY t.view_name;

-- Delete request rows that every enabled view they are for has covered.
-- Rows another transaction is deleting are skipped rather than waited for, so
-- refreshes of different views never wait on each other here.
CREATE OR REPLACE FUNCTION mv_prune_requests() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    DELETE FROM mv_refresh_requests q
    WHERE q.ctid = ANY (ARRAY(
        SELECT c.ctid
        FROM mv_refresh_requests c
        WHERE NOT EXISTS (
            SELECT 1
            FROM mv_registry r
            WHERE r.enabled
              AND (r.view_name = c.view_name
                   OR EXISTS (SELECT 1 FROM mv_dependencies d
                              WHERE d.table_name = c.table_name AND d.view_name = r.view_name))
              AND NOT mv_request_covered(c.xid, r.covered_snapshot))
        FOR UPDATE SKIP LOCKED));
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;

-- ---------------------------------------------------------------------------
-- The refresh protocol
-- ---------------------------------------------------------------------------

-- Step 1, in its own short transaction: the in_progress log row, visible at once.
-- The refresh must then run on the same connection (its backend identifies it).
CREATE OR REPLACE FUNCTION mv_refresh_begin(p_view text, p_source text DEFAULT 'sql', p_worker text DEFAULT NULL)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    log_id bigint;
BEGIN
    PERFORM mv_check_registered(p_view);
    INSERT INTO mv_refresh_log (view_name, status, source, worker, backend_pid, backend_start)
    VALUES (p_view, 'in_progress', coalesce(p_source, 'sql'), p_worker, pg_backend_pid(),
            (SELECT a.backend_start FROM pg_stat_activity a WHERE a.pid = pg_backend_pid()))
    RETURNING id INTO log_id;
    RETURN log_id;
END $$;

-- Step 2, the body of the refresh transaction; the caller commits (or rolls
-- back and calls mv_refresh_fail). p_fence NULL takes a new token from
-- mv_refresh_fence_seq (the SQL path, which has no Redis lock); p_log_id NULL
-- inserts a log row inside this transaction (source 'sql').
-- Returns one row: status completed | skipped, and what was done.
-- requests_cleared counts the (table, transaction) requests this refresh covered.
CREATE OR REPLACE FUNCTION mv_refresh_run(p_view text, p_log_id bigint DEFAULT NULL, p_fence bigint DEFAULT NULL,
                                          p_force boolean DEFAULT false)
RETURNS TABLE (status text, requests_cleared integer, duration_ms integer, rows_in_view bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_fence     bigint;
    v_log_id    bigint := p_log_id;
    v_started   timestamptz;
    v_old       pg_snapshot;
    v_snap      pg_snapshot;
    v_cleared   integer;
    v_own       integer;
    v_rows      bigint;
    v_ms        integer;
    v_populated boolean;
BEGIN
    PERFORM mv_check_registered(p_view);
    IF p_fence IS NULL THEN
        -- Without a caller's token: wait for the registry row lock first and
        -- only then take a token, so a refresh that queued behind another one
        -- is not refused as superseded by it.
        PERFORM 1 FROM mv_registry r WHERE r.view_name = p_view FOR UPDATE;
        v_fence := nextval('mv_refresh_fence_seq');
    ELSE
        v_fence := p_fence;
    END IF;
    IF v_log_id IS NULL THEN
        INSERT INTO mv_refresh_log (view_name, status, source, backend_pid, backend_start)
        VALUES (p_view, 'in_progress', 'sql', pg_backend_pid(),
                (SELECT a.backend_start FROM pg_stat_activity a WHERE a.pid = pg_backend_pid()))
        RETURNING id INTO v_log_id;
    ELSIF NOT EXISTS (SELECT 1 FROM mv_refresh_log l WHERE l.id = v_log_id AND l.view_name = p_view) THEN
        RAISE EXCEPTION 'log row % does not belong to view %', v_log_id, quote_literal(p_view)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- Fence check. The UPDATE also takes the registry row lock until commit,
    -- which is what keeps two refresh transactions of one view from
    -- overlapping (a second one waits here, then re-checks the fence against
    -- the committed value).
    UPDATE mv_registry r SET fence = v_fence WHERE r.view_name = p_view AND r.fence < v_fence;
    IF NOT FOUND THEN
        v_started := clock_timestamp();
        UPDATE mv_refresh_log l
        SET status = 'skipped', refresh_started_at = v_started, refresh_completed_at = v_started,
            duration_ms = 0, requests_cleared = 0, fence = v_fence,
            error = 'superseded: fence ' || v_fence || ' is not above the registry''s '
                    || (SELECT r.fence FROM mv_registry r WHERE r.view_name = p_view)
        WHERE l.id = v_log_id;
        RETURN QUERY SELECT 'skipped'::text, 0, 0, NULL::bigint;
        RETURN;
    END IF;
    -- The lock is ours from here: this is when the refresh really starts.
    v_started := clock_timestamp();

    SELECT r.covered_snapshot INTO v_old FROM mv_registry r WHERE r.view_name = p_view;
    -- Taken in its own statement: the REFRESH below runs under a newer
    -- snapshot, so every write visible here is in the refreshed view.
    v_snap := mv_covering_snapshot();
    SELECT count(*) FILTER (WHERE mv_request_covered(t.xid, v_snap)),
           count(*) FILTER (WHERE t.xid = pg_current_xact_id_if_assigned())
    INTO v_cleared, v_own
    FROM mv_request_targets t
    WHERE t.view_name = p_view AND NOT mv_request_covered(t.xid, v_old);

    -- Nothing pending: nothing to do (another worker got there first).
    -- (A request of this very transaction still gets its refresh: the
    -- REFRESH sees the transaction's own writes.)
    IF v_cleared = 0 AND v_own = 0 AND NOT p_force THEN
        UPDATE mv_refresh_log l
        SET status = 'skipped', refresh_started_at = v_started, refresh_completed_at = clock_timestamp(),
            duration_ms = 0, requests_cleared = 0, fence = v_fence, error = NULL
        WHERE l.id = v_log_id;
        RETURN QUERY SELECT 'skipped'::text, 0, 0, NULL::bigint;
        RETURN;
    END IF;

    UPDATE mv_registry r
    SET covered_snapshot = v_snap, covered_at = clock_timestamp()
    WHERE r.view_name = p_view;

    -- CONCURRENTLY's diff is a full join of old and new contents: give it
    -- memory to hash in RAM instead of spilling. JIT compiling these big
    -- queries costs ~0.3 s per refresh and bought nothing when measured.
    -- Abort the refresh promptly when the client that runs it has gone away
    -- (a killed worker) instead of finishing work nobody will commit.
    PERFORM set_config('work_mem', '256MB', true);
    PERFORM set_config('jit', 'off', true);
    -- CONCURRENTLY runs ANALYZE on its copy of the new contents before the
    -- diff; the default sample (30,000 rows) read most of the feed's 65 MB
    -- copy: ~170 ms of each feed refresh, ~20 ms with 3,000 rows. The diff's
    -- plan only needs the row count, which the smaller sample estimates as well.
    PERFORM set_config('default_statistics_target', '10', true);
    -- Let the view's query (the fill of that copy) run in parallel: at the
    -- default tuple cost the planner keeps a 490k-row fill serial; with it the
    -- feed refreshed in 1.25-1.7 s against 1.4-1.95 s (bench/read_models.py,
    -- 2 CPUs). The diff reads a temporary table and stays serial either way.
    PERFORM set_config('parallel_tuple_cost', '0.01', true);
    PERFORM set_config('client_connection_check_interval', '2s', true);

    SELECT c.relispopulated INTO v_populated
    FROM pg_class c WHERE c.oid = to_regclass(format('public.%I', p_view)) AND c.relkind = 'm';
    IF v_populated IS NULL THEN
        RAISE EXCEPTION 'registered view % is not a materialized view in schema public', quote_literal(p_view)
            USING ERRCODE = 'wrong_object_type';
    END IF;
    IF v_populated THEN
        EXECUTE format('REFRESH MATERIALIZED VIEW CONCURRENTLY public.%I', p_view);
    ELSE
        -- CONCURRENTLY refuses a view that was never populated (WITH NO DATA).
        EXECUTE format('REFRESH MATERIALIZED VIEW public.%I', p_view);
    END IF;

    v_ms := (extract(epoch FROM clock_timestamp() - v_started) * 1000)::integer;
    -- Exact (pg_class.reltuples is not updated by a refresh); a scan of the
    -- view costs a few percent of the refresh itself.
    EXECUTE format('SELECT count(*) FROM public.%I', p_view) INTO v_rows;

    UPDATE mv_refresh_log l
    SET status = 'completed', refresh_started_at = v_started, refresh_completed_at = clock_timestamp(),
        duration_ms = v_ms, requests_cleared = v_cleared, rows_in_view = v_rows, fence = v_fence, error = NULL
    WHERE l.id = v_log_id;

    PERFORM mv_prune_requests();
    RETURN QUERY SELECT 'completed'::text, v_cleared, v_ms, v_rows;
END $$;

-- Step 2b, in its own transaction after the refresh transaction rolled back.
CREATE OR REPLACE FUNCTION mv_refresh_fail(p_log_id bigint, p_error text) RETURNS void
LANGUAGE sql AS $$
    UPDATE mv_refresh_log
    SET status = 'failed',
        refresh_completed_at = clock_timestamp(),
        duration_ms = (extract(epoch FROM clock_timestamp() - refresh_started_at) * 1000)::integer,
        error = left(coalesce(p_error, 'unknown error'), 2000)
    WHERE id = p_log_id AND status IN ('in_progress', 'abandoned')
$$;

-- Sweep: in_progress rows whose refresh is certainly not running any more
-- become 'abandoned'. Returns how many.
CREATE OR REPLACE FUNCTION mv_mark_abandoned() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    UPDATE mv_refresh_log l
    SET status = 'abandoned',
        refresh_completed_at = clock_timestamp(),
        duration_ms = (extract(epoch FROM clock_timestamp() - l.refresh_started_at) * 1000)::integer,
        error = 'refresh backend ' || coalesce(l.backend_pid::text, '?') || ' is gone or no longer refreshing'
    WHERE l.status = 'in_progress'
      AND NOT mv_refresh_backend_alive(l.id, l.backend_pid, l.backend_start);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;

-- ---------------------------------------------------------------------------
-- The queue, what is due
-- ---------------------------------------------------------------------------

-- One row per registered view. Status, in this order: in_progress (a live
-- refresh is running), pending (requests are waiting), failed (the last
-- finished refresh failed), completed. refresh_requested_at is the oldest
-- pending request (the guide's health check: pending for over a minute is stale).
CREATE OR REPLACE VIEW mv_refresh_queue AS
SELECT r.view_name,
       CASE WHEN running.id IS NOT NULL THEN 'in_progress'
            WHEN coalesce(p.pending_requests, 0) > 0 THEN 'pending'
            WHEN last.status = 'failed' THEN 'failed'
            ELSE 'completed'
       END AS status,
       p.first_requested_at AS refresh_requested_at,
       p.last_requested_at,
       coalesce(p.pending_requests, 0) AS pending_requests,
       last.refresh_started_at AS last_refresh_started_at,
       last.refresh_completed_at AS last_refresh_completed_at,
       last.status AS last_status,
       last.error AS last_error,
       r.debounce_seconds,
       r.max_wait_seconds,
       r.enabled,
       running.id AS running_log_id,
       r.covered_at
FROM mv_registry r
LEFT JOIN mv_pending_requests p ON p.view_name = r.view_name
LEFT JOIN LATERAL (
    SELECT l.refresh_started_at, l.refresh_completed_at, l.status, l.error
    FROM mv_refresh_log l
    WHERE l.view_name = r.view_name AND l.status IN ('completed', 'failed', 'abandoned')
    ORDER BY l.refresh_started_at DESC
    LIMIT 1
) last ON true
LEFT JOIN LATERAL (
    SELECT l.id
    FROM mv_refresh_log l
    WHERE l.view_name = r.view_name AND l.status = 'in_progress'
      AND mv_refresh_backend_alive(l.id, l.backend_pid, l.backend_start)
    ORDER BY l.id DESC
    LIMIT 1
) running ON true;
COMMENT ON VIEW mv_refresh_queue IS
    'Per registered view: in_progress | pending | failed | completed, oldest (refresh_requested_at) and newest pending request.';

-- What the sweep enqueues. Due when the view has been quiet for its debounce
-- window, or its oldest request has waited max_wait, and no live refresh of it
-- is running (requests arriving during a refresh wait for it to end).
CREATE OR REPLACE FUNCTION mv_due_views()
RETURNS TABLE (view_name text, pending_requests bigint, first_requested_at timestamptz,
               last_requested_at timestamptz, due boolean, reason text)
LANGUAGE sql STABLE AS $$
    SELECT q.view_name,
           q.pending_requests,
           q.refresh_requested_at,
           q.last_requested_at,
           (q.running_log_id IS NULL AND (w.quiet OR w.waited)) AS due,
           CASE WHEN q.running_log_id IS NOT NULL THEN 'running'
                WHEN w.waited THEN 'max_wait'
                WHEN w.quiet THEN 'quiet'
                ELSE 'debouncing'
           END AS reason
    FROM mv_refresh_queue q
    JOIN mv_registry r ON r.view_name = q.view_name
    CROSS JOIN LATERAL (
        SELECT clock_timestamp() - q.last_requested_at >= make_interval(secs => q.debounce_seconds) AS quiet,
               clock_timestamp() - q.refresh_requested_at >= make_interval(secs => q.max_wait_seconds) AS waited
    ) w
    WHERE q.enabled AND q.pending_requests > 0
    ORDER BY r.refresh_order, q.view_name
$$;

-- ---------------------------------------------------------------------------
-- The SQL fallback (guide, Step 2.3): refresh every enabled view with pending
-- requests now, ignoring debounce. Each view runs in a subtransaction, so a
-- failing view is logged 'failed' with its error and the others go on. All of
-- it commits with the caller's transaction (no in_progress is visible
-- meanwhile: that needs the engine's separate begin transaction).
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION process_mv_refresh_queue()
RETURNS TABLE (view_name text, status text, duration_ms integer, requests_cleared integer, error text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v      record;
    res    record;
    log_id bigint;
    t0     timestamptz;
BEGIN
    FOR v IN
        SELECT q.view_name
        FROM mv_refresh_queue q
        JOIN mv_registry r ON r.view_name = q.view_name
        WHERE q.enabled AND q.pending_requests > 0
        ORDER BY r.refresh_order, q.view_name
    LOOP
        log_id := mv_refresh_begin(v.view_name, 'sql', 'process_mv_refresh_queue');
        t0 := clock_timestamp();
        BEGIN
            SELECT * INTO res FROM mv_refresh_run(v.view_name, log_id, NULL, false);
            RETURN QUERY SELECT v.view_name, res.status, res.duration_ms, res.requests_cleared, NULL::text;
        EXCEPTION WHEN OTHERS THEN
            -- The subtransaction (covered snapshot, REFRESH) rolled back: the requests are pending again.
            PERFORM mv_refresh_fail(log_id, SQLERRM);
            RETURN QUERY SELECT v.view_name, 'failed'::text,
                                (extract(epoch FROM clock_timestamp() - t0) * 1000)::integer, 0, SQLERRM;
        END;
    END LOOP;
END $$;

-- Keep the log bounded; the sweep may call this now and then.
CREATE OR REPLACE FUNCTION mv_prune_refresh_log(p_keep interval DEFAULT interval '7 days') RETURNS bigint
LANGUAGE sql AS $$
    WITH gone AS (
        DELETE FROM mv_refresh_log
        WHERE refresh_started_at < clock_timestamp() - p_keep AND status <> 'in_progress'
        RETURNING 1
    )
    SELECT count(*) FROM gone
$$;

COMMIT;
