-- Named write queries of the API (api/resources/projects.py). Each runs in
-- the request's write transaction; row triggers on the base tables keep the
-- phase 1 counter tables and queue view refreshes in that same transaction.

-- name: user_live
SELECT 1 FROM users WHERE id = CAST(:user_id AS uuid) AND NOT is_deleted;

-- name: chain_live
SELECT 1 FROM chains WHERE id = CAST(:chain_id AS uuid) AND NOT is_deleted;

-- name: upvote_preconditions
-- The signed-in user exists and is not deleted; the project is live (the same
-- rule as the feed: not deleted, author not deleted).
SELECT coalesce((SELECT NOT u.is_deleted FROM users u WHERE u.id = CAST(:user_id AS uuid)), false) AS user_ok,
       EXISTS (SELECT 1
               FROM projects p
               JOIN users a ON a.id = p.user_id AND NOT a.is_deleted
               WHERE p.id = CAST(:project_id AS uuid) AND NOT p.is_deleted) AS project_ok;

-- name: upvote_insert
-- One statement: a row back means "now upvoted". clock_timestamp() is read
-- while this transaction holds the row, so it orders this change after every
-- earlier toggle of the same (user, project) (used by the Redis cache).
INSERT INTO project_upvotes (user_id, project_id)
VALUES (CAST(:user_id AS uuid), CAST(:project_id AS uuid))
ON CONFLICT (user_id, project_id) DO NOTHING
RETURNING (extract(epoch FROM clock_timestamp()) * 1000000)::bigint AS changed_us;

-- name: upvote_delete
-- One statement: a row back means "now not upvoted".
DELETE FROM project_upvotes
WHERE user_id = CAST(:user_id AS uuid) AND project_id = CAST(:project_id AS uuid)
RETURNING (extract(epoch FROM clock_timestamp()) * 1000000)::bigint AS changed_us;

-- name: upvote_count
-- Exact count after the change (index-only scan of idx_project_upvotes_project).
SELECT count(*) FROM project_upvotes WHERE project_id = CAST(:project_id AS uuid);

-- name: project_insert
INSERT INTO projects (user_id, chain_id, title, description, tags, url)
VALUES (CAST(:user_id AS uuid), CAST(:chain_id AS uuid), :title, :description, CAST(:tags AS text[]), :url)
RETURNING id, title, description, tags, url, chain_id, user_id AS author_id, created_at;

-- name: comment_insert
INSERT INTO project_comments (project_id, user_id, body)
VALUES (CAST(:project_id AS uuid), CAST(:user_id AS uuid), :body)
RETURNING id, project_id, user_id, body, created_at;
