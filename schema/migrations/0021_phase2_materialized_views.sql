-- Phase 2, part 2: the five read-model materialized views, their indexes,
-- their registry and dependency rows, and the refresh-request triggers.
--   psql -v ON_ERROR_STOP=1 -f schema/migrations/0021_phase2_materialized_views.sql
--
-- Rules every view here follows (DESIGN.md, known traps):
--   * a UNIQUE index on plain columns without WHERE, so REFRESH ... CONCURRENTLY works;
--   * no column depends on now(), random() or other volatile input: a refresh
--     with nothing changed then rewrites nothing, and one upvote rewrites one
--     row (feed, details) or the rows whose rank moved (leaderboards);
--   * soft-deleted things disappear: deleted projects, projects of deleted
--     users, deleted comments, deleted chains and posts;
--   * scores are float8 (date_part returns float8; extract() returns numeric
--     in PG >= 14, several times slower over 500k rows, see limits.md).
--
-- The trending ("hot") score is the news-site one: the log of activity plus
-- the creation time in units of 12.5 hours,
--     log10(greatest(upvotes + 2 * comments, 1)) + epoch(created_at) / 45000
-- so ten times the activity is worth 12.5 hours of recency. It never changes
-- while the data do not, and ordering by it favours recent projects.
--
-- Per-project counts come from project_stats_live (0012: trigger-kept
-- counters, exact in the writing transaction), not from counting the base
-- tables: at bench scale counting 5M upvotes and 2M comments was 1.5 s of
-- every refresh of each of these views. (mv_project_details holds no counts
-- at all: the API reads them live, see below.) The registry still lists
-- project_upvotes and project_comments as the dependencies (their request
-- triggers ask for the refresh); project_stats has no request trigger of its
-- own, so a fold of its deltas (which changes no live count) requests nothing.
--
-- Two things keep REFRESH ... CONCURRENTLY of the 500k-row views fast at
-- bench scale (measured on Postgres 15, see bench/read_models.py):
--   * the counts are one merge/hash join with project_stats_live (above);
--   * refresh_sentinel, a column that is always NULL. Before diffing,
--     CONCURRENTLY checks the new contents for duplicate rows, but only among
--     rows without NULLs, by sorting all of them (2 of 4 s for the feed). Our
--     rows are one per project id by construction and the unique index on id
--     rejects duplicates anyway, so a NULL in every row turns that check into a
--     plain scan. The diff itself compares rows with *=, which treats NULLs as
--     equal, so it still finds exactly the changed rows. Readers ignore it.
BEGIN;

-- ---------------------------------------------------------------------------
-- mv_feed_projects: the feed, one row per live project. Kept narrow: the
-- ranking (counts, created_at, trending_score), the title, and the author and
-- chain by id; no description, tags or display names. CONCURRENTLY recomputes
-- the whole query and diffs every row on each refresh, so every byte here
-- costs on every refresh: at bench scale (489k rows, 2 CPUs, nothing changed)
-- this shape refreshes in 1.2-1.3 s against 1.7-1.8 s with the author's
-- username and name and the chain's name in every row (same database, same
-- session). The API resolves those names for the page it serves by primary
-- key (users, chains: schema/queries/api_reads.sql), so a rename shows at
-- once; long text is in mv_project_details. chain_id is NULL when the chain
-- is deleted, as before.
-- ---------------------------------------------------------------------------
CREATE MATERIALIZED VIEW IF NOT EXISTS mv_feed_projects AS
SELECT p.id,
       p.title,
       p.user_id AS author_id,
       c.id AS chain_id,
       coalesce(ps.upvote_count, 0)::integer AS upvote_count,
       coalesce(ps.comment_count, 0)::integer AS comment_count,
       p.created_at,
       log(greatest(coalesce(ps.upvote_count, 0) + 2 * coalesce(ps.comment_count, 0), 1)::float8)
         + date_part('epoch', p.created_at) / 45000.0 AS trending_score,
       NULL::boolean AS refresh_sentinel
