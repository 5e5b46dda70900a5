-- Named read queries of the API (api/resources/*). Every one reads a
-- materialized view or a trigger-kept table by an index; none joins or scans
-- the normalized base tables (the feed looks up its page's author and chain
-- names by primary key; a project newer than mv_project_details is read by
-- primary key). Keyset pagination: a NULL "after" key means the
-- first page (psycopg2 sends parameters inline, so the planner folds
-- "NULL IS NULL OR ..." away and uses the ordering index either way).

-- name: feed_trending
-- One page of the view by its index, then the page's author and chain names
-- by primary key (the view keeps ids only, to stay cheap to refresh: 0021).
SELECT f.id, f.title, f.author_id, u.username AS author_username, u.name AS author_name,
       f.chain_id, c.name AS chain_name, f.upvote_count, f.comment_count, f.created_at, f.trending_score
FROM (SELECT id, title, author_id, chain_id, upvote_count, comment_count, created_at, trending_score
      FROM mv_feed_projects
      WHERE CAST(:after_score AS float8) IS NULL
         OR (trending_score, id) < (CAST(:after_score AS float8), CAST(:after_id AS uuid))
      ORDER BY trending_score DESC, id DESC
      LIMIT :lim) f
JOIN users u ON u.id = f.author_id
LEFT JOIN chains c ON c.id = f.chain_id
ORDER BY f.trending_score DESC, f.id DESC;

-- name: feed_newest
SELECT f.id, f.title, f.author_id, u.username AS author_username, u.name AS author_name,
       f.chain_id, c.name AS chain_name, f.upvote_count, f.comment_count, f.created_at, f.trending_score
FROM (SELECT id, title, author_id, chain_id, upvote_count, comment_count, created_at, trending_score
      FROM mv_feed_projects
      WHERE CAST(:after_created AS timestamptz) IS NULL
         OR (created_at, id) < (CAST(:after_created AS timestamptz), CAST(:after_id AS uuid))
      ORDER BY created_at DESC, id DESC
      LIMIT :lim) f
JOIN users u ON u.id = f.author_id
LEFT JOIN chains c ON c.id = f.chain_id
ORDER BY f.created_at DESC, f.id DESC;

-- name: project_details
-- Content from the view, counts live from project_stats_live (exact: a vote
-- committed before this statement is counted). Two primary-key reads.
SELECT d.id, d.title, d.description, d.tags, d.url, d.author_id, d.author_username, d.author_name,
       d.chain_id, d.chain_slug, d.chain_name,
       coalesce(s.upvote_count, 0)::integer AS upvote_count,
       coalesce(s.comment_count, 0)::integer AS comment_count,
       log(greatest(coalesce(s.upvote_count, 0) + 2 * coalesce(s.comment_count, 0), 1)::float8)
         + date_part('epoch', d.created_at) / 45000.0 AS trending_score,
       d.created_at, d.updated_at
FROM mv_project_details d
LEFT JOIN project_stats_live s ON s.project_id = d.id
WHERE d.id = CAST(:project_id AS uuid);

-- name: project_details_live
-- A project created after the view's last refresh: its page from the base row
-- by primary key, counts live as above. The same visibility rules as
-- mv_project_details.
SELECT p.id, p.title, p.description, p.tags, p.url, p.user_id AS author_id,
       u.username AS author_username, u.name AS author_name,
       c.id AS chain_id, c.slug AS chain_slug, c.name AS chain_name,
       coalesce(s.upvote_count, 0)::integer AS upvote_count,
       coalesce(s.comment_count, 0)::integer AS comment_count,
       log(greatest(coalesce(s.upvote_count, 0) + 2 * coalesce(s.comment_count, 0), 1)::float8)
         + date_part('epoch', p.created_at) / 45000.0 AS trending_score,
       p.created_at, p.updated_at
FROM projects p
JOIN users u ON u.id = p.user_id AND NOT u.is_deleted
LEFT JOIN chains c ON c.id = p.chain_id AND NOT c.is_deleted
LEFT JOIN project_stats_live s ON s.project_id = p.id
WHERE p.id = CAST(:project_id AS uuid) AND NOT p.is_deleted;

-- name: leaderboard_projects
SELECT rank, id, title, author_id, author_username, author_name, chain_id, chain_name,
       upvote_count, comment_count, created_at
FROM mv_leaderboard_projects
WHERE rank > :after_rank
ORDER BY rank
LIMIT :lim;

-- name: leaderboard_builders
SELECT rank, user_id, username, name, project_count, upvotes_received, comments_received,
       latest_project_at
FROM mv_leaderboard_builders
WHERE rank > :after_rank
ORDER BY rank
LIMIT :lim;

-- name: chains_by_members
SELECT id, slug, name, description, owner_id, owner_username, member_count, post_count,
       comment_count, project_count, activity_count, last_activity_at, created_at
FROM mv_chains_discovery
WHERE CAST(:after_n AS integer) IS NULL
   OR member_count < CAST(:after_n AS integer)
   OR (member_count = CAST(:after_n AS integer) AND id > CAST(:after_id AS uuid))
ORDER BY member_count DESC, id
LIMIT :lim;

-- name: chains_by_activity
SELECT id, slug, name, description, owner_id, owner_username, member_count, post_count,
       comment_count, project_count, activity_count, last_activity_at, created_at
FROM mv_chains_discovery
WHERE CAST(:after_n AS integer) IS NULL
   OR activity_count < CAST(:after_n AS integer)
   OR (activity_count = CAST(:after_n AS integer) AND id > CAST(:after_id AS uuid))
ORDER BY activity_count DESC, id
LIMIT :lim;

-- name: chain_exists
SELECT 1 FROM mv_chains_discovery WHERE id = CAST(:chain_id AS uuid);

-- name: chain_posts
-- The guide's forum order (Step 3.3): pinned first, then trending; id breaks ties.
SELECT id, chain_id, chain_slug, chain_name, user_id, author_username, author_name, title,
       excerpt, is_pinned, upvote_count, comment_count, trending_score, last_activity_at,
       created_at, updated_at
FROM mv_chain_posts
WHERE chain_id = CAST(:chain_id AS uuid)
  AND (CAST(:after_pinned AS boolean) IS NULL
       OR (is_pinned, trending_score, id)
          < (CAST(:after_pinned AS boolean), CAST(:after_score AS float8), CAST(:after_id AS uuid)))
ORDER BY is_pinned DESC, trending_score DESC, id DESC
LIMIT :lim;

-- name: investors
-- Most sought-after first (intro requests received), id breaks ties.
SELECT id, user_id, username, name, firm_name, title, bio_excerpt, focus_areas, stages,
       check_size_min, check_size_max, location, is_accepting_intros,
       intro_requests_received, intro_requests_accepted, intro_requests_declined,
       intro_requests_pending, acceptance_rate, created_at
FROM mv_investors_directory
WHERE CAST(:after_n AS integer) IS NULL
   OR intro_requests_received < CAST(:after_n AS integer)
   OR (intro_requests_received = CAST(:after_n AS integer) AND id > CAST(:after_id AS uuid))
ORDER BY intro_requests_received DESC, id
LIMIT :lim;

-- name: search
SELECT kind, id, title, subtitle, snippet, url_path, parent_id, popularity, created_at, score, match_type
FROM search_combined(CAST(:q AS text), CAST(:type AS text), CAST(:lim AS integer));
