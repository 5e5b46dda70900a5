-- Named queries of api/cache.py (RedisUserCache). Primary-key range scans on
-- project_upvotes (user_id, project_id): cheap whatever the table's size.

-- name: user_upvoted_ids
SELECT project_id::text FROM project_upvotes WHERE user_id = CAST(:user_id AS uuid);

-- name: user_upvoted_among
SELECT project_id::text
FROM project_upvotes
WHERE user_id = CAST(:user_id AS uuid) AND project_id = ANY(CAST(:ids AS uuid[]));