FROM projects p
JOIN users u ON u.id = p.user_id AND NOT u.is_deleted
LEFT JOIN chains c ON c.id = p.chain_id AND NOT c.is_deleted
LEFT JOIN project_stats_live ps ON ps.project_id = p.id
WHERE NOT p.is_deleted;

CREATE UNIQUE INDEX IF NOT EXISTS mv_feed_projects_id ON mv_feed_projects (id);
-- "Trending" and "newest", both with id as the keyset-pagination tiebreaker:
--   WHERE (trending_score, id) < (:score, :id) ORDER BY trending_score DESC, id DESC LIMIT n
CREATE INDEX IF NOT EXISTS mv_feed_projects_trending ON mv_feed_projects (trending_score DESC, id DESC);
CREATE INDEX IF NOT EXISTS mv_feed_projects_newest ON mv_feed_projects (created_at DESC, id DESC);
-- No index by chain: no read lists a chain's projects, and each index costs every changed row.

-- ---------------------------------------------------------------------------
-- mv_leaderboard_projects: the top 1000 live projects by upvotes. rank is
-- unique (ties broken by comments, then age, then id) so pages are stable.
-- ---------------------------------------------------------------------------
CREATE MATERIALIZED VIEW IF NOT EXISTS mv_leaderboard_projects AS
WITH scored AS (
    SELECT p.id, p.title, p.user_id, p.chain_id, p.created_at,
           coalesce(ps.upvote_count, 0)::integer AS upvote_count,
           coalesce(ps.comment_count, 0)::integer AS comment_count
    FROM projects p
    JOIN users u ON u.id = p.user_id AND NOT u.is_deleted
    LEFT JOIN project_stats_live ps ON ps.project_id = p.id
    WHERE NOT p.is_deleted
    ORDER BY upvote_count DESC, comment_count DESC, p.created_at, p.id
    LIMIT 1000
)
SELECT (row_number() OVER (ORDER BY s.upvote_count DESC, s.comment_count DESC, s.created_at, s.id))::integer AS rank,
       s.id,
       s.title,
       s.user_id AS author_id,
       u.username AS author_username,
       u.name AS author_name,
       c.id AS chain_id,
       c.name AS chain_name,
       s.upvote_count,
       s.comment_count,
       s.created_at
FROM scored s
JOIN users u ON u.id = s.user_id
LEFT JOIN chains c ON c.id = s.chain_id AND NOT c.is_deleted;

CREATE UNIQUE INDEX IF NOT EXISTS mv_leaderboard_projects_id ON mv_leaderboard_projects (id);
CREATE UNIQUE INDEX IF NOT EXISTS mv_leaderboard_projects_rank ON mv_leaderboard_projects (rank);

-- ---------------------------------------------------------------------------
-- mv_leaderboard_builders: the top 1000 live users by upvotes received on
-- their live projects.
-- ---------------------------------------------------------------------------
CREATE MATERIALIZED VIEW IF NOT EXISTS mv_leaderboard_builders AS
WITH per_project AS (
    SELECT p.user_id, p.created_at,
           coalesce(ps.upvote_count, 0) AS upvotes,
           coalesce(ps.comment_count, 0) AS comments
    FROM projects p
    LEFT JOIN project_stats_live ps ON ps.project_id = p.id
    WHERE NOT p.is_deleted
),
per_builder AS (
    SELECT pp.user_id,
           count(*)::integer AS project_count,
           sum(pp.upvotes)::bigint AS upvotes_received,
           sum(pp.comments)::bigint AS comments_received,
           max(pp.created_at) AS latest_project_at
    FROM per_project pp
    JOIN users u ON u.id = pp.user_id AND NOT u.is_deleted
    GROUP BY pp.user_id
    ORDER BY upvotes_received DESC, project_count DESC, pp.user_id
    LIMIT 1000
)
SELECT (row_number() OVER (ORDER BY b.upvotes_received DESC, b.project_count DESC, b.user_id))::integer AS rank,
       b.user_id,
       u.username,
       u.name,
       b.project_count,
       b.upvotes_received,
       b.comments_received,
       b.latest_project_at
