-- Phase 3: search index and chain forums.
--   psql -v ON_ERROR_STOP=1 -f schema/migrations/0030_phase3_search_and_forums.sql
--
-- Three materialized views, refreshed CONCURRENTLY by the phase 2 engine
-- (each has a UNIQUE index on plain columns, no WHERE):
--   mv_search_index         one row per searchable thing (project, builder, chain, post, investor)
--   mv_chain_posts          forum posts with counts and a time-independent hot score
--   mv_investors_directory  investors with intro-request counts
-- and three search functions that return the same columns:
--   search_content(q, type, lim)             full text (websearch syntax, prefix on the last word)
--   search_fuzzy(q, type, threshold, lim)    trigram word similarity, typo tolerant
--   search_combined(q, type, lim)            both, merged per (kind, id), one combined score
-- The views are registered in mv_registry / mv_dependencies (0020) at the end,
-- with request triggers on the base tables they depend on.
--
-- What is searchable (deleted things and the things of deleted users disappear):
--   project   not deleted, author not deleted
--   builder   users not deleted with role 'builder' or at least one live project
--   chain     not deleted
--   post      not deleted, chain not deleted, author not deleted
--   investor  not deleted, user not deleted; investors NOT accepting intros stay
--             searchable (they are still people one may look up; the directory
--             carries is_accepting_intros for the client to show)
--
-- Text search configuration: 'english' everywhere. Stemming makes 'projects'
-- find 'project'; names such as 'web3' or 'defi-wallet' are numwords/hyphenated
-- words that the english configuration keeps unstemmed (to_tsvector('english',
-- 'web3') = 'web3'), and a stemmed name ('james' -> 'jame') is stemmed the same
-- way in the query, so it still matches. What 'english' loses is stop words
-- ("The Graph" is indexed as 'graph'); the trigram side (search_text, which
-- keeps every word) covers that in search_fuzzy and search_combined.
--
-- No view column depends on now() or random(): REFRESH ... CONCURRENTLY then
-- rewrites only the rows whose data changed (DESIGN.md, known traps).
BEGIN;

CREATE EXTENSION IF NOT EXISTS pg_trgm;

