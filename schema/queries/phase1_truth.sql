-- Named queries for the reconciliation of the Phase 1 tables (and anything
-- else that must compare them with the base tables). Bind :ids as a list of
-- uuid strings (psycopg2 sends a text[]; the CAST makes it uuid[]).
--
-- *_truth   recompute the rows of these keys from the base tables. The
--           definitions live in 0010_phase1_denormalized_tables.sql (functions
--           <table>_truth(keys)) and are documented there and in COMMENT ON
--           COLUMN; the backfill uses the same definitions (<table>_truth_all()).
-- *_stored  what the system serves for these keys: the *_live views (main row
--           plus pending deltas), which is what must equal the truth.
--
-- Compare a *_truth and a *_stored result only when both ran in ONE snapshot
-- (one REPEATABLE READ transaction, or one statement): between two READ
-- COMMITTED statements a concurrent write can land and look like drift.
--
-- Repair: never UPDATE the main tables directly (pending deltas would then be
-- counted twice, and a concurrent writer could be overwritten). Call
--   SELECT rebuild_user_dashboard_stats(CAST(:ids AS uuid[]))
--   SELECT rebuild_message_conversations_denorm(CAST(:ids AS uuid[]))
--   SELECT rebuild_intro_request_stats(CAST(:ids AS uuid[]))
--   SELECT rebuild_project_stats(CAST(:ids AS uuid[]))          (0012, per project)
-- in a READ COMMITTED transaction: each takes the keys' row locks, drops their
-- visible deltas and writes the truth in one statement, exact beside writers.

-- name: user_dashboard_stats_truth
SELECT user_id, project_count, active_projects, total_upvotes_received, total_comments_received, chains_joined
FROM user_dashboard_stats_truth(CAST(:ids AS uuid[]))
ORDER BY user_id;

-- name: user_dashboard_stats_stored
SELECT user_id, project_count, active_projects, total_upvotes_received, total_comments_received, chains_joined
FROM user_dashboard_stats_live
WHERE user_id = ANY (CAST(:ids AS uuid[]))
ORDER BY user_id;

-- name: message_conversations_denorm_truth
SELECT conversation_id, user1_id, user2_id, is_deleted, message_count, user1_unread_count, user2_unread_count,
       last_message_id, last_message_at, last_message_sender_id, last_message_preview
FROM message_conversations_denorm_truth(CAST(:ids AS uuid[]))
ORDER BY conversation_id;

-- name: message_conversations_denorm_stored
SELECT conversation_id, user1_id, user2_id, is_deleted, message_count, user1_unread_count, user2_unread_count,
       last_message_id, last_message_at, last_message_sender_id, last_message_preview
FROM message_conversations_denorm_live
WHERE conversation_id = ANY (CAST(:ids AS uuid[]))
ORDER BY conversation_id;

-- name: intro_request_stats_truth
SELECT user_id, requests_sent, sent_pending, sent_accepted, sent_declined, requests_received, received_pending,
       received_accepted, received_declined
FROM intro_request_stats_truth(CAST(:ids AS uuid[]))
ORDER BY user_id;

-- name: intro_request_stats_stored
SELECT user_id, requests_sent, sent_pending, sent_accepted, sent_declined, requests_received, received_pending,
       received_accepted, received_declined
FROM intro_request_stats_live
WHERE user_id = ANY (CAST(:ids AS uuid[]))
ORDER BY user_id;

-- name: project_stats_truth
SELECT project_id, upvote_count, comment_count
FROM project_stats_truth(CAST(:ids AS uuid[]))
ORDER BY project_id;

-- name: project_stats_stored
SELECT project_id, upvote_count, comment_count
FROM project_stats_live
WHERE project_id = ANY (CAST(:ids AS uuid[]))
ORDER BY project_id;

-- name: user_ids_batch
-- Key batches for a full pass, in key order; "after" is the last key of the
-- previous batch (the nil uuid 00000000-0000-0000-0000-000000000000 to start).
-- Keys come from the base tables, so a missing row shows up as a difference.
SELECT id FROM users WHERE id > CAST(:after AS uuid) ORDER BY id LIMIT :lim;

-- name: conversation_ids_batch
SELECT id FROM conversations WHERE id > CAST(:after AS uuid) ORDER BY id LIMIT :lim;

-- name: user_dashboard_stats_rebuild
SELECT rebuild_user_dashboard_stats(CAST(:ids AS uuid[]));

-- name: message_conversations_denorm_rebuild
SELECT rebuild_message_conversations_denorm(CAST(:ids AS uuid[]));

-- name: intro_request_stats_rebuild
SELECT rebuild_intro_request_stats(CAST(:ids AS uuid[]));

-- name: project_stats_rebuild
SELECT rebuild_project_stats(CAST(:ids AS uuid[]));
