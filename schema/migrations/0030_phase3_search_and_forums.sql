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
--
-- What is searchable (the same rule as the feed: deleted things and the things
-- of deleted users disappear):
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

-- ---------------------------------------------------------------------------
-- mv_search_index
-- ---------------------------------------------------------------------------
-- Columns:
--   kind           'project' | 'builder' | 'chain' | 'post' | 'investor'
--   id             the row's id in its base table (users.id for builders)
--   title          what a result shows as its heading
--   subtitle       one line of context: "by <author>", the chain of a post, the firm
--   snippet        first 200 characters of the body/description, whitespace collapsed
--   url_path       a client route for the result (not an API path)
--   parent_id      project: author user id; post: chain id; investor: user id; else NULL
--   popularity     ranking tiebreaker: upvotes (project, post), upvotes received on
--                  live projects (builder), members (chain), intro requests received (investor)
--   created_at     the base row's created_at
--   search_vector  weights: A title/name, B tags/slug/username/focus areas, C body, D author name
--   search_text    lowercased title + key names, for trigram matching (kept short on purpose:
--                  word similarity is measured against it, and long texts make every
--                  trigram common)
CREATE MATERIALIZED VIEW IF NOT EXISTS mv_search_index AS
WITH live_users AS (
    SELECT id, username, name, role, bio, created_at FROM users WHERE NOT is_deleted
),
live_projects AS (
    SELECT p.*, u.username AS author_username, u.name AS author_name
    FROM projects p
    JOIN live_users u ON u.id = p.user_id
    WHERE NOT p.is_deleted
),
project_votes AS (
    SELECT project_id, count(*) AS n FROM project_upvotes GROUP BY project_id
),
builder_stats AS (
    SELECT p.user_id, count(*) AS projects, coalesce(sum(v.n), 0)::bigint AS upvotes
    FROM live_projects p
    LEFT JOIN project_votes v ON v.project_id = p.id
    GROUP BY p.user_id
),
chain_member_counts AS (
    SELECT chain_id, count(*) AS n FROM chain_members GROUP BY chain_id
),
post_votes AS (
    SELECT post_id, count(*) AS n FROM post_upvotes GROUP BY post_id
),
intro_counts AS (
    SELECT investor_id, count(*) AS n
    FROM intro_requests
    WHERE NOT is_deleted AND status <> 'withdrawn'
    GROUP BY investor_id
)
SELECT 'project'::text AS kind,
       p.id,
       p.title,
       'by ' || p.author_name AS subtitle,
       left(regexp_replace(p.description, '\s+', ' ', 'g'), 200) AS snippet,
       '/projects/' || p.id AS url_path,
       p.user_id AS parent_id,
       coalesce(v.n, 0)::bigint AS popularity,
       p.created_at,
       setweight(to_tsvector('english', p.title), 'A')
         || setweight(to_tsvector('english', array_to_string(p.tags, ' ')), 'B')
         || setweight(to_tsvector('english', p.description), 'C')
         || setweight(to_tsvector('english', p.author_name), 'D') AS search_vector,
       lower(left(p.title || ' ' || array_to_string(p.tags, ' '), 300)) AS search_text
FROM live_projects p
LEFT JOIN project_votes v ON v.project_id = p.id

UNION ALL

SELECT 'builder',
       u.id,
       u.name,
       '@' || u.username,
       left(regexp_replace(u.bio, '\s+', ' ', 'g'), 200),
       '/builders/' || u.username,
       NULL::uuid,
       coalesce(b.upvotes, 0)::bigint,
       u.created_at,
       setweight(to_tsvector('english', u.name), 'A')
         || setweight(to_tsvector('english', u.username), 'B')
         || setweight(to_tsvector('english', u.bio), 'C'),
       lower(left(u.name || ' ' || u.username, 300))
FROM live_users u
LEFT JOIN builder_stats b ON b.user_id = u.id
WHERE u.role = 'builder' OR b.user_id IS NOT NULL

UNION ALL

SELECT 'chain',
       c.id,
       c.name,
       '/' || c.slug,
       left(regexp_replace(c.description, '\s+', ' ', 'g'), 200),
       '/chains/' || c.slug,
       NULL::uuid,
       coalesce(m.n, 0)::bigint,
       c.created_at,
       setweight(to_tsvector('english', c.name), 'A')
         || setweight(to_tsvector('english', replace(c.slug, '-', ' ')), 'B')
         || setweight(to_tsvector('english', c.description), 'C'),
       lower(left(c.name || ' ' || c.slug, 300))
FROM chains c
LEFT JOIN chain_member_counts m ON m.chain_id = c.id
WHERE NOT c.is_deleted

UNION ALL

SELECT 'post',
       cp.id,
       cp.title,
       'in ' || c.name,
       left(regexp_replace(cp.body, '\s+', ' ', 'g'), 200),
       '/chains/' || c.slug || '/posts/' || cp.id,
       cp.chain_id,
       coalesce(v.n, 0)::bigint,
       cp.created_at,
       setweight(to_tsvector('english', cp.title), 'A')
         || setweight(to_tsvector('english', c.name), 'B')
         || setweight(to_tsvector('english', cp.body), 'C')
         || setweight(to_tsvector('english', u.name), 'D'),
       lower(left(cp.title, 300))
