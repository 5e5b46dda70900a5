-- Phase 1 backfill: recompute the three denormalized tables from the base tables.
--   psql -v ON_ERROR_STOP=1 -f schema/migrations/0011_phase1_backfill_data.sql
-- Prints one line per table:
--   NOTICE:  Backfilled N rows in user_dashboard_stats
--   NOTICE:  Backfilled N rows in message_conversations_denorm
--   NOTICE:  Backfilled N rows in intro_request_stats
-- N is the number of rows the table holds afterwards (one per user, one per
-- conversation, one per user).
--
-- Safe to re-run at any time (the seed generator runs it after loading with
-- triggers disabled): one transaction, set-based upserts from the
-- *_truth_all() functions of 0010 (the same definitions the triggers keep and
-- the reconciliation checks), pending deltas cleared. Rows already right are
-- not rewritten.
--
-- Concurrency: the LOCK below (EXCLUSIVE: reads go on, writes wait) waits for
-- every in-flight transaction that changed these tables and holds back every
-- later one until COMMIT. Any base-table write that moves a counter also
-- writes one of these tables in the same transaction, so it is either
-- committed before the recompute's snapshot (and counted) or blocked until
-- after COMMIT (and applied on top by its trigger). Writers pause for the
-- duration (seconds at bench scale); run it in a quiet period. A transaction
-- that already wrote one of these tables and then waits for another can
-- deadlock with the LOCK; Postgres aborts one of the two (retry it).
BEGIN;

-- Hash aggregates over millions of upvotes fit in memory instead of spilling.
SET LOCAL work_mem = '256MB';

LOCK TABLE user_dashboard_stats, user_dashboard_stats_deltas,
           message_conversations_denorm, message_conversations_denorm_deltas,
           intro_request_stats, intro_request_stats_deltas
    IN EXCLUSIVE MODE;

DO $$
DECLARE
    n bigint;
BEGIN
    DELETE FROM user_dashboard_stats_deltas;
    INSERT INTO user_dashboard_stats AS s (user_id, project_count, active_projects, total_upvotes_received,
                                           total_comments_received, chains_joined, last_updated_at)
    SELECT t.user_id, t.project_count, t.active_projects, t.total_upvotes_received,
           t.total_comments_received, t.chains_joined, now()
    FROM user_dashboard_stats_truth_all() t
    ON CONFLICT (user_id) DO UPDATE
        SET project_count = EXCLUDED.project_count,
            active_projects = EXCLUDED.active_projects,
            total_upvotes_received = EXCLUDED.total_upvotes_received,
            total_comments_received = EXCLUDED.total_comments_received,
            chains_joined = EXCLUDED.chains_joined,
            last_updated_at = EXCLUDED.last_updated_at
        WHERE (s.project_count, s.active_projects, s.total_upvotes_received, s.total_comments_received,
               s.chains_joined)
              IS DISTINCT FROM
              (EXCLUDED.project_count, EXCLUDED.active_projects, EXCLUDED.total_upvotes_received,
               EXCLUDED.total_comments_received, EXCLUDED.chains_joined);
    SELECT count(*) INTO n FROM user_dashboard_stats;
    RAISE NOTICE 'Backfilled % rows in user_dashboard_stats', n;

    DELETE FROM message_conversations_denorm_deltas;
    INSERT INTO message_conversations_denorm AS s (
        conversation_id, user1_id, user2_id, is_deleted, message_count, user1_unread_count, user2_unread_count,
        last_message_id, last_message_at, last_message_sender_id, last_message_preview, last_updated_at)
    SELECT t.conversation_id, t.user1_id, t.user2_id, t.is_deleted, t.message_count, t.user1_unread_count,
           t.user2_unread_count, t.last_message_id, t.last_message_at, t.last_message_sender_id,
           t.last_message_preview, now()
    FROM message_conversations_denorm_truth_all() t
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
            last_updated_at = EXCLUDED.last_updated_at
        WHERE (s.user1_id, s.user2_id, s.is_deleted, s.message_count, s.user1_unread_count, s.user2_unread_count,
               s.last_message_id, s.last_message_at, s.last_message_sender_id, s.last_message_preview)
              IS DISTINCT FROM
              (EXCLUDED.user1_id, EXCLUDED.user2_id, EXCLUDED.is_deleted, EXCLUDED.message_count,
               EXCLUDED.user1_unread_count, EXCLUDED.user2_unread_count, EXCLUDED.last_message_id,
               EXCLUDED.last_message_at, EXCLUDED.last_message_sender_id, EXCLUDED.last_message_preview);
    SELECT count(*) INTO n FROM message_conversations_denorm;
    RAISE NOTICE 'Backfilled % rows in message_conversations_denorm', n;

    DELETE FROM intro_request_stats_deltas;
    INSERT INTO intro_request_stats AS s (user_id, requests_sent, sent_pending, sent_accepted, sent_declined,
                                          requests_received, received_pending, received_accepted,
                                          received_declined, last_updated_at)
    SELECT t.user_id, t.requests_sent, t.sent_pending, t.sent_accepted, t.sent_declined, t.requests_received,
           t.received_pending, t.received_accepted, t.received_declined, now()
    FROM intro_request_stats_truth_all() t
    ON CONFLICT (user_id) DO UPDATE
        SET requests_sent = EXCLUDED.requests_sent,
            sent_pending = EXCLUDED.sent_pending,
            sent_accepted = EXCLUDED.sent_accepted,
            sent_declined = EXCLUDED.sent_declined,
            requests_received = EXCLUDED.requests_received,
            received_pending = EXCLUDED.received_pending,
            received_accepted = EXCLUDED.received_accepted,
            received_declined = EXCLUDED.received_declined,
            last_updated_at = EXCLUDED.last_updated_at
        WHERE (s.requests_sent, s.sent_pending, s.sent_accepted, s.sent_declined, s.requests_received,
               s.received_pending, s.received_accepted, s.received_declined)
              IS DISTINCT FROM
              (EXCLUDED.requests_sent, EXCLUDED.sent_pending, EXCLUDED.sent_accepted, EXCLUDED.sent_declined,
               EXCLUDED.requests_received, EXCLUDED.received_pending, EXCLUDED.received_accepted,
               EXCLUDED.received_declined);
    SELECT count(*) INTO n FROM intro_request_stats;
    RAISE NOTICE 'Backfilled % rows in intro_request_stats', n;
END
$$;

COMMIT;
