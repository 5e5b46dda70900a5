-- Named queries of api/resources/me.py: the signed-in user's rows of the
-- phase 1 trigger-kept tables (primary-key reads). PLACEHOLDER until 0010 lands.

-- name: dashboard
SELECT CAST(:user_id AS uuid) AS user_id WHERE false;

-- name: conversations
SELECT CAST(:user_id AS uuid) AS conversation_id, now() AS sort_at WHERE false LIMIT :lim;

-- name: intro_stats
SELECT CAST(:user_id AS uuid) AS user_id WHERE false;