FROM chain_posts cp
JOIN chains c ON c.id = cp.chain_id AND NOT c.is_deleted
JOIN live_users u ON u.id = cp.user_id
LEFT JOIN post_votes v ON v.post_id = cp.id
WHERE NOT cp.is_deleted

UNION ALL

SELECT 'investor',
       i.id,
       u.name,
       i.firm_name,
       left(regexp_replace(i.bio, '\s+', ' ', 'g'), 200),
       '/investors/' || i.id,
       i.user_id,
       coalesce(r.n, 0)::bigint,
       i.created_at,
       setweight(to_tsvector('english', u.name || ' ' || i.firm_name), 'A')
         || setweight(to_tsvector('english', array_to_string(i.focus_areas || i.stages, ' ')
                                             || ' ' || i.location || ' ' || u.username), 'B')
         || setweight(to_tsvector('english', i.title || ' ' || i.bio), 'C'),
       lower(left(u.name || ' ' || i.firm_name, 300))
FROM investors i
JOIN live_users u ON u.id = i.user_id
LEFT JOIN intro_counts r ON r.investor_id = i.id
WHERE NOT i.is_deleted
WITH DATA;

-- CONCURRENTLY needs a unique index on plain columns without WHERE.
CREATE UNIQUE INDEX IF NOT EXISTS mv_search_index_kind_id ON mv_search_index (kind, id);
CREATE INDEX IF NOT EXISTS mv_search_index_vector ON mv_search_index USING gin (search_vector);
CREATE INDEX IF NOT EXISTS mv_search_index_trgm ON mv_search_index USING gin (search_text gin_trgm_ops);
-- Typed searches of a rare kind (investor, chain) can AND this with a GIN bitmap.
CREATE INDEX IF NOT EXISTS mv_search_index_kind ON mv_search_index (kind);