-- First 160 characters of a body with line breaks and tabs turned into spaces,
-- for result snippets and forum excerpts. translate() on a clipped prefix, not
-- a regex over the whole body: regexp_replace cost 13 us a row, 6 s of a
-- 500k-project refresh.
CREATE OR REPLACE FUNCTION search_snippet(body text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT btrim(translate(left(body, 160), E'\n\r\t', '   '))
$$;

-- ---------------------------------------------------------------------------
-- mv_search_index
-- ---------------------------------------------------------------------------
-- Columns:
--   kind           'project' | 'builder' | 'chain' | 'post' | 'investor'
--   id             the row's id in its base table (users.id for builders)
--   title          what a result shows as its heading
--   subtitle       one line of context: "by <author>", the chain of a post, the firm
--   body           the full body text: description, bio, post body, investor title + bio
--                  (search functions return search_snippet(body) as the snippet)
--   url_path       a client route for the result (not an API path)
--   parent_id      project: author user id; post: chain id; investor: user id; else NULL
--   popularity     ranking tiebreaker only: upvotes (project, post), live projects (builder),
--                  members (chain), intro requests received (investor). For project, post,
--                  chain and investor a SNAPSHOT as of the last refresh of this view: the vote,
--                  member and intro tables are deliberately not dependencies ("Dependencies"
--                  at the end).
--   created_at     the base row's created_at
--   title_vector   weight A title/name, B tags/slug/username/firm/focus areas/stages/location
--   search_text    lowercased title + key names, for trigram matching (kept short on purpose:
--                  word similarity is measured against it, and long texts make every
--                  trigram common)
-- The whole-document vector (title_vector || body at weight C) is NOT a column:
-- it is the expression of the GIN index mv_search_index_document. Why: a
-- materialized view recomputes every row on every refresh, and to_tsvector of
-- the bodies was most of that (measured at bench scale, 500k projects + 200k
-- posts: 48.8 s for the refresh with a stored whole-document vector;
-- to_tsvector(description) alone 19 us a row). As an index expression it is
-- computed only for the rows a REFRESH ... CONCURRENTLY actually inserts, i.e.
-- the rows whose data changed. Queries write the same expression, so they use
-- the index, and no query recomputes it for ranking (ranking reads the stored
-- title_vector; see search_content).
CREATE MATERIALIZED VIEW IF NOT EXISTS mv_search_index AS
SELECT 'project'::text AS kind,
       p.id,
       p.title,
       'by ' || u.name AS subtitle,
       p.description AS body,
       '/projects/' || p.id AS url_path,
       p.user_id AS parent_id,
       coalesce(v.n, 0)::bigint AS popularity,
       p.created_at,
       setweight(to_tsvector('english', p.title), 'A')
         || setweight(to_tsvector('english', array_to_string(p.tags, ' ')), 'B') AS title_vector,
       lower(left(p.title || ' ' || array_to_string(p.tags, ' '), 300)) AS search_text
FROM projects p
JOIN users u ON u.id = p.user_id AND NOT u.is_deleted
LEFT JOIN (SELECT project_id, count(*) AS n FROM project_upvotes GROUP BY project_id) v ON v.project_id = p.id
WHERE NOT p.is_deleted

UNION ALL

SELECT 'builder',
       u.id,
       u.name,
       '@' || u.username,
       u.bio,
       '/builders/' || u.username,
       NULL::uuid,
       coalesce(b.n, 0)::bigint,
       u.created_at,
       setweight(to_tsvector('english', u.name), 'A') || setweight(to_tsvector('english', u.username), 'B'),
       lower(left(u.name || ' ' || u.username, 300))
FROM users u
LEFT JOIN (SELECT user_id, count(*) AS n FROM projects WHERE NOT is_deleted GROUP BY user_id) b ON b.user_id = u.id
WHERE NOT u.is_deleted AND (u.role = 'builder' OR b.user_id IS NOT NULL)

UNION ALL

SELECT 'chain',
       c.id,
       c.name,
       '/' || c.slug,
       c.description,
       '/chains/' || c.slug,
       NULL::uuid,
       coalesce(m.n, 0)::bigint,
       c.created_at,
       setweight(to_tsvector('english', c.name), 'A')
         || setweight(to_tsvector('english', replace(c.slug, '-', ' ')), 'B'),
       lower(left(c.name || ' ' || c.slug, 300))
FROM chains c
LEFT JOIN (SELECT chain_id, count(*) AS n FROM chain_members GROUP BY chain_id) m ON m.chain_id = c.id
WHERE NOT c.is_deleted

UNION ALL

SELECT 'post',
       cp.id,
       cp.title,
       'in ' || c.name,
       cp.body,
       '/chains/' || c.slug || '/posts/' || cp.id,
       cp.chain_id,
       coalesce(v.n, 0)::bigint,
       cp.created_at,
       setweight(to_tsvector('english', cp.title), 'A'),
       lower(left(cp.title, 300))
FROM chain_posts cp
JOIN chains c ON c.id = cp.chain_id AND NOT c.is_deleted
JOIN users u ON u.id = cp.user_id AND NOT u.is_deleted
LEFT JOIN (SELECT post_id, count(*) AS n FROM post_upvotes GROUP BY post_id) v ON v.post_id = cp.id
WHERE NOT cp.is_deleted

UNION ALL

SELECT 'investor',
       i.id,
       u.name,
       i.firm_name,
       i.title || ' ' || i.bio,
       '/investors/' || i.id,
       i.user_id,
       coalesce(r.n, 0)::bigint,
       i.created_at,
       setweight(to_tsvector('english', u.name), 'A')
         || setweight(to_tsvector('english', i.firm_name || ' ' || u.username || ' '
                                             || array_to_string(i.focus_areas || i.stages, ' ')
                                             || ' ' || i.location), 'B'),
       lower(left(u.name || ' ' || i.firm_name, 300))
FROM investors i
JOIN users u ON u.id = i.user_id AND NOT u.is_deleted
LEFT JOIN (SELECT investor_id, count(*) AS n FROM intro_requests
           WHERE NOT is_deleted AND status <> 'withdrawn' GROUP BY investor_id) r ON r.investor_id = i.id
WHERE NOT i.is_deleted
WITH NO DATA;

-- CONCURRENTLY needs a unique index on plain columns without WHERE.
CREATE UNIQUE INDEX IF NOT EXISTS mv_search_index_kind_id ON mv_search_index (kind, id);
-- fastupdate = off on every GIN index here: REFRESH ... CONCURRENTLY writes
-- changed rows as inserts, and with the default fastupdate those go to the GIN
-- pending list, which every search then scans linearly until a vacuum merges it
-- (a manual ANALYZE does not). Observed: 5,000 rows inserted by a refresh left
-- the planner preferring a sequential scan (GIN cost inflated by the pending
-- list). Writing straight into the GIN tree makes the refresh do a little more
-- work and keeps every search on the index.
CREATE INDEX IF NOT EXISTS mv_search_index_title_vector ON mv_search_index USING gin (title_vector)
    WITH (fastupdate = off);
-- The whole document: title and names (A, B) and the body (C). Search functions
-- repeat this expression verbatim so the planner matches it to the index.
CREATE INDEX IF NOT EXISTS mv_search_index_document ON mv_search_index
    USING gin ((title_vector || setweight(to_tsvector('english', body), 'C')))
    WITH (fastupdate = off);
CREATE INDEX IF NOT EXISTS mv_search_index_trgm ON mv_search_index USING gin (search_text gin_trgm_ops)
    WITH (fastupdate = off);
-- No index on kind, on purpose: five values, one of them ~70% of the rows. The
-- GIN conditions bound every search and the kind test filters their
-- candidates; a kind index only gave the planner a wrong turn while statistics
-- were stale after a big refresh (observed: a Bitmap Index Scan on kind =
-- 'project' reading every project and rechecking @@ on each, instead of GIN).

-- ---------------------------------------------------------------------------
-- mv_chain_posts
-- ---------------------------------------------------------------------------
-- trending_score is the time-independent hot score (as in phase 2's feed):
-- log10 of the activity (upvotes + 2 * comments) plus created-time in units of
-- 12.5 hours, so ten times the activity equals 12.5 hours of recency. Decay
-- needs no now(): newer posts simply start higher. float8 on purpose (numeric
-- log/extract is ~3x slower, research/limits.md). Posts by deleted users, in
-- deleted chains, or deleted themselves are not listed; deleted comments are
-- not counted.
CREATE MATERIALIZED VIEW IF NOT EXISTS mv_chain_posts AS
WITH post_votes AS (
    SELECT post_id, count(*) AS n FROM post_upvotes GROUP BY post_id
),
post_comment_stats AS (
    SELECT post_id, count(*) AS n, max(created_at) AS last_comment_at
    FROM post_comments
    WHERE NOT is_deleted
    GROUP BY post_id
)
SELECT cp.id,
       cp.chain_id,
       c.slug AS chain_slug,
       c.name AS chain_name,
       cp.user_id,
       u.username AS author_username,
       u.name AS author_name,
       cp.title,
       search_snippet(cp.body) AS excerpt,
       cp.is_pinned,
       coalesce(v.n, 0)::int AS upvote_count,
       coalesce(cs.n, 0)::int AS comment_count,
       (log10(greatest(coalesce(v.n, 0) + 2 * coalesce(cs.n, 0), 1)::float8)
         + extract(epoch FROM cp.created_at)::float8 / 45000)::float8 AS trending_score,
       greatest(cp.created_at, cs.last_comment_at) AS last_activity_at,
       cp.created_at,
       cp.updated_at
FROM chain_posts cp
JOIN chains c ON c.id = cp.chain_id AND NOT c.is_deleted
JOIN users u ON u.id = cp.user_id AND NOT u.is_deleted
LEFT JOIN post_votes v ON v.post_id = cp.id
LEFT JOIN post_comment_stats cs ON cs.post_id = cp.id
WHERE NOT cp.is_deleted
WITH NO DATA;

CREATE UNIQUE INDEX IF NOT EXISTS mv_chain_posts_id ON mv_chain_posts (id);
-- The forum page (guide Step 3.3): WHERE chain_id = ? ORDER BY is_pinned DESC,
-- trending_score DESC LIMIT n reads the first n entries of this index.
CREATE INDEX IF NOT EXISTS mv_chain_posts_chain_hot
    ON mv_chain_posts (chain_id, is_pinned DESC, trending_score DESC);
-- "New" ordering of a forum.
CREATE INDEX IF NOT EXISTS mv_chain_posts_chain_new
    ON mv_chain_posts (chain_id, is_pinned DESC, created_at DESC);

-- ---------------------------------------------------------------------------
-- mv_investors_directory
-- ---------------------------------------------------------------------------
-- Counts come from intro_requests (not from the phase 1 table) so a refresh
-- also repairs any drift. Received = not deleted and not withdrawn (a request
-- its sender withdrew was never the investor's to answer); acceptance_rate =
-- accepted / received, NULL when nothing was received. Investors not accepting
-- intros are listed with is_accepting_intros = false.
CREATE MATERIALIZED VIEW IF NOT EXISTS mv_investors_directory AS
WITH intro_counts AS (
    SELECT investor_id,
           count(*) AS received,
           count(*) FILTER (WHERE status = 'accepted') AS accepted,
           count(*) FILTER (WHERE status = 'declined') AS declined,
           count(*) FILTER (WHERE status = 'pending') AS pending
    FROM intro_requests
    WHERE NOT is_deleted AND status <> 'withdrawn'
    GROUP BY investor_id
)
SELECT i.id,
       i.user_id,
       u.username,
       u.name,
       i.firm_name,
       i.title,
       search_snippet(i.bio) AS bio_excerpt,
       i.focus_areas,
       i.stages,
       i.check_size_min,
       i.check_size_max,
       i.location,
       i.is_accepting_intros,
       coalesce(r.received, 0)::int AS intro_requests_received,
       coalesce(r.accepted, 0)::int AS intro_requests_accepted,
       coalesce(r.declined, 0)::int AS intro_requests_declined,
       coalesce(r.pending, 0)::int AS intro_requests_pending,
       CASE WHEN r.received > 0 THEN round(r.accepted::numeric / r.received, 4)::float8 END AS acceptance_rate,
       i.created_at
FROM investors i
JOIN users u ON u.id = i.user_id AND NOT u.is_deleted
LEFT JOIN intro_counts r ON r.investor_id = i.id
WHERE NOT i.is_deleted
WITH NO DATA;

CREATE UNIQUE INDEX IF NOT EXISTS mv_investors_directory_id ON mv_investors_directory (id);
CREATE INDEX IF NOT EXISTS mv_investors_directory_name ON mv_investors_directory (name, id);
CREATE INDEX IF NOT EXISTS mv_investors_directory_received
    ON mv_investors_directory (intro_requests_received DESC, id);
-- WHERE focus_areas @> ARRAY['fintech'] / && ARRAY[...]
CREATE INDEX IF NOT EXISTS mv_investors_directory_focus ON mv_investors_directory USING gin (focus_areas)
    WITH (fastupdate = off);
CREATE INDEX IF NOT EXISTS mv_investors_directory_stages ON mv_investors_directory USING gin (stages)
    WITH (fastupdate = off);

-- ---------------------------------------------------------------------------
-- Query normalisation helpers
-- ---------------------------------------------------------------------------
-- IMMUTABLE so that, with a constant argument, the planner evaluates them once
-- at plan time and the GIN index conditions below compare against constants.
-- (Immutable is honest here: the text search configuration is named, never
-- taken from default_text_search_config.)

-- Raw user text -> at most 200 characters, whitespace collapsed, NULL when empty.
-- Clipping first keeps every later step (regex, tsquery parse, trigrams) bounded
-- whatever the client sends.
CREATE OR REPLACE FUNCTION search_clip_query(q text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT nullif(btrim(regexp_replace(left(q, 200), '\s+', ' ', 'g')), '')
$$;

-- Raw user text -> tsquery; never raises (websearch_to_tsquery accepts any text,
-- and the prefix term is built only from [[:alnum:]] characters, so it cannot
-- contain tsquery syntax). NULL means "no full-text match possible":
--   * empty input, or only stop words / punctuation;
--   * only negations ('-foo'): querytree() = 'T' means the GIN index cannot
--     narrow the search, so it would rank the whole index; we refuse that.
-- Plain word input ("web3 proj") also matches the last word as a prefix, so
-- search-as-you-type works: 'web3' & 'proj':* OR'ed with the exact query. Input
-- using websearch syntax (quotes, -, or) is taken as written.
-- client_min_messages: stop-word-only input is an ordinary empty result, not a
-- NOTICE in the client's log.
CREATE OR REPLACE FUNCTION search_tsquery(q text) RETURNS tsquery
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET client_min_messages = warning
AS $$
DECLARE
    qc text := search_clip_query(q);
    result tsquery;
    last_word text;
BEGIN
    IF qc IS NULL THEN
        RETURN NULL;
    END IF;
    result := websearch_to_tsquery('english', qc);
    IF qc ~ '^[[:alnum:] ]+$' THEN
        last_word := substring(qc FROM '([[:alnum:]]+)$');
        IF length(last_word) >= 3 THEN
            result := result || (websearch_to_tsquery('english', left(qc, length(qc) - length(last_word)))
                                 && to_tsquery('english', last_word || ':*'));
        END IF;
    END IF;
    IF querytree(result) IN ('', 'T') THEN
        RETURN NULL;
    END IF;
    RETURN result;
END
$$;

-- Raw user text -> the OR of its words' lexemes ('web3 project' -> 'web3' |
-- 'project'): ranks body-tier rows by how much of the query their title has.
-- Built from to_tsvector output with each lexeme quoted (quotes doubled,
-- lexemes holding a backslash dropped), so no user text reaches the tsquery
-- parser as syntax. NULL when there is no lexeme.
CREATE OR REPLACE FUNCTION search_tsquery_any(q text) RETURNS tsquery
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT nullif(array_to_string(array(
               SELECT '''' || replace(lexeme, '''', '''''') || ''''
               FROM unnest(tsvector_to_array(to_tsvector('english', search_clip_query(q)))) AS lexeme
               WHERE strpos(lexeme, '\') = 0), ' | '), '')::tsquery
$$;

-- Raw user text -> text for trigram matching, or NULL when trigram matching
-- would not narrow anything:
--   * at most 100 characters: the GIN trigram scan reads one posting list per
--     distinct trigram of the query, and typo tolerance is about words, not essays;
--   * at least one run of 3 letters/digits, and at least one trigram: pg_trgm
--     ignores punctuation, so '!!&|:*' or '- - -' has no trigram at all, and the
--     GIN scan of an empty trigram set reads the WHOLE index (measured: 155 ms at
--     50k rows, growing linearly). One or two letters ('a', 'ab') share their
--     trigrams with a large share of all words; full-text prefix matching serves
--     short input better.
CREATE OR REPLACE FUNCTION search_fuzzy_text(q text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN c ~ '[[:alnum:]]{3}' AND cardinality(show_trgm(c)) > 0 THEN c END
    FROM (SELECT lower(left(search_clip_query(q), 100)) AS c) s
$$;

-- ---------------------------------------------------------------------------
-- Search functions
-- ---------------------------------------------------------------------------
-- Shared contract:
--   * columns: kind, id, title, subtitle, snippet, url_path, parent_id, popularity,
--     created_at, score (float8, higher is better), match_type ('fulltext' | 'fuzzy' | 'both')
--   * q NULL, empty or unusable (see the helpers) => no rows; any text => never an error,
--     never a write (the functions are STABLE: Postgres runs them read-only)
--   * type NULL => all kinds; one of 'project','builder','chain','post','investor' => that
--     kind; any other value => no rows (not an error: the API validates against the fixed
--     set and reports 400; a SQL caller asking for a kind that does not exist gets nothing)
--   * lim clipped to 1..100 (NULL => 20)
--   * ties broken by popularity, then newest, then id (a total order: stable paging)
--
-- Index use. search_content and search_combined are single-statement SQL
-- functions, STABLE, not STRICT, no SET clause and not SECURITY DEFINER, so the
-- planner inlines them into the calling query: the guide's
--   EXPLAIN ANALYZE SELECT * FROM search_combined('test query', 'project', 20);
-- shows the Bitmap Index Scans on mv_search_index_title_vector / _document /
-- _trgm directly (no opaque Function Scan). search_fuzzy needs a SET clause
-- (below), so it is not inlined; its inner plans are visible with auto_explain:
--   LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0;
--   SET auto_explain.log_nested_statements = on; SET auto_explain.log_analyze = on;
--   SET client_min_messages = log; SELECT * FROM search_fuzzy('blokchain', NULL, 0.3, 10);
-- (tests/test_phase3_search.py checks all three this way).

-- Full text, in two tiers, because ranking every match of a common word means
-- visiting every matching row (measured at 680k rows: a word in 15% of bodies
-- cost 150 ms in heap visits alone):
--   1. rows whose title/name/tags (title_vector) match the whole query:
--      score = 1 + ts_rank(title_vector, query);
--   2. only if tier 1 has fewer than lim rows: rows whose whole document
--      (title, names, body) matches but whose title alone does not:
--      score = ts_rank(title_vector, any query word), in [0, 1). So a row with
--      one word in its title and the other in its body ranks above rows with
--      both words only in the body; among body-only rows popularity decides.
--      (When tier 1 is full, tier 2's LIMIT is 0 and the executor never starts
--      its scan.)
-- A title match therefore always ranks above a body-only match. Ranking reads
-- only the stored title_vector; nothing re-parses a body at query time.
-- Exact ranking visits every match of the tier that runs, so the cost follows
-- the match count: at bench scale (723k rows, 2 shared cores, others busy) a
-- specific word costs 1-30 ms, a word in 37k titles ('blockchain') 100-200 ms,
-- and two words common only in bodies ('web3 project': 97k body matches)
-- 270-920 ms. Bounding that needs an index that returns matches in rank or
-- popularity order (RUM, not in core) or a sampled body tier; not done here.
-- ts_rank with weights {D,C,B,A} = {0.1,0.2,0.4,1.0}, normalisation 32
-- (rank/(rank+1)). ts_rank, not ts_rank_cd: cover density scores a cover by its
-- length, so a title word plus a body word (a long cover) lost to two body words.
CREATE OR REPLACE FUNCTION search_content(q text, type text DEFAULT NULL, lim integer DEFAULT 20)
RETURNS TABLE (
    kind text, id uuid, title text, subtitle text, snippet text, url_path text, parent_id uuid,
    popularity bigint, created_at timestamptz, score double precision, match_type text
)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    WITH title_hits AS (
        SELECT s.kind, s.id, s.title, s.subtitle, s.body, s.url_path, s.parent_id, s.popularity, s.created_at,
               1 + ts_rank('{0.1,0.2,0.4,1.0}', s.title_vector, search_tsquery(q), 32)::float8 AS score
        FROM mv_search_index s
        WHERE s.title_vector @@ search_tsquery(q)
          AND (type IS NULL OR s.kind = type)
        ORDER BY score DESC, s.popularity DESC, s.created_at DESC, s.id
        LIMIT least(greatest(coalesce(lim, 20), 1), 100)
    ),
    body_hits AS (
        SELECT s.kind, s.id, s.title, s.subtitle, s.body, s.url_path, s.parent_id, s.popularity, s.created_at,
               ts_rank('{0.1,0.2,0.4,1.0}', s.title_vector, search_tsquery_any(q), 32)::float8 AS score
        FROM mv_search_index s
        WHERE (s.title_vector || setweight(to_tsvector('english', s.body), 'C')) @@ search_tsquery(q)
          AND NOT s.title_vector @@ search_tsquery(q)
          AND (type IS NULL OR s.kind = type)
        ORDER BY score DESC, s.popularity DESC, s.created_at DESC, s.id
        LIMIT least(greatest(coalesce(lim, 20), 1), 100) - (SELECT count(*) FROM title_hits)
    )
    SELECT h.kind, h.id, h.title, h.subtitle, search_snippet(h.body), h.url_path, h.parent_id,
           h.popularity, h.created_at, h.score, 'fulltext'::text
    FROM (SELECT * FROM title_hits UNION ALL SELECT * FROM body_hits) h
    ORDER BY h.score DESC, h.popularity DESC, h.created_at DESC, h.id
$$;

-- Fuzzy: word similarity between the query and the closest stretch of
-- search_text ('blokchain' vs 'blockchain voting dao' = 0.62, where plain
-- similarity() of the whole strings is 0.28 and would miss it). Rows with
-- word_similarity >= threshold (clipped to 0.1..1, NULL => 0.3), best first.
--
-- Why plpgsql with a SET clause: the index-backed operator `q <% search_text`
-- compares against the GUC pg_trgm.word_similarity_threshold, not against an
-- argument, and `word_similarity(q, t) >= x` cannot use the index (DESIGN.md
-- traps). So the function sets the GUC with set_config(..., true) and then runs
-- the indexed query. The SET clause makes Postgres save the GUC on entry and
-- restore it on exit (also on error), so the caller's setting never changes.
-- The cost is that this function is not inlined (see auto_explain above).
-- PARALLEL RESTRICTED: a GUC cannot be set inside a parallel worker.
-- The queries run through EXECUTE ... USING (fixed SQL text, the input only as
-- bound values) so each call is planned for its own values: a cached generic
-- plan cannot see the query text, estimated the trigram match at a default
-- selectivity and scanned the whole view (measured: 109 ms instead of ~5 ms).
-- enable_seqscan = off (restored on exit like the threshold): for the rung
-- check "are there lim rows?" the planner picked a sequential scan expecting
-- to stop early, but the matches of a word sit together (e.g. all posts, at
-- the end of the view), so it read 26k rows: 145 ms where the GIN bitmap
-- needs 1 ms. Every query in this function is a trigram match the GIN index
-- answers better than a scan of the whole view.
--
-- Threshold ladder (exact, not an approximation): a low threshold such as the
-- guide's 0.3 makes every row sharing a third of the query's trigrams a
-- candidate, and each candidate costs a heap visit plus a similarity (measured
-- at 680k rows: 'web3 project' at 0.3 = 2.2 s). Results are ordered by
-- similarity, so if at least lim rows reach a higher threshold r, the top lim
-- at the caller's threshold are exactly the top lim at r (every row below r
-- ranks after all of them). The function tries 0.8 (phrases only) and 0.6
-- (those above the caller's threshold) first; a cheap LIMIT lim count tells
-- whether a rung has enough rows, and only then is that rung ranked in full.
-- Cost is proportional to the candidates of the rungs tried: a typo of a word
-- that is in many titles ('blokchain' at bench scale: 37k rows hold
-- 'blockchain') pays a heap visit and two similarities for each of them.
CREATE OR REPLACE FUNCTION search_fuzzy(
    q text, type text DEFAULT NULL, threshold double precision DEFAULT 0.3, lim integer DEFAULT 20
)
RETURNS TABLE (
    kind text, id uuid, title text, subtitle text, snippet text, url_path text, parent_id uuid,
    popularity bigint, created_at timestamptz, score double precision, match_type text
)
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED
SET pg_trgm.word_similarity_threshold = 0.6
SET enable_seqscan = off
AS $$
#variable_conflict use_column
DECLARE
    qt text := search_fuzzy_text(q);
    n integer := least(greatest(coalesce(lim, 20), 1), 100);
    floor_t double precision := least(greatest(coalesce(threshold, 0.3), 0.1), 1.0);
    rung double precision;
    reached integer;
BEGIN
    IF qt IS NULL THEN
        RETURN;
    END IF;
    FOREACH rung IN ARRAY ARRAY[0.8, 0.6]::float8[] || floor_t LOOP
        CONTINUE WHEN rung < floor_t;
        -- A single word rarely has fewer candidates at 0.8 than at 0.6 (the rows
        -- holding the closest word are candidates of both), and a typo fails
        -- 0.8 after paying for all of them: the 0.8 rung is for phrases.
        CONTINUE WHEN rung = 0.8 AND rung > floor_t AND strpos(qt, ' ') = 0;
        PERFORM set_config('pg_trgm.word_similarity_threshold', rung::text, true);
        IF rung > floor_t THEN
            EXECUTE 'SELECT count(*) FROM (SELECT 1 FROM mv_search_index s
                                           WHERE $1 <% s.search_text AND ($2 IS NULL OR s.kind = $2)
                                           LIMIT $3) enough'
                INTO reached USING qt, search_fuzzy.type, n;
            CONTINUE WHEN reached < n;
        END IF;
        RETURN QUERY EXECUTE
            'SELECT s.kind, s.id, s.title, s.subtitle, search_snippet(s.body), s.url_path, s.parent_id,
                    s.popularity, s.created_at, word_similarity($1, s.search_text)::float8 AS fuzzy_score,
                    ''fuzzy''::text
             FROM mv_search_index s
             WHERE $1 <% s.search_text AND ($2 IS NULL OR s.kind = $2)
             ORDER BY fuzzy_score DESC, s.popularity DESC, s.created_at DESC, s.id
             LIMIT $3'
            USING qt, search_fuzzy.type, n;
        RETURN;
    END LOOP;
END
$$;

-- Combined: the two-tier full-text results (best 200), supplemented by fuzzy
-- matches (best 200) when full text finds fewer than 200, merged on (kind, id)
-- with a FULL JOIN (one row per thing): score = full-text score + 0.5 * word
-- similarity. So title matches (>= 1) rank above body-only matches, and a
-- typo-only hit scores at most 0.5. When full text already has 200 matches
-- (a common word, correctly spelled) the fuzzy side's LIMIT is 0 and its scan
-- never runs: measured at 680k rows, a fuzzy side for 'web3 project' alone was
-- 1.9 s, because 'project' makes half the titles similar to it.
-- The windows are fixed (200 = twice the largest lim), not derived from lim, so
-- a larger lim returns the same first rows plus more: the API pages through
-- search_combined(q, type, offset + limit + 1) with offsets, and a window that
-- grew with lim could let fuzzy boosts reorder earlier pages.
-- Inlined (see above); its fuzzy side uses the session's
-- pg_trgm.word_similarity_threshold (default 0.6: 'blokchain' still finds
-- 'blockchain' at 0.62), because an inlinable function cannot set a GUC.
-- Callers that want another threshold use search_fuzzy.
CREATE OR REPLACE FUNCTION search_combined(q text, type text DEFAULT NULL, lim integer DEFAULT 20)
RETURNS TABLE (
    kind text, id uuid, title text, subtitle text, snippet text, url_path text, parent_id uuid,
    popularity bigint, created_at timestamptz, score double precision, match_type text
)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    -- Each side carries the display columns: joining back to mv_search_index
    -- after the FULL JOIN let the planner pick a hash join over the whole view
    -- (its row estimate for the merge is poor).
    WITH title_hits AS (
        SELECT s.kind, s.id, s.title, s.subtitle, s.body, s.url_path, s.parent_id, s.popularity, s.created_at,
               1 + ts_rank('{0.1,0.2,0.4,1.0}', s.title_vector, search_tsquery(q), 32)::float8 AS rank
        FROM mv_search_index s
        WHERE s.title_vector @@ search_tsquery(q)
          AND (type IS NULL OR s.kind = type)
        ORDER BY rank DESC, s.popularity DESC, s.created_at DESC, s.id
        LIMIT 200
    ),
    body_hits AS (
        SELECT s.kind, s.id, s.title, s.subtitle, s.body, s.url_path, s.parent_id, s.popularity, s.created_at,
               ts_rank('{0.1,0.2,0.4,1.0}', s.title_vector, search_tsquery_any(q), 32)::float8 AS rank
        FROM mv_search_index s
        WHERE (s.title_vector || setweight(to_tsvector('english', s.body), 'C')) @@ search_tsquery(q)
          AND NOT s.title_vector @@ search_tsquery(q)
          AND (type IS NULL OR s.kind = type)
        ORDER BY rank DESC, s.popularity DESC, s.created_at DESC, s.id
        LIMIT 200 - (SELECT count(*) FROM title_hits)
    ),
    ft AS (
        SELECT * FROM title_hits UNION ALL SELECT * FROM body_hits
    ),
    fz AS (
        SELECT s.kind, s.id, s.title, s.subtitle, s.body, s.url_path, s.parent_id, s.popularity, s.created_at,
               word_similarity(search_fuzzy_text(q), s.search_text)::float8 AS sim
        FROM mv_search_index s
        WHERE search_fuzzy_text(q) <% s.search_text
          AND (type IS NULL OR s.kind = type)
        ORDER BY sim DESC, s.popularity DESC, s.created_at DESC, s.id
        LIMIT CASE WHEN (SELECT count(*) FROM ft) < 200 THEN 200 ELSE 0 END
    ),
    merged AS (
        SELECT coalesce(ft.kind, fz.kind) AS kind,
               coalesce(ft.id, fz.id) AS id,
               coalesce(ft.title, fz.title) AS title,
               coalesce(ft.subtitle, fz.subtitle) AS subtitle,
               coalesce(ft.body, fz.body) AS body,
               coalesce(ft.url_path, fz.url_path) AS url_path,
               coalesce(ft.parent_id, fz.parent_id) AS parent_id,
               coalesce(ft.popularity, fz.popularity) AS popularity,
               coalesce(ft.created_at, fz.created_at) AS created_at,
               coalesce(ft.rank, 0) + 0.5 * coalesce(fz.sim, 0) AS score,
               CASE WHEN ft.id IS NOT NULL AND fz.id IS NOT NULL THEN 'both'
                    WHEN ft.id IS NOT NULL THEN 'fulltext'
                    ELSE 'fuzzy' END AS match_type
        FROM ft
        FULL JOIN fz ON fz.kind = ft.kind AND fz.id = ft.id
        ORDER BY score DESC, popularity DESC, created_at DESC, id
        LIMIT least(greatest(coalesce(lim, 20), 1), 100)
    )
    SELECT m.kind, m.id, m.title, m.subtitle, search_snippet(m.body), m.url_path, m.parent_id,
           m.popularity, m.created_at, m.score, m.match_type
    FROM merged m
    ORDER BY m.score DESC, m.popularity DESC, m.created_at DESC, m.id
$$;

-- ---------------------------------------------------------------------------
-- Registry, dependencies, request triggers (0020's contract)
-- ---------------------------------------------------------------------------
-- Debounce / max wait (seconds), equal as in 0021 (the window is a batching
-- period): the forum is the most visible freshness, the search index the most
-- expensive refresh (every changed title re-parsed, ~720k rows at bench
-- scale), so it batches longer. Every max wait stays well under the health
-- check's one minute.
INSERT INTO mv_registry (view_name, debounce_seconds, max_wait_seconds, refresh_order, description) VALUES
    ('mv_chain_posts', 10, 10, 300, 'chain forum posts with counts and hot score (guide Step 3.3)'),
    ('mv_search_index', 30, 30, 310, 'one row per searchable thing, full-text and trigram indexed'),
    ('mv_investors_directory', 30, 30, 320, 'investors with intro-request counts')
ON CONFLICT (view_name) DO NOTHING;

-- Dependencies: every table a view reads, except the four tables that feed
-- only mv_search_index.popularity (project_upvotes, post_upvotes,
-- chain_members, intro_requests for that view): votes are the most frequent
-- writes, and re-running to_tsvector over the whole index for each burst of
-- votes would keep one of two cores busy. popularity only breaks ties in
-- search ranking, and any content write (projects, users, chains, posts,
-- investors) refreshes it together with the rest. mv_chain_posts and
-- mv_investors_directory depend on their count tables (their counts are shown).
INSERT INTO mv_dependencies (view_name, table_name) VALUES
    ('mv_chain_posts', 'chain_posts'),
    ('mv_chain_posts', 'chains'),
    ('mv_chain_posts', 'users'),
    ('mv_chain_posts', 'post_upvotes'),
    ('mv_chain_posts', 'post_comments'),
    ('mv_search_index', 'users'),
    ('mv_search_index', 'projects'),
    ('mv_search_index', 'chains'),
    ('mv_search_index', 'chain_posts'),
    ('mv_search_index', 'investors'),
    ('mv_investors_directory', 'investors'),
    ('mv_investors_directory', 'users'),
    ('mv_investors_directory', 'intro_requests')
ON CONFLICT DO NOTHING;

DO $$
BEGIN
    PERFORM mv_install_request_trigger(t)
    FROM (SELECT DISTINCT table_name AS t FROM mv_dependencies
          WHERE view_name IN ('mv_chain_posts', 'mv_search_index', 'mv_investors_directory')) d;
END
$$;

-- Populate the views created above (created WITH NO DATA, so psql reports
-- CREATE MATERIALIZED VIEW as the guide's Step 3.1 shows, and each index is
-- built once from the full view). A view that is already populated (this file
-- run again by hand) is left alone: a plain REFRESH would lock out readers.
DO $$
BEGIN
    IF NOT (SELECT relispopulated FROM pg_class WHERE oid = 'mv_search_index'::regclass) THEN
        REFRESH MATERIALIZED VIEW mv_search_index;
    END IF;
    IF NOT (SELECT relispopulated FROM pg_class WHERE oid = 'mv_chain_posts'::regclass) THEN
        REFRESH MATERIALIZED VIEW mv_chain_posts;
    END IF;
    IF NOT (SELECT relispopulated FROM pg_class WHERE oid = 'mv_investors_directory'::regclass) THEN
        REFRESH MATERIALIZED VIEW mv_investors_directory;
    END IF;
END
$$;

-- Fresh statistics, so the first searches after the migration are planned on
-- real row counts rather than defaults (autovacuum would get there later).
ANALYZE mv_search_index, mv_chain_posts, mv_investors_directory;

COMMIT;
