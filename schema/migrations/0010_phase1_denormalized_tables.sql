-- Phase 1: real-time denormalized tables kept exact by row triggers.
--   psql -v ON_ERROR_STOP=1 -f schema/migrations/0010_phase1_denormalized_tables.sql
--
-- Three tables, each exact in the writing transaction:
--   user_dashboard_stats          one row per user: projects, upvotes/comments received, chains joined
--   message_conversations_denorm  one row per conversation: counts, unread per participant, last message
--   intro_request_stats           one row per user: intro requests sent (by status) and received (as investor)
-- and exactly 9 triggers named trg_dashboard_* / trg_conversation_* / trg_intro_*.
--
-- Hot rows and how they are avoided
-- ---------------------------------
-- A counter row that every writer updates (a popular builder, a busy
-- conversation) serializes those writers: the row lock is held until commit,
-- through the WAL flush. So every counter change goes through one of three
-- "add" functions (dashboard_stats_add, conversation_stats_add,
-- intro_stats_add) which do:
--   * pg_try_advisory_xact_lock(<table class>, uuid_hash(key)) succeeds (the
--     normal, uncontended case): UPDATE the main row in place. Small rows,
--     fillfactor 50 and no index on any counter column make it a HOT update.
--     The main table is then exact at once (the guide's Step 1.4 reads it).
--   * the lock is taken (another transaction is updating that row right now):
--     INSERT a delta row into <table>_deltas instead. Inserts never wait.
-- fold_denorm_deltas() (called by the refresh sweep every few seconds) moves
-- committed deltas into the main rows. Exact reads are therefore
--     main row + its pending deltas
-- which the *_live views compute (user_dashboard_stats_live,
-- message_conversations_denorm_live, intro_request_stats_live,
-- user_conversations_live). Because a change, its base-table write and its
-- delta commit together, one SELECT over a *_live view sees exactly the base
-- tables of its own snapshot. The API and the reconciliation read *_live; the
-- main tables alone are exact whenever no deltas are pending (always when
-- writes are not contended; see denorm_delta_backlog).
--
-- Lock classes (two-int advisory locks, xact scope; any value works as long as
-- nothing else in the database uses these classes):
--   731001/731002/731003  main row of user_dashboard_stats / message_conversations_denorm /
--                         intro_request_stats: held by whoever updates that row in place
--   731010                a project's status (is_deleted, owner): shared by writers of its
--                         upvotes and comments, exclusive while the project changes status
--   731011                an investor's owner: shared by intro request writers, exclusive
--                         while investors.user_id changes
--   731020                one fold at a time
-- A uuid_hash collision only makes two keys share a lock (a few more deltas),
-- never a wrong count.
--
-- Rare paths (a project hard delete, the current last message of a
-- conversation deleted, an investor profile deleted or moved, a conversation's
-- participants changed) recompute the affected keys from the base tables with
-- rebuild_<table>(keys), which takes the keys' row locks (blocking, in a fixed
-- order), drops their visible deltas and writes the truth in one statement.
--
-- Requirements and limits (documented, not enforced):
--   * writers run at READ COMMITTED (Postgres' default): the triggers re-read
--     a project's status after taking its lock, which a REPEATABLE READ
--     snapshot cannot do. A REPEATABLE READ write racing a project soft delete
--     can leave a counter off by one until reconciliation repairs it.
--   * TRUNCATE of a base table bypasses row triggers: run the backfill after it.
--   * Disabling these triggers (bulk loads) must be followed by the backfill.
BEGIN;

-- ---------------------------------------------------------------------------
-- Tables
-- ---------------------------------------------------------------------------

-- fillfactor 50: every counter update can stay on its page (HOT), so it
-- touches no index; the only index is the primary key, on a column never updated.
CREATE TABLE IF NOT EXISTS user_dashboard_stats (
    user_id                 uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    project_count           integer NOT NULL DEFAULT 0,
    active_projects         integer NOT NULL DEFAULT 0,
    total_upvotes_received  integer NOT NULL DEFAULT 0,
    total_comments_received integer NOT NULL DEFAULT 0,
    chains_joined           integer NOT NULL DEFAULT 0,
    last_updated_at         timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 50);

COMMENT ON TABLE user_dashboard_stats IS
    'Phase 1: one row per user (created by trg_dashboard_users), kept by triggers. Exact values are '
    'user_dashboard_stats_live (this row + pending user_dashboard_stats_deltas). Counts ignore '
    'users.is_deleted: a soft-deleted user''s upvotes and comments still count until the rows are deleted.';
COMMENT ON COLUMN user_dashboard_stats.project_count IS
    'Projects whose user_id is this user, soft-deleted ones included (rows in projects).';
COMMENT ON COLUMN user_dashboard_stats.active_projects IS
    'Projects of this user with is_deleted = false.';
COMMENT ON COLUMN user_dashboard_stats.total_upvotes_received IS
    'project_upvotes rows on this user''s projects that are not soft-deleted (self-upvotes included).';
COMMENT ON COLUMN user_dashboard_stats.total_comments_received IS
    'project_comments with is_deleted = false on this user''s projects that are not soft-deleted '
    '(the user''s own comments included).';
COMMENT ON COLUMN user_dashboard_stats.chains_joined IS
    'chain_members rows of this user (any role; a soft-deleted chain still counts until the membership row is deleted).';
COMMENT ON COLUMN user_dashboard_stats.last_updated_at IS
    'Start time of the last transaction that changed this row in place (not a counter; reconciliation ignores it).';

CREATE TABLE IF NOT EXISTS message_conversations_denorm (
    conversation_id         uuid PRIMARY KEY REFERENCES conversations (id) ON DELETE CASCADE,
    user1_id                uuid NOT NULL,
    user2_id                uuid NOT NULL,
    is_deleted              boolean NOT NULL DEFAULT false,
    message_count           integer NOT NULL DEFAULT 0,
    user1_unread_count      integer NOT NULL DEFAULT 0,
    user2_unread_count      integer NOT NULL DEFAULT 0,
    last_message_id         uuid,
    last_message_at         timestamptz,
    last_message_sender_id  uuid,
    last_message_preview    text,
    last_updated_at         timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 50);

-- "My conversations": user_conversations_live pushes user_id = :me into both
-- UNION ALL branches, which use these two indexes. Newest-first ordering is a
-- sort of the user's rows: last_message_at changes on every message, so an
-- index on it would make every message a non-HOT update, and it could not
-- order the exact (main + delta) values anyway.
CREATE INDEX IF NOT EXISTS message_conversations_denorm_user1 ON message_conversations_denorm (user1_id);
CREATE INDEX IF NOT EXISTS message_conversations_denorm_user2 ON message_conversations_denorm (user2_id);

COMMENT ON TABLE message_conversations_denorm IS
    'Phase 1: one row per conversation (created by trg_conversation_rows), kept by triggers. Exact values are '
    'message_conversations_denorm_live; per-user rows (other participant, my unread count) are user_conversations_live.';
COMMENT ON COLUMN message_conversations_denorm.user1_id IS 'conversations.user1_id (copied).';
COMMENT ON COLUMN message_conversations_denorm.user2_id IS 'conversations.user2_id (copied).';
COMMENT ON COLUMN message_conversations_denorm.is_deleted IS 'conversations.is_deleted (copied); counts are kept either way.';
COMMENT ON COLUMN message_conversations_denorm.message_count IS 'Messages of the conversation with is_deleted = false.';
COMMENT ON COLUMN message_conversations_denorm.user1_unread_count IS
    'Messages with is_deleted = false and is_read = false whose sender is not user1 (what user1 has not read).';
COMMENT ON COLUMN message_conversations_denorm.user2_unread_count IS
    'Messages with is_deleted = false and is_read = false whose sender is not user2.';
COMMENT ON COLUMN message_conversations_denorm.last_message_id IS
    'The latest message with is_deleted = false, by (created_at, id); NULL when there is none.';
COMMENT ON COLUMN message_conversations_denorm.last_message_at IS 'created_at of last_message_id.';
COMMENT ON COLUMN message_conversations_denorm.last_message_sender_id IS 'sender_id of last_message_id.';
COMMENT ON COLUMN message_conversations_denorm.last_message_preview IS 'left(body, 120) of last_message_id.';
COMMENT ON COLUMN message_conversations_denorm.last_updated_at IS
    'Start time of the last transaction that changed this row in place (not a counter).';

CREATE TABLE IF NOT EXISTS intro_request_stats (
    user_id             uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    requests_sent       integer NOT NULL DEFAULT 0,
    sent_pending        integer NOT NULL DEFAULT 0,
    sent_accepted       integer NOT NULL DEFAULT 0,
    sent_declined       integer NOT NULL DEFAULT 0,
    requests_received   integer NOT NULL DEFAULT 0,
    received_pending    integer NOT NULL DEFAULT 0,
    received_accepted   integer NOT NULL DEFAULT 0,
    received_declined   integer NOT NULL DEFAULT 0,
    last_updated_at     timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 50);

COMMENT ON TABLE intro_request_stats IS
    'Phase 1: one row per user (created by trg_dashboard_users), kept by triggers. Exact values are intro_request_stats_live.';
COMMENT ON COLUMN intro_request_stats.requests_sent IS
    'intro_requests with requester_id = this user and is_deleted = false, any status (withdrawn included: '
    'withdrawn = requests_sent - sent_pending - sent_accepted - sent_declined).';
COMMENT ON COLUMN intro_request_stats.sent_pending IS 'Of requests_sent, status = ''pending''.';
COMMENT ON COLUMN intro_request_stats.sent_accepted IS 'Of requests_sent, status = ''accepted''.';
COMMENT ON COLUMN intro_request_stats.sent_declined IS 'Of requests_sent, status = ''declined''.';
COMMENT ON COLUMN intro_request_stats.requests_received IS
    'intro_requests to this user''s investor profile (investors.user_id = this user) with is_deleted = false and '
    'status <> ''withdrawn'' (the same rule as mv_investors_directory); investors.is_deleted is not considered. 0 for non-investors.';
COMMENT ON COLUMN intro_request_stats.received_pending IS 'Of requests_received, status = ''pending''.';
COMMENT ON COLUMN intro_request_stats.received_accepted IS 'Of requests_received, status = ''accepted''.';
COMMENT ON COLUMN intro_request_stats.received_declined IS 'Of requests_received, status = ''declined''.';
COMMENT ON COLUMN intro_request_stats.last_updated_at IS
    'Start time of the last transaction that changed this row in place (not a counter).';

-- Delta tables: insert-only from triggers, emptied by fold_denorm_deltas().
-- Same counter columns as the main table, holding signed changes. No foreign
-- key and no primary key: an insert must never wait or check anything. Logged
-- (not UNLOGGED): after a crash the deltas are part of the committed truth.
-- Aggressive autovacuum because the fold deletes every row within seconds.
CREATE TABLE IF NOT EXISTS user_dashboard_stats_deltas (
    user_id                 uuid NOT NULL,
    project_count           integer NOT NULL DEFAULT 0,
    active_projects         integer NOT NULL DEFAULT 0,
    total_upvotes_received  integer NOT NULL DEFAULT 0,
    total_comments_received integer NOT NULL DEFAULT 0,
    chains_joined           integer NOT NULL DEFAULT 0,
    changed_at              timestamptz NOT NULL DEFAULT now()
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 2000,
        autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 20000);
CREATE INDEX IF NOT EXISTS user_dashboard_stats_deltas_user ON user_dashboard_stats_deltas (user_id);
COMMENT ON TABLE user_dashboard_stats_deltas IS
    'Pending signed changes to user_dashboard_stats, written when the main row was busy; folded by fold_denorm_deltas().';

CREATE TABLE IF NOT EXISTS message_conversations_denorm_deltas (
    conversation_id         uuid NOT NULL,
    message_count           integer NOT NULL DEFAULT 0,
    user1_unread_count      integer NOT NULL DEFAULT 0,
    user2_unread_count      integer NOT NULL DEFAULT 0,
    -- A candidate for the last message (NULL when this delta adds no message):
    -- the live value is the greatest (at, id) of the main row and its deltas.
    last_message_id         uuid,
    last_message_at         timestamptz,
    last_message_sender_id  uuid,
    last_message_preview    text,
    changed_at              timestamptz NOT NULL DEFAULT now()
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 2000,
        autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 20000);
CREATE INDEX IF NOT EXISTS message_conversations_denorm_deltas_conversation
    ON message_conversations_denorm_deltas (conversation_id);
COMMENT ON TABLE message_conversations_denorm_deltas IS
    'Pending changes to message_conversations_denorm (signed counts, last-message candidates); folded by fold_denorm_deltas().';

CREATE TABLE IF NOT EXISTS intro_request_stats_deltas (
    user_id             uuid NOT NULL,
    requests_sent       integer NOT NULL DEFAULT 0,
    sent_pending        integer NOT NULL DEFAULT 0,
    sent_accepted       integer NOT NULL DEFAULT 0,
    sent_declined       integer NOT NULL DEFAULT 0,
    requests_received   integer NOT NULL DEFAULT 0,
    received_pending    integer NOT NULL DEFAULT 0,
    received_accepted   integer NOT NULL DEFAULT 0,
    received_declined   integer NOT NULL DEFAULT 0,
    changed_at          timestamptz NOT NULL DEFAULT now()
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 2000,
        autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 20000);
CREATE INDEX IF NOT EXISTS intro_request_stats_deltas_user ON intro_request_stats_deltas (user_id);
COMMENT ON TABLE intro_request_stats_deltas IS
    'Pending signed changes to intro_request_stats; folded by fold_denorm_deltas().';

-- ---------------------------------------------------------------------------
-- Truth: each table recomputed from the base tables
-- ---------------------------------------------------------------------------
-- Two forms per table with the same definitions, kept side by side:
--   <table>_truth(keys)  for a batch of keys (index lookups); used by the
--                        rebuild functions and by the reconciliation
--                        (schema/queries/phase1_truth.sql)
--   <table>_truth_all()  the whole table, set-based (hash joins); used by the backfill
-- tests/test_phase1.py checks that both forms agree with each other and with
-- what the triggers keep. LANGUAGE sql STABLE and not STRICT so that the
-- planner inlines them into the calling query.

CREATE OR REPLACE FUNCTION user_dashboard_stats_truth(p_user_ids uuid[])
RETURNS TABLE (user_id uuid, project_count integer, active_projects integer, total_upvotes_received integer,
               total_comments_received integer, chains_joined integer)
LANGUAGE sql STABLE AS $$
    SELECT u.id,
           coalesce(p.project_count, 0)::integer,
           coalesce(p.active_projects, 0)::integer,
           coalesce(v.n, 0)::integer,
           coalesce(c.n, 0)::integer,
           coalesce(m.n, 0)::integer
    FROM users u
    LEFT JOIN (SELECT pr.user_id, count(*) AS project_count, count(*) FILTER (WHERE NOT pr.is_deleted) AS active_projects
               FROM projects pr WHERE pr.user_id = ANY (p_user_ids) GROUP BY pr.user_id) p ON p.user_id = u.id
    LEFT JOIN (SELECT pr.user_id, count(*) AS n
               FROM projects pr JOIN project_upvotes pu ON pu.project_id = pr.id
               WHERE pr.user_id = ANY (p_user_ids) AND NOT pr.is_deleted GROUP BY pr.user_id) v ON v.user_id = u.id
    LEFT JOIN (SELECT pr.user_id, count(*) AS n
               FROM projects pr JOIN project_comments pc ON pc.project_id = pr.id
               WHERE pr.user_id = ANY (p_user_ids) AND NOT pr.is_deleted AND NOT pc.is_deleted
               GROUP BY pr.user_id) c ON c.user_id = u.id
    LEFT JOIN (SELECT cm.user_id, count(*) AS n
               FROM chain_members cm WHERE cm.user_id = ANY (p_user_ids) GROUP BY cm.user_id) m ON m.user_id = u.id
    WHERE u.id = ANY (p_user_ids)
$$;

CREATE OR REPLACE FUNCTION user_dashboard_stats_truth_all()
RETURNS TABLE (user_id uuid, project_count integer, active_projects integer, total_upvotes_received integer,
               total_comments_received integer, chains_joined integer)
LANGUAGE sql STABLE AS $$
    SELECT u.id,
           coalesce(p.project_count, 0)::integer,
           coalesce(p.active_projects, 0)::integer,
           coalesce(v.n, 0)::integer,
           coalesce(c.n, 0)::integer,
           coalesce(m.n, 0)::integer
    FROM users u
    LEFT JOIN (SELECT pr.user_id, count(*) AS project_count, count(*) FILTER (WHERE NOT pr.is_deleted) AS active_projects
               FROM projects pr GROUP BY pr.user_id) p ON p.user_id = u.id
    LEFT JOIN (SELECT pr.user_id, sum(pu.n) AS n
               FROM projects pr JOIN (SELECT project_id, count(*) AS n FROM project_upvotes GROUP BY project_id) pu
                    ON pu.project_id = pr.id
               WHERE NOT pr.is_deleted GROUP BY pr.user_id) v ON v.user_id = u.id
    LEFT JOIN (SELECT pr.user_id, sum(pc.n) AS n
               FROM projects pr JOIN (SELECT project_id, count(*) AS n FROM project_comments
                                      WHERE NOT is_deleted GROUP BY project_id) pc ON pc.project_id = pr.id
               WHERE NOT pr.is_deleted GROUP BY pr.user_id) c ON c.user_id = u.id
    LEFT JOIN (SELECT cm.user_id, count(*) AS n FROM chain_members cm GROUP BY cm.user_id) m ON m.user_id = u.id
$$;

CREATE OR REPLACE FUNCTION message_conversations_denorm_truth(p_conversation_ids uuid[])
RETURNS TABLE (conversation_id uuid, user1_id uuid, user2_id uuid, is_deleted boolean, message_count integer,
               user1_unread_count integer, user2_unread_count integer, last_message_id uuid,
               last_message_at timestamptz, last_message_sender_id uuid, last_message_preview text)
LANGUAGE sql STABLE AS $$
    SELECT c.id, c.user1_id, c.user2_id, c.is_deleted,
           s.message_count::integer, s.user1_unread::integer, s.user2_unread::integer,
           l.id, l.created_at, l.sender_id, left(l.body, 120)
    FROM conversations c
    CROSS JOIN LATERAL (
        SELECT count(*) AS message_count,
               count(*) FILTER (WHERE NOT m.is_read AND m.sender_id <> c.user1_id) AS user1_unread,
               count(*) FILTER (WHERE NOT m.is_read AND m.sender_id <> c.user2_id) AS user2_unread
        FROM messages m WHERE m.conversation_id = c.id AND NOT m.is_deleted) s
    LEFT JOIN LATERAL (
        SELECT m.id, m.created_at, m.sender_id, m.body
        FROM messages m WHERE m.conversation_id = c.id AND NOT m.is_deleted
        ORDER BY m.created_at DESC, m.id DESC LIMIT 1) l ON true
    WHERE c.id = ANY (p_conversation_ids)
$$;

CREATE OR REPLACE FUNCTION message_conversations_denorm_truth_all()
RETURNS TABLE (conversation_id uuid, user1_id uuid, user2_id uuid, is_deleted boolean, message_count integer,
               user1_unread_count integer, user2_unread_count integer, last_message_id uuid,
               last_message_at timestamptz, last_message_sender_id uuid, last_message_preview text)
LANGUAGE sql STABLE AS $$
    SELECT c.id, c.user1_id, c.user2_id, c.is_deleted,
           coalesce(s.message_count, 0)::integer, coalesce(s.user1_unread, 0)::integer,
           coalesce(s.user2_unread, 0)::integer,
           l.id, l.created_at, lm.sender_id, left(lm.body, 120)
    FROM conversations c
    LEFT JOIN (SELECT m.conversation_id, count(*) AS message_count,
                      count(*) FILTER (WHERE NOT m.is_read AND m.sender_id <> cc.user1_id) AS user1_unread,
                      count(*) FILTER (WHERE NOT m.is_read AND m.sender_id <> cc.user2_id) AS user2_unread
               FROM messages m JOIN conversations cc ON cc.id = m.conversation_id
               WHERE NOT m.is_deleted GROUP BY m.conversation_id) s ON s.conversation_id = c.id
    -- Pick the last (created_at, id) per conversation on narrow rows first, then
    -- fetch sender and body of the winners only (sorting 1M wide rows is slow).
    LEFT JOIN (SELECT DISTINCT ON (m.conversation_id) m.conversation_id, m.id, m.created_at
               FROM messages m WHERE NOT m.is_deleted
               ORDER BY m.conversation_id, m.created_at DESC, m.id DESC) l ON l.conversation_id = c.id
    LEFT JOIN messages lm ON lm.id = l.id
$$;

CREATE OR REPLACE FUNCTION intro_request_stats_truth(p_user_ids uuid[])
RETURNS TABLE (user_id uuid, requests_sent integer, sent_pending integer, sent_accepted integer,
               sent_declined integer, requests_received integer, received_pending integer,
               received_accepted integer, received_declined integer)
LANGUAGE sql STABLE AS $$
    SELECT u.id,
           coalesce(s.n, 0)::integer, coalesce(s.pending, 0)::integer,
           coalesce(s.accepted, 0)::integer, coalesce(s.declined, 0)::integer,
           coalesce(r.n, 0)::integer, coalesce(r.pending, 0)::integer,
           coalesce(r.accepted, 0)::integer, coalesce(r.declined, 0)::integer
    FROM users u
    LEFT JOIN (SELECT ir.requester_id, count(*) AS n,
                      count(*) FILTER (WHERE ir.status = 'pending') AS pending,
                      count(*) FILTER (WHERE ir.status = 'accepted') AS accepted,
                      count(*) FILTER (WHERE ir.status = 'declined') AS declined
               FROM intro_requests ir
               WHERE ir.requester_id = ANY (p_user_ids) AND NOT ir.is_deleted
               GROUP BY ir.requester_id) s ON s.requester_id = u.id
    LEFT JOIN (SELECT i.user_id, count(*) AS n,
                      count(*) FILTER (WHERE ir.status = 'pending') AS pending,
                      count(*) FILTER (WHERE ir.status = 'accepted') AS accepted,
                      count(*) FILTER (WHERE ir.status = 'declined') AS declined
               FROM investors i JOIN intro_requests ir ON ir.investor_id = i.id
               WHERE i.user_id = ANY (p_user_ids) AND NOT ir.is_deleted AND ir.status <> 'withdrawn'
               GROUP BY i.user_id) r ON r.user_id = u.id
    WHERE u.id = ANY (p_user_ids)
$$;

CREATE OR REPLACE FUNCTION intro_request_stats_truth_all()
RETURNS TABLE (user_id uuid, requests_sent integer, sent_pending integer, sent_accepted integer,
               sent_declined integer, requests_received integer, received_pending integer,
               received_accepted integer, received_declined integer)
LANGUAGE sql STABLE AS $$
    SELECT u.id,
           coalesce(s.n, 0)::integer, coalesce(s.pending, 0)::integer,
           coalesce(s.accepted, 0)::integer, coalesce(s.declined, 0)::integer,
           coalesce(r.n, 0)::integer, coalesce(r.pending, 0)::integer,
           coalesce(r.accepted, 0)::integer, coalesce(r.declined, 0)::integer
    FROM users u
    LEFT JOIN (SELECT ir.requester_id, count(*) AS n,
                      count(*) FILTER (WHERE ir.status = 'pending') AS pending,
                      count(*) FILTER (WHERE ir.status = 'accepted') AS accepted,
                      count(*) FILTER (WHERE ir.status = 'declined') AS declined
               FROM intro_requests ir WHERE NOT ir.is_deleted
               GROUP BY ir.requester_id) s ON s.requester_id = u.id
    LEFT JOIN (SELECT i.user_id, count(*) AS n,
                      count(*) FILTER (WHERE ir.status = 'pending') AS pending,
                      count(*) FILTER (WHERE ir.status = 'accepted') AS accepted,
                      count(*) FILTER (WHERE ir.status = 'declined') AS declined
               FROM investors i JOIN intro_requests ir ON ir.investor_id = i.id
               WHERE NOT ir.is_deleted AND ir.status <> 'withdrawn'
               GROUP BY i.user_id) r ON r.user_id = u.id
$$;

-- ---------------------------------------------------------------------------
-- Rebuild: recompute some keys from the truth, exactly, under concurrency
-- ---------------------------------------------------------------------------
-- 1. Take the keys' row locks (blocking, ordered by lock key so that two
--    rebuilds cannot wait on each other in a cycle). Writers that hold one
--    finish first; writers that come later write deltas instead.
-- 2. In ONE statement (one snapshot): delete the keys' visible deltas and
--    upsert the truth. Deltas not yet committed belong to writes the snapshot
--    does not see either, so they stay and add on top. Keys whose entity no
--    longer exists get no row (the foreign key cascade removes old ones).
-- Writers never block on these locks (they only try them), so a rebuild
-- waits at most for the commits of writers already in flight.
-- Used by the triggers' rare paths, by fold for missing rows, and by the
-- reconciliation's auto-fix. Returns the number of rows written.

