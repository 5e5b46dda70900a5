-- Per-project counters for the read models: project_stats, kept exact by row
-- triggers with the same hot-row scheme as Phase 1 (0010).
--   psql -v ON_ERROR_STOP=1 -f schema/migrations/0012_project_stats.sql
--
-- Why: every REFRESH ... CONCURRENTLY of mv_feed_projects, the leaderboards and
-- mv_project_details recomputes its whole query. Counting 5M upvotes and 2M
-- comments per refresh was 1.5 s of the feed's 4.3 s at bench scale (an
-- index-only scan of each foreign-key index plus a GroupAggregate); reading
-- 500k counter rows instead costs a tenth of that. The views read
-- project_stats_live (main row + pending deltas), so a view is exactly as
-- fresh as before: a counter change commits with the write that causes it.
--
-- Counts are of the rows, whatever the project's status:
--   upvote_count   = count(*) FROM project_upvotes WHERE project_id = p
--   comment_count  = count(*) FROM project_comments WHERE project_id = p AND NOT is_deleted
-- (the views drop deleted projects themselves), so no trigger here needs the
-- project-status lock that Phase 1's owner counters take.
--
-- Hot rows: a viral project's upvotes would all update its one counter row and
-- wait for each other until commit. As in 0010, project_stats_add() updates the
-- row in place when pg_try_advisory_xact_lock(731004, uuid_hash(project))
-- succeeds and otherwise inserts a delta row (inserts never wait);
-- fold_project_stats_deltas(), which 0010's fold_denorm_deltas() calls (the
-- refresh sweep calls that every few seconds), moves committed deltas into
-- the main rows.
-- Lock classes: 731004 (a project_stats row), 731021 (one fold at a time).
--
-- Triggers: trg_project_stats_projects, trg_project_stats_upvotes,
-- trg_project_stats_comments (named apart from the guide's nine Phase 1
-- triggers, which its Step 1.3 counts by prefix).
-- Requirements as in 0010: TRUNCATE or disabled triggers (bulk loads) must be
-- followed by SELECT backfill_project_stats(); the seed and the nightly
-- reconciliation do that or check it.
BEGIN;

CREATE TABLE IF NOT EXISTS project_stats (
    project_id      uuid PRIMARY KEY REFERENCES projects (id) ON DELETE CASCADE,
    upvote_count    integer NOT NULL DEFAULT 0,
    comment_count   integer NOT NULL DEFAULT 0
) WITH (fillfactor = 50);  -- counter updates stay on their page (HOT): no index touched
COMMENT ON TABLE project_stats IS
    'Per-project upvote and live-comment counts, exact with project_stats_deltas (read project_stats_live). '
    'Kept by trg_project_stats_* triggers; read by the feed, leaderboard and details views.';

CREATE TABLE IF NOT EXISTS project_stats_deltas (
    project_id      uuid NOT NULL,
    upvote_count    integer NOT NULL DEFAULT 0,
    comment_count   integer NOT NULL DEFAULT 0,
    changed_at      timestamptz NOT NULL DEFAULT now()
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 2000,
        autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 20000);
CREATE INDEX IF NOT EXISTS project_stats_deltas_project ON project_stats_deltas (project_id);
COMMENT ON TABLE project_stats_deltas IS
    'Pending signed changes to project_stats, written when the main row was busy; folded by fold_project_stats_deltas().';

-- Truth, for a batch of projects (rebuild, reconciliation) and for all (backfill).
CREATE OR REPLACE FUNCTION project_stats_truth(p_project_ids uuid[])
RETURNS TABLE (project_id uuid, upvote_count integer, comment_count integer)
LANGUAGE sql STABLE AS $$
    SELECT p.id,
           (SELECT count(*) FROM project_upvotes v WHERE v.project_id = p.id)::integer,
           (SELECT count(*) FROM project_comments c WHERE c.project_id = p.id AND NOT c.is_deleted)::integer
    FROM projects p
    WHERE p.id = ANY (p_project_ids)
$$;

CREATE OR REPLACE FUNCTION project_stats_truth_all()
RETURNS TABLE (project_id uuid, upvote_count integer, comment_count integer)
LANGUAGE sql STABLE AS $$
    SELECT p.id, coalesce(v.n, 0)::integer, coalesce(c.n, 0)::integer
    FROM projects p
    LEFT JOIN (SELECT project_id, count(*) AS n FROM project_upvotes GROUP BY project_id ORDER BY project_id) v
           ON v.project_id = p.id
    LEFT JOIN (SELECT project_id, count(*) AS n FROM project_comments WHERE NOT is_deleted
               GROUP BY project_id ORDER BY project_id) c
           ON c.project_id = p.id