-- ---------------------------------------------------------------------------
-- mv_chain_posts
-- ---------------------------------------------------------------------------
-- trending_score is the time-independent hot score (as in phase 2's feed):
-- log10 of the activity plus created-time in units of 12.5 hours, so ten times
-- the activity equals 12.5 hours of recency. Decay needs no now(): newer posts
-- simply start higher. float8 on purpose (numeric log/extract is ~3x slower,
-- research/limits.md). Posts by deleted users, in deleted chains, or deleted
-- themselves are not listed; deleted comments are not counted.
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
       left(regexp_replace(cp.body, '\s+', ' ', 'g'), 280) AS excerpt,
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
WITH DATA;

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
       left(regexp_replace(i.bio, '\s+', ' ', 'g'), 280) AS bio_excerpt,
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
WITH DATA;

CREATE UNIQUE INDEX IF NOT EXISTS mv_investors_directory_id ON mv_investors_directory (id);
CREATE INDEX IF NOT EXISTS mv_investors_directory_name ON mv_investors_directory (name, id);
CREATE INDEX IF NOT EXISTS mv_investors_directory_received
    ON mv_investors_directory (intro_requests_received DESC, id);
-- WHERE focus_areas @> ARRAY['fintech'] / && ARRAY[...]
CREATE INDEX IF NOT EXISTS mv_investors_directory_focus ON mv_investors_directory USING gin (focus_areas);
CREATE INDEX IF NOT EXISTS mv_investors_directory_stages ON mv_investors_directory USING gin (stages);

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
-- shows the Bitmap Index Scans on mv_search_index_vector and mv_search_index_trgm
-- directly (no opaque Function Scan). search_fuzzy needs a SET clause (below), so
-- it is not inlined; its inner plan is visible with auto_explain:
--   LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0;
--   SET auto_explain.log_nested_statements = on; SET auto_explain.log_analyze = on;
--   SET client_min_messages = log; SELECT * FROM search_fuzzy('blokchain', NULL, 0.3, 10);
-- (tests/test_phase3_search.py checks all three this way).

-- Full text. Rank: ts_rank_cd with weights {D,C,B,A} = {0.1,0.2,0.4,1.0} and
-- normalisation 32 (rank/(rank+1), so scores stay in [0,1) and combine with
-- trigram similarity).
CREATE OR REPLACE FUNCTION search_content(q text, type text DEFAULT NULL, lim integer DEFAULT 20)
RETURNS TABLE (
    kind text, id uuid, title text, subtitle text, snippet text, url_path text, parent_id uuid,
    popularity bigint, created_at timestamptz, score double precision, match_type text
)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT s.kind, s.id, s.title, s.subtitle, s.snippet, s.url_path, s.parent_id,
           s.popularity, s.created_at,
           ts_rank_cd('{0.1,0.2,0.4,1.0}', s.search_vector, search_tsquery(q), 32)::float8 AS score,
           'fulltext'::text AS match_type
    FROM mv_search_index s
    WHERE s.search_vector @@ search_tsquery(q)
      AND (type IS NULL OR s.kind = type)
    ORDER BY score DESC, s.popularity DESC, s.created_at DESC, s.id
    LIMIT least(greatest(coalesce(lim, 20), 1), 100)
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
CREATE OR REPLACE FUNCTION search_fuzzy(
    q text, type text DEFAULT NULL, threshold real DEFAULT 0.3, lim integer DEFAULT 20
)
RETURNS TABLE (
    kind text, id uuid, title text, subtitle text, snippet text, url_path text, parent_id uuid,
    popularity bigint, created_at timestamptz, score double precision, match_type text
)
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED
SET pg_trgm.word_similarity_threshold = 0.6
AS $$
#variable_conflict use_column
DECLARE
    qt text := search_fuzzy_text(q);
    n integer := least(greatest(coalesce(lim, 20), 1), 100);
BEGIN
    IF qt IS NULL THEN
        RETURN;
    END IF;
    PERFORM set_config('pg_trgm.word_similarity_threshold',
                       least(greatest(coalesce(threshold, 0.3), 0.1), 1.0)::text, true);
    RETURN QUERY
        SELECT s.kind, s.id, s.title, s.subtitle, s.snippet, s.url_path, s.parent_id,
               s.popularity, s.created_at,
               word_similarity(qt, s.search_text)::float8 AS fuzzy_score,
               'fuzzy'::text
        FROM mv_search_index s
        WHERE qt <% s.search_text
          AND (search_fuzzy.type IS NULL OR s.kind = search_fuzzy.type)
        ORDER BY fuzzy_score DESC, s.popularity DESC, s.created_at DESC, s.id
        LIMIT n;
END
$$;

-- Combined: the best 2*lim of each side, merged on (kind, id) with a FULL JOIN
-- (one row per thing), score = fulltext rank + 0.5 * word similarity. An exact
-- title hit scores about 0.5 + 0.5; a typo-only hit about 0.3. Inlined (see
-- above); its fuzzy side uses the session's pg_trgm.word_similarity_threshold
-- (default 0.6: 'blokchain' still finds 'blockchain' at 0.62), because an
-- inlinable function cannot set a GUC. Callers that want another threshold use
-- search_fuzzy. Taking 2*lim per side means a thing ranked beyond 2*lim on both
-- sides cannot enter the merged top lim even if its summed score would; with
-- ranks this skewed that does not change the top results in practice.
CREATE OR REPLACE FUNCTION search_combined(q text, type text DEFAULT NULL, lim integer DEFAULT 20)
RETURNS TABLE (
    kind text, id uuid, title text, subtitle text, snippet text, url_path text, parent_id uuid,
    popularity bigint, created_at timestamptz, score double precision, match_type text
)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    WITH ft AS (
        SELECT s.kind, s.id,
               ts_rank_cd('{0.1,0.2,0.4,1.0}', s.search_vector, search_tsquery(q), 32)::float8 AS rank
        FROM mv_search_index s
        WHERE s.search_vector @@ search_tsquery(q)
          AND (type IS NULL OR s.kind = type)
        ORDER BY rank DESC, s.popularity DESC, s.created_at DESC, s.id
        LIMIT 2 * least(greatest(coalesce(lim, 20), 1), 100)
    ),
    fz AS (
        SELECT s.kind, s.id, word_similarity(search_fuzzy_text(q), s.search_text)::float8 AS sim
        FROM mv_search_index s
        WHERE search_fuzzy_text(q) <% s.search_text
          AND (type IS NULL OR s.kind = type)
        ORDER BY sim DESC, s.popularity DESC, s.created_at DESC, s.id
        LIMIT 2 * least(greatest(coalesce(lim, 20), 1), 100)
    ),
    merged AS (
        SELECT coalesce(ft.kind, fz.kind) AS kind,
               coalesce(ft.id, fz.id) AS id,
               coalesce(ft.rank, 0) + 0.5 * coalesce(fz.sim, 0) AS score,
               CASE WHEN ft.id IS NOT NULL AND fz.id IS NOT NULL THEN 'both'
                    WHEN ft.id IS NOT NULL THEN 'fulltext'
                    ELSE 'fuzzy' END AS match_type
        FROM ft
        FULL JOIN fz ON fz.kind = ft.kind AND fz.id = ft.id
    )
    SELECT s.kind, s.id, s.title, s.subtitle, s.snippet, s.url_path, s.parent_id,
           s.popularity, s.created_at, m.score, m.match_type
    FROM merged m
    JOIN mv_search_index s ON s.kind = m.kind AND s.id = m.id
    ORDER BY m.score DESC, s.popularity DESC, s.created_at DESC, s.id
    LIMIT least(greatest(coalesce(lim, 20), 1), 100)
$$;

-- Fresh statistics, so the first searches after the migration are planned on
-- real row counts rather than defaults (autovacuum would get there later).
ANALYZE mv_search_index, mv_chain_posts, mv_investors_directory;

COMMIT;