CREATE OR REPLACE FUNCTION rebuild_user_dashboard_stats(p_user_ids uuid[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    PERFORM pg_advisory_xact_lock(731001, k.h)
    FROM (SELECT DISTINCT uuid_hash(x) AS h FROM unnest(p_user_ids) x WHERE x IS NOT NULL ORDER BY 1) k;
    WITH gone AS (
        DELETE FROM user_dashboard_stats_deltas WHERE user_id = ANY (p_user_ids)
    )
    INSERT INTO user_dashboard_stats AS s (user_id, project_count, active_projects, total_upvotes_received,
                                           total_comments_received, chains_joined, last_updated_at)
    SELECT t.user_id, t.project_count, t.active_projects, t.total_upvotes_received,
           t.total_comments_received, t.chains_joined, now()
    FROM user_dashboard_stats_truth(p_user_ids) t
    ON CONFLICT (user_id) DO UPDATE
        SET project_count = EXCLUDED.project_count,
            active_projects = EXCLUDED.active_projects,
            total_upvotes_received = EXCLUDED.total_upvotes_received,
            total_comments_received = EXCLUDED.total_comments_received,
            chains_joined = EXCLUDED.chains_joined,
            last_updated_at = EXCLUDED.last_updated_at;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

CREATE OR REPLACE FUNCTION rebuild_message_conversations_denorm(p_conversation_ids uuid[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    PERFORM pg_advisory_xact_lock(731002, k.h)
    FROM (SELECT DISTINCT uuid_hash(x) AS h FROM unnest(p_conversation_ids) x WHERE x IS NOT NULL ORDER BY 1) k;
    WITH gone AS (
        DELETE FROM message_conversations_denorm_deltas WHERE conversation_id = ANY (p_conversation_ids)
    )
    INSERT INTO message_conversations_denorm AS s (
        conversation_id, user1_id, user2_id, is_deleted, message_count, user1_unread_count, user2_unread_count,
        last_message_id, last_message_at, last_message_sender_id, last_message_preview, last_updated_at)
    SELECT t.conversation_id, t.user1_id, t.user2_id, t.is_deleted, t.message_count, t.user1_unread_count,
           t.user2_unread_count, t.last_message_id, t.last_message_at, t.last_message_sender_id,
           t.last_message_preview, now()
    FROM message_conversations_denorm_truth(p_conversation_ids) t
    ON CONFLICT (conversation_id) DO UPDATE
        SET user1_id = EXCLUDED.user1_id,
            user2_id = EXCLUDED.user2_id,
            is_deleted = EXCLUDED.is_deleted,
            message_count = EXCLUDED.message_count,
            user1_unread_count = EXCLUDED.user1_unread_count,
            user2_unread_count = EXCLUDED.user2_unread_count,
            last_message_id = EXCLUDED.last_message_id,
            last_message_at = EXCLUDED.last_message_at,
            last_message_sender_id = EXCLUDED.last_message_sender_id,
            last_message_preview = EXCLUDED.last_message_preview,
            last_updated_at = EXCLUDED.last_updated_at;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

CREATE OR REPLACE FUNCTION rebuild_intro_request_stats(p_user_ids uuid[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    PERFORM pg_advisory_xact_lock(731003, k.h)
    FROM (SELECT DISTINCT uuid_hash(x) AS h FROM unnest(p_user_ids) x WHERE x IS NOT NULL ORDER BY 1) k;
    WITH gone AS (
        DELETE FROM intro_request_stats_deltas WHERE user_id = ANY (p_user_ids)
    )
    INSERT INTO intro_request_stats AS s (user_id, requests_sent, sent_pending, sent_accepted, sent_declined,
                                          requests_received, received_pending, received_accepted,
                                          received_declined, last_updated_at)
    SELECT t.user_id, t.requests_sent, t.sent_pending, t.sent_accepted, t.sent_declined, t.requests_received,
           t.received_pending, t.received_accepted, t.received_declined, now()
    FROM intro_request_stats_truth(p_user_ids) t
    ON CONFLICT (user_id) DO UPDATE
        SET requests_sent = EXCLUDED.requests_sent,
            sent_pending = EXCLUDED.sent_pending,
            sent_accepted = EXCLUDED.sent_accepted,
            sent_declined = EXCLUDED.sent_declined,
            requests_received = EXCLUDED.requests_received,
            received_pending = EXCLUDED.received_pending,
            received_accepted = EXCLUDED.received_accepted,
            received_declined = EXCLUDED.received_declined,
            last_updated_at = EXCLUDED.last_updated_at;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

COMMENT ON FUNCTION rebuild_user_dashboard_stats(uuid[]) IS
    'Recompute these users'' rows from the base tables, exact under concurrent writes (drops their visible deltas).';
COMMENT ON FUNCTION rebuild_message_conversations_denorm(uuid[]) IS
    'Recompute these conversations'' rows from the base tables, exact under concurrent writes.';
COMMENT ON FUNCTION rebuild_intro_request_stats(uuid[]) IS
    'Recompute these users'' intro stats from the base tables, exact under concurrent writes.';

-- ---------------------------------------------------------------------------
-- Add: apply a signed change to one key (in place, or as a delta when busy)
-- ---------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION dashboard_stats_add(
    p_user_id uuid, p_projects integer, p_active integer, p_upvotes integer, p_comments integer, p_chains integer)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF p_user_id IS NULL OR (p_projects = 0 AND p_active = 0 AND p_upvotes = 0 AND p_comments = 0 AND p_chains = 0) THEN
        RETURN;
    END IF;
    IF pg_try_advisory_xact_lock(731001, uuid_hash(p_user_id)) THEN
        UPDATE user_dashboard_stats
           SET project_count = project_count + p_projects,
               active_projects = active_projects + p_active,
               total_upvotes_received = total_upvotes_received + p_upvotes,
               total_comments_received = total_comments_received + p_comments,
               chains_joined = chains_joined + p_chains,
               last_updated_at = now()
         WHERE user_id = p_user_id;
        IF NOT FOUND THEN
            -- No row yet (data that predates the triggers): create it from the
            -- truth, which already includes this transaction's own change.
            PERFORM rebuild_user_dashboard_stats(ARRAY[p_user_id]);
        END IF;
    ELSE
        INSERT INTO user_dashboard_stats_deltas (user_id, project_count, active_projects, total_upvotes_received,
                                                 total_comments_received, chains_joined)
        VALUES (p_user_id, p_projects, p_active, p_upvotes, p_comments, p_chains);
    END IF;
END
$$;

-- p_unread applies to each participant who is not p_sender (the reader side);
-- p_last_* is a last-message candidate (NULLs when the change adds none).
CREATE OR REPLACE FUNCTION conversation_stats_add(
    p_conversation_id uuid, p_messages integer, p_sender uuid, p_unread integer,
    p_last_id uuid, p_last_at timestamptz, p_last_sender uuid, p_last_preview text)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_user1 uuid;
    v_user2 uuid;
BEGIN
    IF p_conversation_id IS NULL OR (p_messages = 0 AND p_unread = 0 AND p_last_id IS NULL) THEN
        RETURN;
    END IF;
    IF pg_try_advisory_xact_lock(731002, uuid_hash(p_conversation_id)) THEN
        UPDATE message_conversations_denorm d
           SET message_count = d.message_count + p_messages,
               user1_unread_count = d.user1_unread_count + CASE WHEN p_sender IS DISTINCT FROM d.user1_id THEN p_unread ELSE 0 END,
               user2_unread_count = d.user2_unread_count + CASE WHEN p_sender IS DISTINCT FROM d.user2_id THEN p_unread ELSE 0 END,
               last_message_id = CASE WHEN p_last_id IS NOT NULL AND (d.last_message_id IS NULL OR (p_last_at, p_last_id) > (d.last_message_at, d.last_message_id))
                                      THEN p_last_id ELSE d.last_message_id END,
               last_message_at = CASE WHEN p_last_id IS NOT NULL AND (d.last_message_id IS NULL OR (p_last_at, p_last_id) > (d.last_message_at, d.last_message_id))
                                      THEN p_last_at ELSE d.last_message_at END,
               last_message_sender_id = CASE WHEN p_last_id IS NOT NULL AND (d.last_message_id IS NULL OR (p_last_at, p_last_id) > (d.last_message_at, d.last_message_id))
                                             THEN p_last_sender ELSE d.last_message_sender_id END,
               last_message_preview = CASE WHEN p_last_id IS NOT NULL AND (d.last_message_id IS NULL OR (p_last_at, p_last_id) > (d.last_message_at, d.last_message_id))
                                           THEN p_last_preview ELSE d.last_message_preview END,
               last_updated_at = now()
         WHERE d.conversation_id = p_conversation_id;
        IF NOT FOUND THEN
            PERFORM rebuild_message_conversations_denorm(ARRAY[p_conversation_id]);
        END IF;
    ELSE
        -- Which side is unread depends on the participants; read them from the
        -- main row (a plain read, no lock). A missing row is rebuilt by the fold.
        SELECT d.user1_id, d.user2_id INTO v_user1, v_user2
        FROM message_conversations_denorm d WHERE d.conversation_id = p_conversation_id;
        INSERT INTO message_conversations_denorm_deltas (
            conversation_id, message_count, user1_unread_count, user2_unread_count,
            last_message_id, last_message_at, last_message_sender_id, last_message_preview)
        VALUES (p_conversation_id, p_messages,
                CASE WHEN p_sender IS DISTINCT FROM v_user1 THEN p_unread ELSE 0 END,
                CASE WHEN p_sender IS DISTINCT FROM v_user2 THEN p_unread ELSE 0 END,
                p_last_id, p_last_at, p_last_sender, p_last_preview);
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION intro_stats_add(
    p_user_id uuid, p_sent integer, p_sent_pending integer, p_sent_accepted integer, p_sent_declined integer,
    p_received integer, p_received_pending integer, p_received_accepted integer, p_received_declined integer)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF p_user_id IS NULL OR (p_sent = 0 AND p_sent_pending = 0 AND p_sent_accepted = 0 AND p_sent_declined = 0
                             AND p_received = 0 AND p_received_pending = 0 AND p_received_accepted = 0
                             AND p_received_declined = 0) THEN
        RETURN;
    END IF;
    IF pg_try_advisory_xact_lock(731003, uuid_hash(p_user_id)) THEN
        UPDATE intro_request_stats
           SET requests_sent = requests_sent + p_sent,
               sent_pending = sent_pending + p_sent_pending,
               sent_accepted = sent_accepted + p_sent_accepted,
               sent_declined = sent_declined + p_sent_declined,
               requests_received = requests_received + p_received,
               received_pending = received_pending + p_received_pending,
               received_accepted = received_accepted + p_received_accepted,
               received_declined = received_declined + p_received_declined,
               last_updated_at = now()
         WHERE user_id = p_user_id;
        IF NOT FOUND THEN
            PERFORM rebuild_intro_request_stats(ARRAY[p_user_id]);
        END IF;
    ELSE
        INSERT INTO intro_request_stats_deltas (user_id, requests_sent, sent_pending, sent_accepted, sent_declined,
                                                requests_received, received_pending, received_accepted,
                                                received_declined)
        VALUES (p_user_id, p_sent, p_sent_pending, p_sent_accepted, p_sent_declined,
                p_received, p_received_pending, p_received_accepted, p_received_declined);
    END IF;
END
$$;

-- ---------------------------------------------------------------------------
-- Trigger functions
-- ---------------------------------------------------------------------------
-- Every trigger is AFTER ROW (an AFTER trigger does not fire for an INSERT
-- that ON CONFLICT DO NOTHING skipped), and UPDATE triggers list the columns
-- that matter, so e.g. "UPDATE projects SET updated_at = ..." costs nothing.
--
-- Upvotes and comments count for the project's owner only while the project
-- is not soft-deleted. A writer of an upvote/comment takes the project's
-- status lock (731010) SHARED before it reads the project; a project that
-- changes owner or is_deleted takes it EXCLUSIVE before it counts its
-- upvotes/comments. So a project's status change waits for the in-flight
-- writers of its children, and later writers see the new status: no
-- upvote is counted under a status that its count was not moved with.
-- (Trigger order is by name, and the RI triggers "RI_ConstraintTrigger_*"
-- sort before "trg_*": when a parent is hard-deleted, its cascaded children
-- are gone before the parent's own trigger runs, and the children's triggers
-- no longer see the parent. So the children skip, and the parent's trigger
-- rebuilds the owner from the truth.)

CREATE OR REPLACE FUNCTION dashboard_users_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO user_dashboard_stats (user_id) VALUES (NEW.id) ON CONFLICT (user_id) DO NOTHING;
    INSERT INTO intro_request_stats (user_id) VALUES (NEW.id) ON CONFLICT (user_id) DO NOTHING;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION dashboard_projects_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_upvotes integer;
    v_comments integer;
    v_old_active integer;
    v_new_active integer;
BEGIN
    IF TG_OP = 'INSERT' THEN
        -- A new project has no upvotes or comments yet (they would need it committed).
        PERFORM dashboard_stats_add(NEW.user_id, 1, (NOT NEW.is_deleted)::integer, 0, 0, 0);
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN
        -- The cascade already removed its upvotes and comments, unseen by their
        -- triggers (this project is invisible to them): recompute the owner.
        PERFORM rebuild_user_dashboard_stats(ARRAY[OLD.user_id]);
        RETURN NULL;
    END IF;
    IF NEW.user_id = OLD.user_id AND NEW.is_deleted = OLD.is_deleted THEN
        RETURN NULL;
    END IF;
    -- Wait for in-flight upvote/comment writers of this project, keep new ones
    -- out until commit, then count (each statement below takes a new snapshot).
    PERFORM pg_advisory_xact_lock(731010, uuid_hash(NEW.id));
    SELECT count(*) INTO v_upvotes FROM project_upvotes WHERE project_id = NEW.id;
    SELECT count(*) INTO v_comments FROM project_comments WHERE project_id = NEW.id AND NOT is_deleted;
    v_old_active := (NOT OLD.is_deleted)::integer;
    v_new_active := (NOT NEW.is_deleted)::integer;
    IF NEW.user_id = OLD.user_id THEN
        PERFORM dashboard_stats_add(NEW.user_id, 0, v_new_active - v_old_active,
                                    (v_new_active - v_old_active) * v_upvotes,
                                    (v_new_active - v_old_active) * v_comments, 0);
    ELSE
        PERFORM dashboard_stats_add(OLD.user_id, -1, -v_old_active, -v_old_active * v_upvotes,
                                    -v_old_active * v_comments, 0);
        PERFORM dashboard_stats_add(NEW.user_id, 1, v_new_active, v_new_active * v_upvotes,
                                    v_new_active * v_comments, 0);
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION dashboard_project_upvotes_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_owner uuid;
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.project_id = OLD.project_id THEN
        RETURN NULL;
    END IF;
    IF TG_OP <> 'INSERT' THEN
        PERFORM pg_advisory_xact_lock_shared(731010, uuid_hash(OLD.project_id));
        SELECT p.user_id INTO v_owner FROM projects p WHERE p.id = OLD.project_id AND NOT p.is_deleted;
        IF FOUND THEN
            PERFORM dashboard_stats_add(v_owner, 0, 0, -1, 0, 0);
        END IF;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        PERFORM pg_advisory_xact_lock_shared(731010, uuid_hash(NEW.project_id));
        SELECT p.user_id INTO v_owner FROM projects p WHERE p.id = NEW.project_id AND NOT p.is_deleted;
        IF FOUND THEN
            PERFORM dashboard_stats_add(v_owner, 0, 0, 1, 0, 0);
        END IF;
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION dashboard_project_comments_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_owner uuid;
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.project_id = OLD.project_id AND NEW.is_deleted = OLD.is_deleted THEN
        RETURN NULL;
    END IF;
    IF TG_OP <> 'INSERT' AND NOT OLD.is_deleted THEN
        PERFORM pg_advisory_xact_lock_shared(731010, uuid_hash(OLD.project_id));
        SELECT p.user_id INTO v_owner FROM projects p WHERE p.id = OLD.project_id AND NOT p.is_deleted;
        IF FOUND THEN
            PERFORM dashboard_stats_add(v_owner, 0, 0, 0, -1, 0);
        END IF;
    END IF;
    IF TG_OP <> 'DELETE' AND NOT NEW.is_deleted THEN
        PERFORM pg_advisory_xact_lock_shared(731010, uuid_hash(NEW.project_id));
        SELECT p.user_id INTO v_owner FROM projects p WHERE p.id = NEW.project_id AND NOT p.is_deleted;
        IF FOUND THEN
            PERFORM dashboard_stats_add(v_owner, 0, 0, 0, 1, 0);
        END IF;
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION dashboard_chain_members_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.user_id = OLD.user_id THEN
        RETURN NULL;
    END IF;
    IF TG_OP <> 'INSERT' THEN
        PERFORM dashboard_stats_add(OLD.user_id, 0, 0, 0, 0, -1);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        PERFORM dashboard_stats_add(NEW.user_id, 0, 0, 0, 0, 1);
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION conversation_rows_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO message_conversations_denorm (conversation_id, user1_id, user2_id, is_deleted)
        VALUES (NEW.id, NEW.user1_id, NEW.user2_id, NEW.is_deleted)
        ON CONFLICT (conversation_id) DO NOTHING;
    ELSIF NEW.user1_id <> OLD.user1_id OR NEW.user2_id <> OLD.user2_id OR NEW.is_deleted <> OLD.is_deleted THEN
        -- Rare: participants decide the unread split, so recompute the row.
        PERFORM rebuild_message_conversations_denorm(ARRAY[NEW.id]);
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION conversation_messages_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_rebuild uuid[] := '{}';
    v_last_at timestamptz;
    v_last_id uuid;
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NOT NEW.is_deleted THEN
            PERFORM conversation_stats_add(NEW.conversation_id, 1, NEW.sender_id, (NOT NEW.is_read)::integer,
                                           NEW.id, NEW.created_at, NEW.sender_id, left(NEW.body, 120));
        END IF;
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.conversation_id = OLD.conversation_id AND NEW.sender_id = OLD.sender_id
       AND NEW.is_deleted = OLD.is_deleted AND NEW.created_at = OLD.created_at AND NEW.body = OLD.body THEN
        -- Only is_read changed (the common update): an unread count moves by one.
        IF NOT NEW.is_deleted AND NEW.is_read <> OLD.is_read THEN
            PERFORM conversation_stats_add(NEW.conversation_id, 0, NEW.sender_id,
                                           CASE WHEN NEW.is_read THEN -1 ELSE 1 END, NULL, NULL, NULL, NULL);
        END IF;
        RETURN NULL;
    END IF;
    -- Take OLD's contribution away. Counts subtract; the last message cannot,
    -- so when OLD may be it, the row is rebuilt from the truth instead.
    IF NOT OLD.is_deleted AND EXISTS (SELECT 1 FROM conversations c WHERE c.id = OLD.conversation_id) THEN
        -- (A conversation being deleted is invisible here: its row goes with it.)
        -- Lock first so a concurrent rebuild cannot move the last message under us.
        PERFORM pg_advisory_xact_lock(731002, uuid_hash(OLD.conversation_id));
        SELECT d.last_message_at, d.last_message_id INTO v_last_at, v_last_id
        FROM message_conversations_denorm d WHERE d.conversation_id = OLD.conversation_id;
        IF v_last_id IS NULL OR (OLD.created_at, OLD.id) >= (v_last_at, v_last_id) THEN
            v_rebuild := v_rebuild || OLD.conversation_id;
        ELSE
            PERFORM conversation_stats_add(OLD.conversation_id, -1, OLD.sender_id, -(NOT OLD.is_read)::integer,
                                           NULL, NULL, NULL, NULL);
        END IF;
    END IF;
    IF TG_OP = 'UPDATE' AND NOT NEW.is_deleted AND NOT (NEW.conversation_id = ANY (v_rebuild)) THEN
        PERFORM conversation_stats_add(NEW.conversation_id, 1, NEW.sender_id, (NOT NEW.is_read)::integer,
                                       NEW.id, NEW.created_at, NEW.sender_id, left(NEW.body, 120));
    END IF;
    IF cardinality(v_rebuild) > 0 THEN
        PERFORM rebuild_message_conversations_denorm(v_rebuild);
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION intro_requests_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_investor_user uuid;
    v_sign integer;
    r intro_requests;
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.requester_id = OLD.requester_id AND NEW.investor_id = OLD.investor_id
       AND NEW.status = OLD.status AND NEW.is_deleted = OLD.is_deleted THEN
        RETURN NULL;
    END IF;
    -- OLD with sign -1, then NEW with sign +1.
    FOR v_sign IN SELECT unnest(CASE TG_OP WHEN 'INSERT' THEN ARRAY[1] WHEN 'DELETE' THEN ARRAY[-1] ELSE ARRAY[-1, 1] END) LOOP
        IF v_sign = -1 THEN r := OLD; ELSE r := NEW; END IF;
        CONTINUE WHEN r.is_deleted;
        PERFORM intro_stats_add(r.requester_id, v_sign,
                                v_sign * (r.status = 'pending')::integer,
                                v_sign * (r.status = 'accepted')::integer,
                                v_sign * (r.status = 'declined')::integer, 0, 0, 0, 0);
        CONTINUE WHEN r.status = 'withdrawn';
        -- The investor's owner; the shared lock keeps investors.user_id from
        -- moving until this transaction commits. An investor being deleted is
        -- invisible here: trg_intro_investors rebuilds its owner afterwards.
        PERFORM pg_advisory_xact_lock_shared(731011, uuid_hash(r.investor_id));
        SELECT i.user_id INTO v_investor_user FROM investors i WHERE i.id = r.investor_id;
        IF FOUND THEN
            PERFORM intro_stats_add(v_investor_user, 0, 0, 0, 0, v_sign,
                                    v_sign * (r.status = 'pending')::integer,
                                    v_sign * (r.status = 'accepted')::integer,
                                    v_sign * (r.status = 'declined')::integer);
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION intro_investors_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        -- Its intro requests were cascaded away unseen by their trigger's investor side.
        PERFORM rebuild_intro_request_stats(ARRAY[OLD.user_id]);
    ELSIF NEW.user_id <> OLD.user_id THEN
        PERFORM pg_advisory_xact_lock(731011, uuid_hash(NEW.id));
        PERFORM rebuild_intro_request_stats(ARRAY[OLD.user_id, NEW.user_id]);
    END IF;
    RETURN NULL;
END
$$;

-- ---------------------------------------------------------------------------
-- The 9 triggers (the guide's Step 1.3 counts them by these name prefixes)
-- ---------------------------------------------------------------------------

CREATE OR REPLACE TRIGGER trg_dashboard_users
    AFTER INSERT ON users
    FOR EACH ROW EXECUTE FUNCTION dashboard_users_trigger();

CREATE OR REPLACE TRIGGER trg_dashboard_projects
    AFTER INSERT OR DELETE OR UPDATE OF user_id, is_deleted ON projects
    FOR EACH ROW EXECUTE FUNCTION dashboard_projects_trigger();

CREATE OR REPLACE TRIGGER trg_dashboard_project_upvotes
    AFTER INSERT OR DELETE OR UPDATE OF project_id ON project_upvotes
    FOR EACH ROW EXECUTE FUNCTION dashboard_project_upvotes_trigger();

CREATE OR REPLACE TRIGGER trg_dashboard_project_comments
    AFTER INSERT OR DELETE OR UPDATE OF project_id, is_deleted ON project_comments
    FOR EACH ROW EXECUTE FUNCTION dashboard_project_comments_trigger();

CREATE OR REPLACE TRIGGER trg_dashboard_chain_members
    AFTER INSERT OR DELETE OR UPDATE OF user_id ON chain_members
    FOR EACH ROW EXECUTE FUNCTION dashboard_chain_members_trigger();

CREATE OR REPLACE TRIGGER trg_conversation_rows
    AFTER INSERT OR UPDATE OF user1_id, user2_id, is_deleted ON conversations
    FOR EACH ROW EXECUTE FUNCTION conversation_rows_trigger();

CREATE OR REPLACE TRIGGER trg_conversation_messages
    AFTER INSERT OR DELETE OR UPDATE OF conversation_id, sender_id, is_read, is_deleted, created_at, body ON messages
    FOR EACH ROW EXECUTE FUNCTION conversation_messages_trigger();

CREATE OR REPLACE TRIGGER trg_intro_requests
    AFTER INSERT OR DELETE OR UPDATE OF requester_id, investor_id, status, is_deleted ON intro_requests
    FOR EACH ROW EXECUTE FUNCTION intro_requests_trigger();

CREATE OR REPLACE TRIGGER trg_intro_investors
    AFTER DELETE OR UPDATE OF user_id ON investors
    FOR EACH ROW EXECUTE FUNCTION intro_investors_trigger();

-- ---------------------------------------------------------------------------
-- Exact reads: main row + pending deltas
-- ---------------------------------------------------------------------------
-- One statement = one snapshot: a delta is visible exactly when the base
-- write it stands for is. "WHERE user_id = :id" is pushed into the grouped
-- delta subquery (an index lookup); a full read aggregates the (small) delta
-- table once. pending_deltas > 0 means the main row alone is behind.

CREATE OR REPLACE VIEW user_dashboard_stats_live AS
SELECT s.user_id,
       s.project_count + coalesce(d.project_count, 0) AS project_count,
       s.active_projects + coalesce(d.active_projects, 0) AS active_projects,
       s.total_upvotes_received + coalesce(d.total_upvotes_received, 0) AS total_upvotes_received,
       s.total_comments_received + coalesce(d.total_comments_received, 0) AS total_comments_received,
       s.chains_joined + coalesce(d.chains_joined, 0) AS chains_joined,
       greatest(s.last_updated_at, d.changed_at) AS last_updated_at,
       coalesce(d.pending_deltas, 0) AS pending_deltas
FROM user_dashboard_stats s
LEFT JOIN (SELECT user_id,
                  sum(project_count)::integer AS project_count,
                  sum(active_projects)::integer AS active_projects,
                  sum(total_upvotes_received)::integer AS total_upvotes_received,
                  sum(total_comments_received)::integer AS total_comments_received,
                  sum(chains_joined)::integer AS chains_joined,
                  max(changed_at) AS changed_at,
                  count(*)::integer AS pending_deltas
           FROM user_dashboard_stats_deltas GROUP BY user_id) d ON d.user_id = s.user_id;
COMMENT ON VIEW user_dashboard_stats_live IS
    'Exact user_dashboard_stats: the main row plus its pending deltas. Read this, not the table, when exactness matters.';

CREATE OR REPLACE VIEW message_conversations_denorm_live AS
SELECT s.conversation_id, s.user1_id, s.user2_id, s.is_deleted,
       s.message_count + coalesce(d.message_count, 0) AS message_count,
       s.user1_unread_count + coalesce(d.user1_unread_count, 0) AS user1_unread_count,
       s.user2_unread_count + coalesce(d.user2_unread_count, 0) AS user2_unread_count,
       CASE WHEN d.newer THEN d.last_message_id ELSE s.last_message_id END AS last_message_id,
       CASE WHEN d.newer THEN d.last_message_at ELSE s.last_message_at END AS last_message_at,
       CASE WHEN d.newer THEN d.last_message_sender_id ELSE s.last_message_sender_id END AS last_message_sender_id,
       CASE WHEN d.newer THEN d.last_message_preview ELSE s.last_message_preview END AS last_message_preview,
       greatest(s.last_updated_at, d.changed_at) AS last_updated_at,
       coalesce(d.pending_deltas, 0) AS pending_deltas
FROM message_conversations_denorm s
LEFT JOIN LATERAL (
    SELECT g.*,
           g.last_message_id IS NOT NULL
             AND (s.last_message_id IS NULL OR (g.last_message_at, g.last_message_id) > (s.last_message_at, s.last_message_id))
             AS newer
    FROM (SELECT dd.conversation_id,
                 sum(dd.message_count)::integer AS message_count,
                 sum(dd.user1_unread_count)::integer AS user1_unread_count,
                 sum(dd.user2_unread_count)::integer AS user2_unread_count,
                 (array_agg(dd.last_message_id ORDER BY dd.last_message_at DESC, dd.last_message_id DESC)
                    FILTER (WHERE dd.last_message_id IS NOT NULL))[1] AS last_message_id,
                 (array_agg(dd.last_message_at ORDER BY dd.last_message_at DESC, dd.last_message_id DESC)
                    FILTER (WHERE dd.last_message_id IS NOT NULL))[1] AS last_message_at,
                 (array_agg(dd.last_message_sender_id ORDER BY dd.last_message_at DESC, dd.last_message_id DESC)
                    FILTER (WHERE dd.last_message_id IS NOT NULL))[1] AS last_message_sender_id,
                 (array_agg(dd.last_message_preview ORDER BY dd.last_message_at DESC, dd.last_message_id DESC)
                    FILTER (WHERE dd.last_message_id IS NOT NULL))[1] AS last_message_preview,
                 max(dd.changed_at) AS changed_at,
                 count(*)::integer AS pending_deltas
          FROM message_conversations_denorm_deltas dd
          WHERE dd.conversation_id = s.conversation_id
          GROUP BY dd.conversation_id) g
) d ON true;
COMMENT ON VIEW message_conversations_denorm_live IS
    'Exact message_conversations_denorm: main row plus pending deltas (counts summed, last message = greatest (at, id)).';

CREATE OR REPLACE VIEW user_conversations_live AS
SELECT c.user1_id AS user_id, c.conversation_id, c.user2_id AS other_user_id, c.is_deleted, c.message_count,
       c.user1_unread_count AS unread_count, c.last_message_id, c.last_message_at, c.last_message_sender_id,
       c.last_message_preview, c.last_updated_at
FROM message_conversations_denorm_live c
UNION ALL
SELECT c.user2_id, c.conversation_id, c.user1_id, c.is_deleted, c.message_count,
       c.user2_unread_count, c.last_message_id, c.last_message_at, c.last_message_sender_id,
       c.last_message_preview, c.last_updated_at
FROM message_conversations_denorm_live c;
COMMENT ON VIEW user_conversations_live IS
    'A user''s conversation list, exact: one row per (participant, conversation). Query with WHERE user_id = :me '
    'AND NOT is_deleted ORDER BY last_message_at DESC NULLS LAST.';

CREATE OR REPLACE VIEW intro_request_stats_live AS
SELECT s.user_id,
       s.requests_sent + coalesce(d.requests_sent, 0) AS requests_sent,
       s.sent_pending + coalesce(d.sent_pending, 0) AS sent_pending,
       s.sent_accepted + coalesce(d.sent_accepted, 0) AS sent_accepted,
       s.sent_declined + coalesce(d.sent_declined, 0) AS sent_declined,
       s.requests_received + coalesce(d.requests_received, 0) AS requests_received,
       s.received_pending + coalesce(d.received_pending, 0) AS received_pending,
       s.received_accepted + coalesce(d.received_accepted, 0) AS received_accepted,
       s.received_declined + coalesce(d.received_declined, 0) AS received_declined,
       greatest(s.last_updated_at, d.changed_at) AS last_updated_at,
       coalesce(d.pending_deltas, 0) AS pending_deltas
FROM intro_request_stats s
LEFT JOIN (SELECT user_id,
                  sum(requests_sent)::integer AS requests_sent,
                  sum(sent_pending)::integer AS sent_pending,
                  sum(sent_accepted)::integer AS sent_accepted,
                  sum(sent_declined)::integer AS sent_declined,
                  sum(requests_received)::integer AS requests_received,
                  sum(received_pending)::integer AS received_pending,
                  sum(received_accepted)::integer AS received_accepted,
                  sum(received_declined)::integer AS received_declined,
                  max(changed_at) AS changed_at,
                  count(*)::integer AS pending_deltas
           FROM intro_request_stats_deltas GROUP BY user_id) d ON d.user_id = s.user_id;
COMMENT ON VIEW intro_request_stats_live IS
    'Exact intro_request_stats: the main row plus its pending deltas.';

CREATE OR REPLACE VIEW denorm_delta_backlog AS
SELECT 'user_dashboard_stats'::text AS table_name, count(*)::bigint AS pending_deltas,
       count(DISTINCT user_id)::bigint AS keys, min(changed_at) AS oldest_delta_at
FROM user_dashboard_stats_deltas
UNION ALL
SELECT 'message_conversations_denorm', count(*), count(DISTINCT conversation_id), min(changed_at)
FROM message_conversations_denorm_deltas
UNION ALL
SELECT 'intro_request_stats', count(*), count(DISTINCT user_id), min(changed_at)
FROM intro_request_stats_deltas;
COMMENT ON VIEW denorm_delta_backlog IS
    'Deltas waiting for fold_denorm_deltas(), per table (monitoring: should stay near 0 and oldest within seconds).';

-- ---------------------------------------------------------------------------
-- Fold
-- ---------------------------------------------------------------------------

-- Lock as many of these keys' rows as possible, in lock-key order: try first
-- (free keys cost nothing), then wait up to lock_timeout for busy ones (a
-- waiting fold makes the writers' try fail, so they write deltas, and the
-- fold gets the lock at the holder's commit). A key still busy is skipped
-- until the next fold. Returns the keys locked.
CREATE OR REPLACE FUNCTION denorm_lock_keys(p_class integer, p_keys uuid[]) RETURNS uuid[]
LANGUAGE plpgsql AS $$
DECLARE
    v_key uuid;
    v_locked uuid[];
    v_waited uuid[] := '{}';
BEGIN
    -- Free keys: try-locks never wait, so their order does not matter.
    v_locked := ARRAY(SELECT k FROM unnest(p_keys) k WHERE pg_try_advisory_xact_lock(p_class, uuid_hash(k)));
    -- Busy keys (few: the hot ones), in lock-key order, each waited for at most lock_timeout.
    FOR v_key IN SELECT b.k FROM (SELECT unnest(p_keys) AS k EXCEPT SELECT unnest(v_locked)) b
                 ORDER BY uuid_hash(b.k), b.k LOOP
        BEGIN
            PERFORM pg_advisory_xact_lock(p_class, uuid_hash(v_key));
            v_waited := v_waited || v_key;
        EXCEPTION WHEN lock_not_available THEN
            NULL;  -- still busy: the next fold takes it
        END;
    END LOOP;
    RETURN v_locked || v_waited;
END
$$;

-- Called by the refresh sweep every few seconds (tasks/refresh_engine.py).
-- One fold at a time (a second caller returns 0 at once). Folds up to 5000
-- keys per table per call; each key's committed deltas are deleted and added
-- to its main row in one statement, under that row's lock, so readers of the
-- *_live views see the same values before and after. Writers never wait for
-- the fold; the fold waits at most 200 ms per busy key. Returns the number
-- of delta rows folded.
CREATE OR REPLACE FUNCTION fold_denorm_deltas() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_total integer := 0;
    v_n integer;
    v_keys uuid[];
    v_missing uuid[];
    v_lock_timeout text := current_setting('lock_timeout');
BEGIN
    IF NOT pg_try_advisory_xact_lock(731020, 0) THEN
        RETURN 0;
    END IF;
    PERFORM set_config('lock_timeout', '200ms', true);

    -- user_dashboard_stats
    v_keys := denorm_lock_keys(731001, ARRAY(SELECT DISTINCT user_id FROM user_dashboard_stats_deltas LIMIT 5000));
    IF cardinality(v_keys) > 0 THEN
        WITH d AS (
            DELETE FROM user_dashboard_stats_deltas WHERE user_id = ANY (v_keys) RETURNING *
        ), s AS (
            SELECT user_id, sum(project_count)::integer AS project_count, sum(active_projects)::integer AS active_projects,
                   sum(total_upvotes_received)::integer AS total_upvotes_received,
                   sum(total_comments_received)::integer AS total_comments_received,
                   sum(chains_joined)::integer AS chains_joined, max(changed_at) AS changed_at, count(*)::integer AS n
            FROM d GROUP BY user_id
        ), u AS (
            UPDATE user_dashboard_stats m
               SET project_count = m.project_count + s.project_count,
                   active_projects = m.active_projects + s.active_projects,
                   total_upvotes_received = m.total_upvotes_received + s.total_upvotes_received,
                   total_comments_received = m.total_comments_received + s.total_comments_received,
                   chains_joined = m.chains_joined + s.chains_joined,
                   last_updated_at = greatest(m.last_updated_at, s.changed_at)
              FROM s WHERE m.user_id = s.user_id
            RETURNING m.user_id
        )
        SELECT coalesce(sum(s.n), 0)::integer, array_agg(s.user_id) FILTER (WHERE u.user_id IS NULL)
          INTO v_n, v_missing
          FROM s LEFT JOIN u ON u.user_id = s.user_id;
        v_total := v_total + v_n;
        IF cardinality(v_missing) > 0 THEN
            -- Deltas of a key without a main row: rebuild it (if the user still exists).
            PERFORM rebuild_user_dashboard_stats(v_missing);
        END IF;
    END IF;

    -- message_conversations_denorm
    v_keys := denorm_lock_keys(731002, ARRAY(SELECT DISTINCT conversation_id FROM message_conversations_denorm_deltas LIMIT 5000));
    IF cardinality(v_keys) > 0 THEN
        WITH d AS (
            DELETE FROM message_conversations_denorm_deltas WHERE conversation_id = ANY (v_keys) RETURNING *
        ), s AS (
            SELECT conversation_id,
                   sum(message_count)::integer AS message_count,
                   sum(user1_unread_count)::integer AS user1_unread_count,
                   sum(user2_unread_count)::integer AS user2_unread_count,
                   (array_agg(last_message_id ORDER BY last_message_at DESC, last_message_id DESC)
                      FILTER (WHERE last_message_id IS NOT NULL))[1] AS last_message_id,
                   (array_agg(last_message_at ORDER BY last_message_at DESC, last_message_id DESC)
                      FILTER (WHERE last_message_id IS NOT NULL))[1] AS last_message_at,
                   (array_agg(last_message_sender_id ORDER BY last_message_at DESC, last_message_id DESC)
                      FILTER (WHERE last_message_id IS NOT NULL))[1] AS last_message_sender_id,
                   (array_agg(last_message_preview ORDER BY last_message_at DESC, last_message_id DESC)
                      FILTER (WHERE last_message_id IS NOT NULL))[1] AS last_message_preview,
                   max(changed_at) AS changed_at, count(*)::integer AS n
            FROM d GROUP BY conversation_id
        ), u AS (
            UPDATE message_conversations_denorm m
               SET message_count = m.message_count + s.message_count,
                   user1_unread_count = m.user1_unread_count + s.user1_unread_count,
                   user2_unread_count = m.user2_unread_count + s.user2_unread_count,
                   last_message_id = CASE WHEN s.last_message_id IS NOT NULL AND (m.last_message_id IS NULL
                                            OR (s.last_message_at, s.last_message_id) > (m.last_message_at, m.last_message_id))
                                          THEN s.last_message_id ELSE m.last_message_id END,
                   last_message_at = CASE WHEN s.last_message_id IS NOT NULL AND (m.last_message_id IS NULL
                                            OR (s.last_message_at, s.last_message_id) > (m.last_message_at, m.last_message_id))
                                          THEN s.last_message_at ELSE m.last_message_at END,
                   last_message_sender_id = CASE WHEN s.last_message_id IS NOT NULL AND (m.last_message_id IS NULL
                                            OR (s.last_message_at, s.last_message_id) > (m.last_message_at, m.last_message_id))
                                          THEN s.last_message_sender_id ELSE m.last_message_sender_id END,
                   last_message_preview = CASE WHEN s.last_message_id IS NOT NULL AND (m.last_message_id IS NULL
                                            OR (s.last_message_at, s.last_message_id) > (m.last_message_at, m.last_message_id))
                                          THEN s.last_message_preview ELSE m.last_message_preview END,
                   last_updated_at = greatest(m.last_updated_at, s.changed_at)
              FROM s WHERE m.conversation_id = s.conversation_id
            RETURNING m.conversation_id
        )
        SELECT coalesce(sum(s.n), 0)::integer, array_agg(s.conversation_id) FILTER (WHERE u.conversation_id IS NULL)
          INTO v_n, v_missing
          FROM s LEFT JOIN u ON u.conversation_id = s.conversation_id;
        v_total := v_total + v_n;
        IF cardinality(v_missing) > 0 THEN
            PERFORM rebuild_message_conversations_denorm(v_missing);
        END IF;
    END IF;

    -- intro_request_stats
    v_keys := denorm_lock_keys(731003, ARRAY(SELECT DISTINCT user_id FROM intro_request_stats_deltas LIMIT 5000));
    IF cardinality(v_keys) > 0 THEN
        WITH d AS (
            DELETE FROM intro_request_stats_deltas WHERE user_id = ANY (v_keys) RETURNING *
        ), s AS (
            SELECT user_id,
                   sum(requests_sent)::integer AS requests_sent, sum(sent_pending)::integer AS sent_pending,
                   sum(sent_accepted)::integer AS sent_accepted, sum(sent_declined)::integer AS sent_declined,
                   sum(requests_received)::integer AS requests_received,
                   sum(received_pending)::integer AS received_pending,
                   sum(received_accepted)::integer AS received_accepted,
                   sum(received_declined)::integer AS received_declined,
                   max(changed_at) AS changed_at, count(*)::integer AS n
            FROM d GROUP BY user_id
        ), u AS (
            UPDATE intro_request_stats m
               SET requests_sent = m.requests_sent + s.requests_sent,
                   sent_pending = m.sent_pending + s.sent_pending,
                   sent_accepted = m.sent_accepted + s.sent_accepted,
                   sent_declined = m.sent_declined + s.sent_declined,
                   requests_received = m.requests_received + s.requests_received,
                   received_pending = m.received_pending + s.received_pending,
                   received_accepted = m.received_accepted + s.received_accepted,
                   received_declined = m.received_declined + s.received_declined,
                   last_updated_at = greatest(m.last_updated_at, s.changed_at)
              FROM s WHERE m.user_id = s.user_id
            RETURNING m.user_id
        )
        SELECT coalesce(sum(s.n), 0)::integer, array_agg(s.user_id) FILTER (WHERE u.user_id IS NULL)
          INTO v_n, v_missing
          FROM s LEFT JOIN u ON u.user_id = s.user_id;
        v_total := v_total + v_n;
        IF cardinality(v_missing) > 0 THEN
            PERFORM rebuild_intro_request_stats(v_missing);
        END IF;
    END IF;

    PERFORM set_config('lock_timeout', v_lock_timeout, true);

    -- project_stats (0012_project_stats.sql, the read models' per-project
    -- counters, same protocol): folded here so that one call folds every
    -- table of denorm_delta_backlog. Resolved at run time, so this file still
    -- runs on its own before 0012 exists.
    IF to_regprocedure('fold_project_stats_deltas()') IS NOT NULL THEN
        v_total := v_total + fold_project_stats_deltas();
    END IF;
    RETURN v_total;
END
$$;
COMMENT ON FUNCTION fold_denorm_deltas() IS
    'Move committed deltas into the main rows of the three Phase 1 tables and project_stats (safe beside writers '
    'and other folds). Returns the number of delta rows folded.';

COMMIT;