$$;

-- Rebuild some projects from the truth, exact under concurrent writes (the
-- protocol of 0010's rebuild_* functions: take the rows' locks in lock-key
-- order, then drop their visible deltas and upsert the truth in one statement).
CREATE OR REPLACE FUNCTION rebuild_project_stats(p_project_ids uuid[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    PERFORM pg_advisory_xact_lock(731004, k.h)
    FROM (SELECT DISTINCT uuid_hash(x) AS h FROM unnest(p_project_ids) x WHERE x IS NOT NULL ORDER BY 1) k;
    WITH gone AS (
        DELETE FROM project_stats_deltas WHERE project_id = ANY (p_project_ids)
    )
    INSERT INTO project_stats AS s (project_id, upvote_count, comment_count)
    SELECT t.project_id, t.upvote_count, t.comment_count
    FROM project_stats_truth(p_project_ids) t
    ON CONFLICT (project_id) DO UPDATE
        SET upvote_count = EXCLUDED.upvote_count,
            comment_count = EXCLUDED.comment_count;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
COMMENT ON FUNCTION rebuild_project_stats(uuid[]) IS
    'Recompute these projects'' counters from the base tables, exact under concurrent writes.';

-- The whole table from the truth (after a bulk load with triggers off, or a
-- TRUNCATE). EXCLUSIVE locks: reads go on, counter writers wait until commit,
-- so every write is either counted by the recompute or applied on top of it.
-- Rows already right are not rewritten. Returns the rows the table holds.
CREATE OR REPLACE FUNCTION backfill_project_stats() RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    LOCK TABLE project_stats, project_stats_deltas IN EXCLUSIVE MODE;
    PERFORM set_config('work_mem', '256MB', true);
    DELETE FROM project_stats_deltas;
    INSERT INTO project_stats AS s (project_id, upvote_count, comment_count)
    SELECT t.project_id, t.upvote_count, t.comment_count FROM project_stats_truth_all() t
    ON CONFLICT (project_id) DO UPDATE
        SET upvote_count = EXCLUDED.upvote_count, comment_count = EXCLUDED.comment_count
        WHERE (s.upvote_count, s.comment_count) IS DISTINCT FROM (EXCLUDED.upvote_count, EXCLUDED.comment_count);
    SELECT count(*) INTO n FROM project_stats;
    RETURN n;
END
$$;

CREATE OR REPLACE FUNCTION project_stats_add(p_project_id uuid, p_upvotes integer, p_comments integer)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF p_project_id IS NULL OR (p_upvotes = 0 AND p_comments = 0) THEN
        RETURN;
    END IF;
    IF pg_try_advisory_xact_lock(731004, uuid_hash(p_project_id)) THEN
        UPDATE project_stats
           SET upvote_count = upvote_count + p_upvotes,
               comment_count = comment_count + p_comments
         WHERE project_id = p_project_id;
        IF NOT FOUND THEN
            -- No row (data that predates the triggers, or the project is being
            -- deleted): the truth, which includes this transaction's change.
            PERFORM rebuild_project_stats(ARRAY[p_project_id]);
        END IF;
    ELSE
        INSERT INTO project_stats_deltas (project_id, upvote_count, comment_count)
        VALUES (p_project_id, p_upvotes, p_comments);
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION project_stats_projects_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- A new project has no upvotes or comments yet (they would need it committed).
    INSERT INTO project_stats (project_id) VALUES (NEW.id) ON CONFLICT (project_id) DO NOTHING;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION project_stats_upvotes_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.project_id = OLD.project_id THEN
        RETURN NULL;
    END IF;
    IF TG_OP <> 'INSERT' THEN
        PERFORM project_stats_add(OLD.project_id, -1, 0);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        PERFORM project_stats_add(NEW.project_id, 1, 0);
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION project_stats_comments_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.project_id = OLD.project_id AND NEW.is_deleted = OLD.is_deleted THEN
        RETURN NULL;
    END IF;
    IF TG_OP <> 'INSERT' AND NOT OLD.is_deleted THEN
        PERFORM project_stats_add(OLD.project_id, 0, -1);
    END IF;
    IF TG_OP <> 'DELETE' AND NOT NEW.is_deleted THEN
        PERFORM project_stats_add(NEW.project_id, 0, 1);
    END IF;
    RETURN NULL;
END
$$;

-- Triggers first, backfill second, one transaction: CREATE TRIGGER's lock keeps
-- writers out until COMMIT, so none is missed between the two.
CREATE OR REPLACE TRIGGER trg_project_stats_projects
    AFTER INSERT ON projects
    FOR EACH ROW EXECUTE FUNCTION project_stats_projects_trigger();

CREATE OR REPLACE TRIGGER trg_project_stats_upvotes
    AFTER INSERT OR DELETE OR UPDATE OF project_id ON project_upvotes
    FOR EACH ROW EXECUTE FUNCTION project_stats_upvotes_trigger();

CREATE OR REPLACE TRIGGER trg_project_stats_comments
    AFTER INSERT OR DELETE OR UPDATE OF project_id, is_deleted ON project_comments
    FOR EACH ROW EXECUTE FUNCTION project_stats_comments_trigger();

-- Exact reads: main row + pending deltas, one snapshot (see 0010's *_live views).
CREATE OR REPLACE VIEW project_stats_live AS
SELECT s.project_id,
       s.upvote_count + coalesce(d.upvote_count, 0) AS upvote_count,
       s.comment_count + coalesce(d.comment_count, 0) AS comment_count,
       coalesce(d.pending_deltas, 0) AS pending_deltas
FROM project_stats s
LEFT JOIN (SELECT project_id,
                  sum(upvote_count)::integer AS upvote_count,
                  sum(comment_count)::integer AS comment_count,
                  count(*)::integer AS pending_deltas
           FROM project_stats_deltas GROUP BY project_id) d ON d.project_id = s.project_id;
COMMENT ON VIEW project_stats_live IS
    'Exact project_stats: the main row plus its pending deltas. The read models read this, not the table.';

-- 0010's backlog view, with this table's row added (monitoring reads it).
CREATE OR REPLACE VIEW denorm_delta_backlog AS
SELECT 'user_dashboard_stats'::text AS table_name, count(*)::bigint AS pending_deltas,
       count(DISTINCT user_id)::bigint AS keys, min(changed_at) AS oldest_delta_at
FROM user_dashboard_stats_deltas
UNION ALL
SELECT 'message_conversations_denorm', count(*), count(DISTINCT conversation_id), min(changed_at)
FROM message_conversations_denorm_deltas
UNION ALL
SELECT 'intro_request_stats', count(*), count(DISTINCT user_id), min(changed_at)
FROM intro_request_stats_deltas
UNION ALL
SELECT 'project_stats', count(*), count(DISTINCT project_id), min(changed_at)
FROM project_stats_deltas;

-- One fold at a time; up to 5000 projects per call, each under its row lock,
-- deltas deleted and added in one statement (readers of project_stats_live see
-- the same values before and after). Deltas of a project without a main row
-- are rebuilt (nothing is written if the project is gone). Returns the number
-- of delta rows folded.
CREATE OR REPLACE FUNCTION fold_project_stats_deltas() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_n integer := 0;
    v_keys uuid[];
    v_missing uuid[];
    v_lock_timeout text := current_setting('lock_timeout');
BEGIN
    IF NOT pg_try_advisory_xact_lock(731021, 0) THEN
        RETURN 0;
    END IF;
    PERFORM set_config('lock_timeout', '200ms', true);
    v_keys := denorm_lock_keys(731004, ARRAY(SELECT DISTINCT project_id FROM project_stats_deltas LIMIT 5000));
    IF cardinality(v_keys) > 0 THEN
        WITH d AS (
            DELETE FROM project_stats_deltas WHERE project_id = ANY (v_keys) RETURNING *
        ), s AS (
            SELECT project_id, sum(upvote_count)::integer AS upvote_count,
                   sum(comment_count)::integer AS comment_count, count(*)::integer AS n
            FROM d GROUP BY project_id
        ), u AS (
            UPDATE project_stats m
               SET upvote_count = m.upvote_count + s.upvote_count,
                   comment_count = m.comment_count + s.comment_count
              FROM s WHERE m.project_id = s.project_id
            RETURNING m.project_id
        )
        SELECT coalesce(sum(s.n), 0)::integer, array_agg(s.project_id) FILTER (WHERE u.project_id IS NULL)
          INTO v_n, v_missing
          FROM s LEFT JOIN u ON u.project_id = s.project_id;
        IF cardinality(v_missing) > 0 THEN
            PERFORM rebuild_project_stats(v_missing);
        END IF;
    END IF;
    PERFORM set_config('lock_timeout', v_lock_timeout, true);
    RETURN v_n;
END
$$;
COMMENT ON FUNCTION fold_project_stats_deltas() IS
    'Move committed deltas into project_stats (safe beside writers and other folds). Returns the delta rows folded.';

DO $$
DECLARE
    n bigint := backfill_project_stats();
BEGIN
    RAISE NOTICE 'Backfilled % rows in project_stats', n;
END
$$;

ANALYZE project_stats;

COMMIT;