FROM per_builder b
JOIN users u ON u.id = b.user_id;

CREATE UNIQUE INDEX IF NOT EXISTS mv_leaderboard_builders_user ON mv_leaderboard_builders (user_id);
CREATE UNIQUE INDEX IF NOT EXISTS mv_leaderboard_builders_rank ON mv_leaderboard_builders (rank);

-- ---------------------------------------------------------------------------
-- mv_chains_discovery: one row per live chain with member and activity counts.
-- activity_count = live posts + live comments on them + live projects in the chain.
-- ---------------------------------------------------------------------------
CREATE MATERIALIZED VIEW IF NOT EXISTS mv_chains_discovery AS
WITH posts AS (
    SELECT cp.chain_id, count(*) AS n, max(cp.created_at) AS last_at
    FROM chain_posts cp
    JOIN users u ON u.id = cp.user_id AND NOT u.is_deleted
    WHERE NOT cp.is_deleted
    GROUP BY cp.chain_id
),
post_comment_counts AS (
    SELECT cp.chain_id, count(*) AS n, max(pc.created_at) AS last_at
    FROM post_comments pc
    JOIN chain_posts cp ON cp.id = pc.post_id AND NOT cp.is_deleted
    WHERE NOT pc.is_deleted
    GROUP BY cp.chain_id
),
chain_projects AS (
    SELECT p.chain_id, count(*) AS n, max(p.created_at) AS last_at
    FROM projects p
    JOIN users u ON u.id = p.user_id AND NOT u.is_deleted
    WHERE NOT p.is_deleted AND p.chain_id IS NOT NULL
    GROUP BY p.chain_id
),
members AS (
    SELECT chain_id, count(*) AS n FROM chain_members GROUP BY chain_id
)
SELECT c.id,
       c.slug,
       c.name,
       left(c.description, 280) AS description,
       c.owner_id,
       o.username AS owner_username,
       coalesce(m.n, 0)::integer AS member_count,
       coalesce(po.n, 0)::integer AS post_count,
       coalesce(pc.n, 0)::integer AS comment_count,
       coalesce(pr.n, 0)::integer AS project_count,
       (coalesce(po.n, 0) + coalesce(pc.n, 0) + coalesce(pr.n, 0))::integer AS activity_count,
       greatest(po.last_at, pc.last_at, pr.last_at) AS last_activity_at,
       c.created_at
FROM chains c
LEFT JOIN users o ON o.id = c.owner_id AND NOT o.is_deleted
LEFT JOIN members m ON m.chain_id = c.id
LEFT JOIN posts po ON po.chain_id = c.id
LEFT JOIN post_comment_counts pc ON pc.chain_id = c.id
LEFT JOIN chain_projects pr ON pr.chain_id = c.id
WHERE NOT c.is_deleted;

CREATE UNIQUE INDEX IF NOT EXISTS mv_chains_discovery_id ON mv_chains_discovery (id);
CREATE UNIQUE INDEX IF NOT EXISTS mv_chains_discovery_slug ON mv_chains_discovery (slug);
CREATE INDEX IF NOT EXISTS mv_chains_discovery_members ON mv_chains_discovery (member_count DESC, id);
CREATE INDEX IF NOT EXISTS mv_chains_discovery_activity ON mv_chains_discovery (activity_count DESC, id);
CREATE INDEX IF NOT EXISTS mv_chains_discovery_recent ON mv_chains_discovery (last_activity_at DESC NULLS LAST, id);

