-- Named queries of api/resources/me.py: the signed-in user's rows of the
-- phase 1 tables, read through their *_live views (main row + pending delta
-- rows: exact in one snapshot even while hot rows take deltas, see 0010's
-- header). Each is a primary-key read; the user_id qual is pushed into the
-- delta aggregation (index on <table>_deltas (user_id)).

-- name: dashboard
SELECT d.user_id, u.username, u.name,
       d.project_count, d.active_projects, d.total_upvotes_received, d.total_comments_received,
       d.chains_joined, d.last_updated_at,
       i.requests_sent, i.sent_pending, i.sent_accepted, i.sent_declined,
       i.requests_received, i.received_pending, i.received_accepted, i.received_declined
FROM user_dashboard_stats_live d
JOIN users u ON u.id = d.user_id AND NOT u.is_deleted
LEFT JOIN intro_request_stats_live i ON i.user_id = d.user_id
WHERE d.user_id = CAST(:user_id AS uuid);

-- name: conversations
-- Newest message first; conversations without messages last. The sort key is
-- coalesced so keyset paging has no NULLs to step around. The other
-- participant's name: primary-key lookups for at most one page of rows.
SELECT c.conversation_id, c.other_user_id, o.username AS other_username, o.name AS other_name,
       c.message_count, c.unread_count, c.last_message_id, c.last_message_at,
       c.last_message_sender_id, c.last_message_preview,
       coalesce(c.last_message_at, '0001-01-01 00:00:00+00'::timestamptz) AS sort_at
FROM user_conversations_live c
LEFT JOIN users o ON o.id = c.other_user_id
WHERE c.user_id = CAST(:user_id AS uuid) AND NOT c.is_deleted
  AND (CAST(:after_at AS timestamptz) IS NULL
       OR (coalesce(c.last_message_at, '0001-01-01 00:00:00+00'::timestamptz), c.conversation_id)
          < (CAST(:after_at AS timestamptz), CAST(:after_id AS uuid)))
ORDER BY coalesce(c.last_message_at, '0001-01-01 00:00:00+00'::timestamptz) DESC, c.conversation_id DESC
LIMIT :lim;

-- name: intro_stats
SELECT i.user_id, i.requests_sent, i.sent_pending, i.sent_accepted, i.sent_declined,
       i.requests_received, i.received_pending, i.received_accepted, i.received_declined,
       i.last_updated_at
FROM intro_request_stats_live i
JOIN users u ON u.id = i.user_id AND NOT u.is_deleted
WHERE i.user_id = CAST(:user_id AS uuid);
