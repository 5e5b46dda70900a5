-- migrate: no-transaction
-- Phase 4: critical indexes on the base tables, built CONCURRENTLY (writes go
-- on while they build). psql-runnable:
--   psql -v ON_ERROR_STOP=0 -f schema/migrations/0040_phase4_critical_indexes.sql
-- One simple statement per line-ending semicolon, no transaction and no DO
-- blocks, so `python -m schema migrate` can run them one by one, report a
-- failing one and go on, and drop and rebuild an INVALID leftover of an
-- earlier failed build (IF NOT EXISTS alone would keep a broken index).
--
-- Every index costs every write to its table, so each one below names the
-- reads that use it. Already in 0000 (not repeated): project_upvotes PK
-- (user_id, project_id) serves "has this user upvoted" and a user's upvotes;
-- idx_project_upvotes_project, idx_project_comments_project,
-- idx_messages_conversation (conversation_id, created_at),
-- idx_intro_requests_investor/requester, idx_chain_members_user,
-- idx_chain_posts_chain, idx_post_upvotes_post, idx_post_comments_post;
-- conversations UNIQUE (user1_id, user2_id) leads with user1_id.
-- The materialized views' refreshes read whole tables (sequential scans and
-- hash joins); they need no base-table index. No index on a column that the
-- Phase 1 triggers update often.

-- A builder's projects, newest first, live ones only (guide Step 4.3: WHERE
-- user_id = ? AND is_deleted = FALSE ORDER BY created_at DESC LIMIT 10 is a
-- plain index scan that stops after 10 entries). Also the projects.user_id
-- foreign key (a user delete cascades without a scan) and the per-user truth
-- queries of the reconciliation (user_dashboard_stats_truth: WHERE user_id = ANY(...)).
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_projects_user_deleted ON projects (user_id, is_deleted, created_at DESC);

-- Foreign keys to users whose ON DELETE CASCADE would otherwise scan the
-- whole child table once per deleted user; each also serves "my ..." reads.
-- project_comments.user_id: a user's comments.
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_project_comments_user ON project_comments (user_id);
-- messages.sender_id: a user's sent messages.
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_messages_sender ON messages (sender_id);
-- conversations.user2_id (user1_id is the leading column of the UNIQUE pair):
-- also the conversations of a user on the user2 side.
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_conversations_user2 ON conversations (user2_id);
-- chain_posts.user_id: a user's forum posts.
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_chain_posts_user ON chain_posts (user_id);
-- post_comments.user_id: a user's forum comments.
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_post_comments_user ON post_comments (user_id);
-- chains.owner_id (ON DELETE SET NULL): chains a user owns.
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_chains_owner ON chains (owner_id);

-- projects.chain_id (ON DELETE SET NULL): a chain hard delete nulls its
-- projects without a scan of all projects; also a chain's projects.
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_projects_chain ON projects (chain_id);

-- intro_requests.project_id (ON DELETE SET NULL): a project hard delete
-- updates its intro requests without scanning them all.
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_intro_requests_project ON intro_requests (project_id);