-- ---------------------------------------------------------------------------
-- mv_project_details: the project page's content, one wide row per live
-- project (description, tags, url, author, chain). No counts: the page reads
-- them live from project_stats_live by primary key (exact at once), so votes
-- and comments never ask for a refresh of this, the widest view (263 MB at
-- bench scale, 5-6 s per refresh; under a vote stream it was refreshed every
-- window). It depends only on projects, users and chains.
-- ---------------------------------------------------------------------------
CREATE MATERIALIZED VIEW IF NOT EXISTS mv_project_details AS
SELECT p.id,
       p.title,
       p.description,
       p.tags,
       p.url,
       p.user_id AS author_id,
       u.username AS author_username,
       u.name AS author_name,
       c.id AS chain_id,
       c.slug AS chain_slug,
       c.name AS chain_name,
       p.created_at,
       p.updated_at,
       NULL::boolean AS refresh_sentinel
FROM projects p
JOIN users u ON u.id = p.user_id AND NOT u.is_deleted
LEFT JOIN chains c ON c.id = p.chain_id AND NOT c.is_deleted
WHERE NOT p.is_deleted;

CREATE UNIQUE INDEX IF NOT EXISTS mv_project_details_id ON mv_project_details (id);
-- A builder's projects, newest first.
CREATE INDEX IF NOT EXISTS mv_project_details_author ON mv_project_details (author_id, created_at DESC, id DESC);

-- ---------------------------------------------------------------------------
-- Registry, dependencies, request triggers
-- ---------------------------------------------------------------------------
-- Defaults: max_wait = debounce window, i.e. the window is a batching period:
-- a view is refreshed one window after its oldest pending request, however
-- many requests follow (on a site that never stops writing, a "quiet" window
-- never comes, so a larger max_wait would simply be the staleness). Staleness
-- is then bounded by window + sweep interval + the refresh itself (+ the end
-- of a refresh already running). Raise max_wait above the window to wait for
-- bursts to settle instead. Windows grow with a view's refresh cost; every one
-- stays well under the health check's 1 minute.
INSERT INTO mv_registry (view_name, debounce_seconds, max_wait_seconds, refresh_order, description) VALUES
    ('mv_feed_projects',        10, 10, 10, 'Project feed: trending and newest, one row per live project'),
    ('mv_leaderboard_projects', 20, 20, 20, 'Top 1000 projects by upvotes'),
    ('mv_leaderboard_builders', 20, 20, 30, 'Top 1000 builders by upvotes received'),
    ('mv_chains_discovery',     30, 30, 40, 'Chains with member and activity counts'),
    ('mv_project_details',      20, 20, 50, 'Project pages (content; counts are read live): one row per live project')
ON CONFLICT (view_name) DO NOTHING;

INSERT INTO mv_dependencies (view_name, table_name) VALUES
    ('mv_feed_projects', 'projects'),
    ('mv_feed_projects', 'users'),
    ('mv_feed_projects', 'chains'),
    ('mv_feed_projects', 'project_upvotes'),
    ('mv_feed_projects', 'project_comments'),
    ('mv_leaderboard_projects', 'projects'),
    ('mv_leaderboard_projects', 'users'),
    ('mv_leaderboard_projects', 'chains'),
    ('mv_leaderboard_projects', 'project_upvotes'),
    ('mv_leaderboard_projects', 'project_comments'),
    ('mv_leaderboard_builders', 'projects'),
    ('mv_leaderboard_builders', 'users'),
    ('mv_leaderboard_builders', 'project_upvotes'),
    ('mv_leaderboard_builders', 'project_comments'),
    ('mv_chains_discovery', 'chains'),
    ('mv_chains_discovery', 'users'),
    ('mv_chains_discovery', 'chain_members'),
    ('mv_chains_discovery', 'chain_posts'),
    ('mv_chains_discovery', 'post_comments'),
    ('mv_chains_discovery', 'projects'),
    ('mv_project_details', 'projects'),
    ('mv_project_details', 'users'),
    ('mv_project_details', 'chains')
ON CONFLICT DO NOTHING;

SELECT mv_install_request_triggers();

ANALYZE mv_feed_projects, mv_leaderboard_projects, mv_leaderboard_builders, mv_chains_discovery, mv_project_details;

COMMIT;
