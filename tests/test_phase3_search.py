"""Phase 3: search index, chain forums, investors directory, search functions.

Runs the guide's Step 3.2 and 3.3 verbatim on the demo data (plus a few rows
of our own with known words), checks the views against the base tables, the
refresh path (write -> process_mv_refresh_queue() -> visible / gone), hostile
and arbitrary input (never an error, never a write), and that the searches use
the GIN indexes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator

import psycopg2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schema.db import raw_connection

KINDS = ("project", "builder", "chain", "post", "investor")
VIEWS = ("mv_search_index", "mv_chain_posts", "mv_investors_directory")
FUNCTIONS = ("search_content", "search_fuzzy", "search_combined")
RESULT_COLUMNS = [
    "kind", "id", "title", "subtitle", "snippet", "url_path", "parent_id",
    "popularity", "created_at", "score", "match_type",
]  # fmt: skip
BASE_TABLES = (
    "users", "chains", "chain_members", "projects", "project_upvotes", "project_comments", "chain_posts",
    "post_upvotes", "post_comments", "conversations", "messages", "investors", "intro_requests",
)  # fmt: skip

HOSTILE_INPUTS = [
    "'", '"', "''", "\\", "!!&|:*", "", "   ", "\t\n\r", "a" * 5000, "blockchain " * 500,
    "🚀 web3 ロケット ракета 🔥", "'; DROP TABLE users; --", "' OR 1=1; --", "x' OR '1'='1",
    "-blockchain", "-", "or", "the", "a", "ab", ":*", "foo:*", "(a|b)&!c", "<->", "<2>", "\u200b",
    "日本語のプロジェクト", "%", "_", "%_%", "\\x00", "blockchain -", '"web3', 'web3 "', "OR OR OR",
    "- - -", "web3 or", "!", "a:b:c", "\u0301\u0301", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "$$; SELECT pg_sleep(10); $$",
    "\\'; SELECT 1; --", "Robert'); DROP TABLE projects;--", "\ufeffweb3", "ｗｅｂ３", "e\u0301",
    "web3" + " " * 3000 + "project", "🙂" * 2000, None,
]  # fmt: skip

POPULARITY_ONLY_TABLES = {"project_upvotes", "post_upvotes", "chain_members", "intro_requests"}

# Words that occur nowhere else, so assertions about them cannot be satisfied by chance.
FRESH_TITLE = "Zorblaxian Quasar Toolkit"


# ---------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def search_db(request: pytest.FixtureRequest) -> str:
    """The demo database (when the seed exists) plus our known rows, views refreshed."""
    url = request.getfixturevalue("demo_database_url")
    with raw_connection(url) as conn:
        _insert_known_rows(conn)
        _insert_filler_rows(conn)
        conn.commit()
    _refresh_all(url)
    return url


@pytest.fixture()
def conn(search_db: str) -> Iterator[psycopg2.extensions.connection]:
    with raw_connection(search_db) as c:
        c.autocommit = True
        yield c


def _insert_known_rows(conn: psycopg2.extensions.connection) -> None:
    """A handful of rows whose titles the guide's checks look for."""
    with conn.cursor() as cur:
        cur.execute(
            """
            WITH u AS (
                INSERT INTO users (username, name, role, bio) VALUES
                    ('p3_alice', 'Alice Nakamoto', 'builder', 'Builds blockchain voting tools'),
                    ('p3_bob', 'Bob Lovelace', 'investor', 'Backs web3 infrastructure'),
                    ('p3_carol', 'Carol Deleted', 'builder', 'gone')
                RETURNING id, username
            ), c AS (
                INSERT INTO chains (slug, name, description, owner_id)
                SELECT 'p3-web3-builders', 'Web3 Builders', 'People shipping blockchain apps', id
                FROM u WHERE username = 'p3_alice'
                RETURNING id
            ), p AS (
                INSERT INTO projects (user_id, chain_id, title, description, tags)
                SELECT u.id, c.id, t.title, t.description, t.tags::text[]
                FROM u, c, (VALUES
                    ('p3_alice', 'Blockchain Voting DAO', 'On-chain governance for small communities', '{dao,governance}'),
                    ('p3_alice', 'Web3 Wallet Project', 'A wallet project for web3 newcomers', '{web3,wallet}'),
                    ('p3_carol', 'Carol Blockchain Archive', 'Owned by a user who will be deleted', '{archive}')
                ) AS t(username, title, description, tags)
                WHERE u.username = t.username
                RETURNING id
            ), cp AS (
                INSERT INTO chain_posts (chain_id, user_id, title, body, is_pinned)
                SELECT c.id, u.id, t.title, t.body, t.pinned
                FROM u, c, (VALUES
                    ('Blockchain scaling thread', 'Rollups, sidechains and what to build next', false),
                    ('Welcome to Web3 Builders', 'Read this first', true)
                ) AS t(title, body, pinned)
                WHERE u.username = 'p3_alice'
                RETURNING id
            )
            INSERT INTO investors (user_id, firm_name, title, bio, focus_areas, stages, check_size_min,
                                   check_size_max, location)
            SELECT id, 'Lovelace Blockchain Capital', 'Partner', 'Early web3 investor',
                   '{blockchain,web3}', '{seed}', 25000, 250000, 'Lisbon'
            FROM u WHERE username = 'p3_bob'
            """
        )
        cur.execute(
            """
            INSERT INTO project_upvotes (user_id, project_id)
            SELECT u.id, p.id FROM users u, projects p
            WHERE u.username IN ('p3_alice', 'p3_bob') AND p.title = 'Blockchain Voting DAO';
            INSERT INTO post_upvotes (user_id, post_id)
            SELECT u.id, cp.id FROM users u, chain_posts cp
            WHERE u.username = 'p3_bob' AND cp.title = 'Blockchain scaling thread';
            INSERT INTO post_comments (post_id, user_id, body)
            SELECT cp.id, u.id, 'agreed' FROM users u, chain_posts cp
            WHERE u.username = 'p3_bob' AND cp.title = 'Blockchain scaling thread';
            INSERT INTO intro_requests (requester_id, investor_id, status)
            SELECT u.id, i.id, s FROM users u, investors i, unnest('{accepted,declined,pending,withdrawn}'::text[]) s
            WHERE u.username = 'p3_alice' AND i.firm_name = 'Lovelace Blockchain Capital';
            UPDATE users SET is_deleted = true WHERE username = 'p3_carol';
            """
        )


def _insert_filler_rows(conn: psycopg2.extensions.connection, at_least: int = 5000) -> None:
    """Top the projects up to a few thousand, so plans are those of a real table.

    On a table of ten rows the planner rightly prefers a sequential scan, and
    the index checks below would test the planner's arithmetic, not our indexes.
    """
    words = (
        "data cloud wallet market social graph token bridge privacy search chat music game health climate "
        "energy learning payments identity oracle lending analytics robot sensor travel fitness notes design"
    ).split()
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM projects")
        missing = at_least - cur.fetchone()[0]
        if missing <= 0:
            return
        cur.execute(
            """
            INSERT INTO projects (user_id, title, description, tags)
            SELECT (SELECT id FROM users WHERE username = 'p3_alice'),
                   initcap(w[1 + g %% n] || ' ' || w[1 + (g / n) %% n] || ' ' || w[1 + (g * 7) %% n]),
                   'Filler project number ' || g || ' about ' || w[1 + (g * 3) %% n],
                   ARRAY[w[1 + (g * 5) %% n]]
            FROM generate_series(1, %(missing)s) g,
                 LATERAL (SELECT %(words)s::text[] AS w, cardinality(%(words)s::text[]) AS n) x
            """,
            {"missing": missing, "words": words},
        )


def _refresh_all(url: str) -> None:
    """Bring the views up to date the way an operator would (guide Step 2.3)."""
    with raw_connection(url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT * FROM process_mv_refresh_queue()")
        cur.fetchall()
        for view in VIEWS:  # the queue may be empty if nothing was requested; refresh anyway
            cur.execute(f"REFRESH MATERIALIZED VIEW CONCURRENTLY {view}")
            # What autovacuum does soon after a big refresh; plans are checked in that steady state.
            cur.execute(f"ANALYZE {view}")


def _rows(conn: psycopg2.extensions.connection, sql: str, args: tuple = ()) -> list[dict]:
    with conn.cursor() as cur:
        cur.execute(sql, args)
        names = [d.name for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def _scalar(conn: psycopg2.extensions.connection, sql: str, args: tuple = ()) -> object:
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchone()[0]


def _process_queue(conn: psycopg2.extensions.connection) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT * FROM process_mv_refresh_queue()")
        cur.fetchall()


def _data_checksum(conn: psycopg2.extensions.connection) -> dict[str, str]:
    """md5 of every base table and view, row order independent."""
    sums = {}
    for rel in (*BASE_TABLES, *VIEWS):
        sums[rel] = _scalar(conn, f"SELECT count(*) || ':' || coalesce(sum(hashtext(t::text)::bigint), 0) FROM {rel} t")
    return sums


# ---------------------------------------------------------------------------
# Step 3.1: objects exist and can be refreshed CONCURRENTLY
# ---------------------------------------------------------------------------


def test_extension_views_and_functions_exist(conn) -> None:
    assert _scalar(conn, "SELECT count(*) FROM pg_extension WHERE extname = 'pg_trgm'") == 1
    matviews = {r["matviewname"] for r in _rows(conn, "SELECT matviewname FROM pg_matviews WHERE schemaname = 'public'")}
    assert set(VIEWS) <= matviews
    for fn in FUNCTIONS:
        volatility = _scalar(conn, "SELECT provolatile FROM pg_proc WHERE proname = %s", (fn,))
        assert volatility == "s", f"{fn} must be STABLE"


@pytest.mark.parametrize("view", VIEWS)
def test_every_view_has_a_plain_unique_index(conn, view: str) -> None:
    rows = _rows(
        conn,
        """
        SELECT i.indexrelid::regclass::text AS name
        FROM pg_index i
        WHERE i.indrelid = %s::regclass AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
        """,
        (view,),
    )
    assert rows, f"{view} needs a UNIQUE index on plain columns without WHERE for REFRESH CONCURRENTLY"


@pytest.mark.parametrize("view", VIEWS)
def test_refresh_without_changes_rewrites_no_row(conn, view: str) -> None:
    """No column depends on now()/random(): an idle CONCURRENTLY refresh leaves every tuple in place."""
    with conn.cursor() as cur:
        cur.execute(f"REFRESH MATERIALIZED VIEW CONCURRENTLY {view}")
        before = _rows(conn, f"SELECT ctid::text AS ctid FROM {view} ORDER BY ctid")
        cur.execute(f"REFRESH MATERIALIZED VIEW CONCURRENTLY {view}")
        after = _rows(conn, f"SELECT ctid::text AS ctid FROM {view} ORDER BY ctid")
    assert before and before == after


# ---------------------------------------------------------------------------
# Step 3.2 verbatim
# ---------------------------------------------------------------------------


def test_guide_fulltext_finds_blockchain(conn) -> None:
    rows = _rows(conn, "SELECT * FROM search_content('blockchain', NULL, 10);")
    assert 1 <= len(rows) <= 10
    assert list(rows[0]) == RESULT_COLUMNS
    assert any("blockchain" in (r["title"] + " " + (r["snippet"] or "") + " " + (r["subtitle"] or "")).lower()
               for r in rows)  # fmt: skip
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert {r["match_type"] for r in rows} == {"fulltext"}
    # Every row really matches: the same query on the view agrees row for row.
    ids = {(r["kind"], r["id"]) for r in rows}
    matching = _rows(
        conn,
        "SELECT kind, id FROM mv_search_index "
        "WHERE (title_vector || setweight(to_tsvector('english', body), 'C')) @@ websearch_to_tsquery('english', 'blockchain')",
    )
    assert ids <= {(r["kind"], r["id"]) for r in matching}


def test_guide_fuzzy_typo_finds_blockchain_titles(conn) -> None:
    rows = _rows(conn, "SELECT * FROM search_fuzzy('blokchain', NULL, 0.3, 10);")
    assert 1 <= len(rows) <= 10
    assert any("blockchain" in r["title"].lower() for r in rows)
    assert all(r["score"] >= 0.3 - 1e-6 for r in rows)
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert {r["match_type"] for r in rows} == {"fuzzy"}


def test_guide_combined_project_search_returns_projects_once(conn) -> None:
    rows = _rows(conn, "SELECT * FROM search_combined('web3 project', 'project', 20);")
    assert 1 <= len(rows) <= 20
    assert {r["kind"] for r in rows} == {"project"}
    assert len({r["id"] for r in rows}) == len(rows)
    assert any(r["title"] == "Web3 Wallet Project" for r in rows) or len(rows) == 20
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores, reverse=True)


def test_guide_explain_of_combined_shows_gin_index_scans(conn) -> None:
    plan = "\n".join(
        r["QUERY PLAN"] for r in _rows(conn, "EXPLAIN ANALYZE SELECT * FROM search_combined('test query', 'project', 20);")
    )
    # Inlined: the GIN indexes appear in the caller's plan, not behind a Function Scan.
    assert "Function Scan" not in plan
    assert re.search(r"Bitmap Index Scan on mv_search_index_title_vector", plan), plan
    assert re.search(r"Bitmap Index Scan on mv_search_index_trgm", plan), plan
    assert "Seq Scan on mv_search_index" not in plan


def test_content_search_is_inlined_and_uses_gin(conn) -> None:
    plan = "\n".join(r["QUERY PLAN"] for r in _rows(conn, "EXPLAIN SELECT * FROM search_content('blockchain', NULL, 10)"))
    assert "Function Scan" not in plan
    assert "mv_search_index_title_vector" in plan and "Seq Scan on mv_search_index" not in plan, plan


def test_fuzzy_search_uses_gin_inside_the_function(search_db: str) -> None:
    """search_fuzzy is plpgsql (it sets the trigram threshold), so look inside with auto_explain."""
    with raw_connection(search_db, autocommit=True) as c, c.cursor() as cur:
        for stmt in (
            "LOAD 'auto_explain'",
            "SET auto_explain.log_min_duration = 0",
            "SET auto_explain.log_nested_statements = on",
            "SET auto_explain.log_analyze = on",
            "SET client_min_messages = log",
        ):
            cur.execute(stmt)
        del c.notices[:]
        cur.execute("SELECT * FROM search_fuzzy('blokchain', NULL, 0.3, 10)")
        cur.fetchall()
        logged = "\n".join(c.notices)
    assert "Bitmap Index Scan on mv_search_index_trgm" in logged, logged
    assert "Seq Scan on mv_search_index" not in logged


def test_fuzzy_threshold_is_respected_and_not_leaked(conn) -> None:
    with conn.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("SET LOCAL pg_trgm.word_similarity_threshold = 0.77")
        loose = _rows(conn, "SELECT * FROM search_fuzzy('blokchain', NULL, 0.3, 100)")
        strict = _rows(conn, "SELECT * FROM search_fuzzy('blokchain', NULL, 0.62, 100)")
        after = _scalar(conn, "SHOW pg_trgm.word_similarity_threshold")
        cur.execute("ROLLBACK")
    assert after == "0.77"  # the function's own setting was undone on exit
    assert all(r["score"] >= 0.62 - 1e-6 for r in strict)
    assert {(r["kind"], r["id"]) for r in strict} <= {(r["kind"], r["id"]) for r in loose}
    assert len(loose) > len(strict) or len(loose) == 100
    # Exact against a sequential evaluation of the same measure (no index).
    expected = _scalar(
        conn,
        "SELECT count(*) FROM mv_search_index WHERE word_similarity('blokchain', search_text) >= 0.62",
    )
    assert len(strict) == min(expected, 100)


def test_combined_has_no_duplicates_and_merges_both_sides(conn) -> None:
    rows = _rows(conn, "SELECT * FROM search_combined('blockchain', NULL, 50)")
    keys = [(r["kind"], r["id"]) for r in rows]
    assert rows and len(keys) == len(set(keys))
    # 'lovelace' is a full-text hit (name, firm) and a trigram hit of the same investor: one row, 'both'.
    both = _rows(conn, "SELECT * FROM search_combined('lovelace', NULL, 20)")
    investor = [r for r in both if r["kind"] == "investor"]
    assert len(investor) == 1 and investor[0]["match_type"] == "both"
    assert investor[0]["score"] > 1.5  # title tier (>= 1) plus 0.5 * similarity 1.0
    typo = _rows(conn, "SELECT * FROM search_combined('blokchain', NULL, 20)")
    assert typo and {r["match_type"] for r in typo} == {"fuzzy"}
    assert any("blockchain" in r["title"].lower() for r in typo)
    assert all(r["score"] <= 0.5 + 1e-9 for r in typo)


def test_combined_skips_the_fuzzy_scan_when_full_text_has_enough(conn) -> None:
    # 'wallet' is in hundreds of titles (demo data plus the filler rows): 200 title hits.
    assert _scalar(conn, "SELECT count(*) FROM mv_search_index WHERE title_vector @@ 'wallet'::tsquery") >= 200
    plan = "\n".join(
        r["QUERY PLAN"]
        for r in _rows(conn, "EXPLAIN (ANALYZE, COSTS OFF) SELECT * FROM search_combined('wallet', NULL, 1)")
    )
    trgm = [line for line in plan.splitlines() if "Bitmap Index Scan on mv_search_index_trgm" in line]
    assert trgm and all("never executed" in line for line in trgm), plan
    body = [line for line in plan.splitlines() if "Bitmap Index Scan on mv_search_index_document" in line]
    assert body and all("never executed" in line for line in body), plan


@pytest.mark.parametrize("q", ["blockchain", "web3 project", "blokchain", "wallet", "lovelace", "sidechains", "dao"])
@pytest.mark.parametrize("fn", FUNCTIONS)
def test_a_larger_limit_returns_the_same_first_rows(conn, fn: str, q: str) -> None:
    """Offset paging (the API asks for offset + limit + 1 rows) needs prefix-stable results."""
    call = {
        "search_content": "SELECT kind, id, score FROM search_content(%s, NULL, %s)",
        "search_fuzzy": "SELECT kind, id, score FROM search_fuzzy(%s, NULL, 0.3, %s)",
        "search_combined": "SELECT kind, id, score FROM search_combined(%s, NULL, %s)",
    }[fn]
    small = _rows(conn, call, (q, 7))
    large = _rows(conn, call, (q, 100))
    assert large[: len(small)] == small
    assert len(small) == min(7, len(large))


def test_title_matches_rank_above_body_only_matches(conn) -> None:
    title_hit = _rows(conn, "SELECT * FROM search_content('voting', 'project', 20)")
    assert any(r["title"] == "Blockchain Voting DAO" and r["score"] >= 1 for r in title_hit)
    body_only = _rows(conn, "SELECT * FROM search_content('sidechains', NULL, 20)")
    thread = [r for r in body_only if r["title"] == "Blockchain scaling thread"]
    assert len(thread) == 1 and 0 <= thread[0]["score"] < 1
    scores = [r["score"] for r in body_only]
    assert scores == sorted(scores, reverse=True)


def test_prefix_of_last_word_matches(conn) -> None:
    rows = _rows(conn, "SELECT * FROM search_content('blockch', NULL, 10)")
    assert any("blockchain" in r["title"].lower() for r in rows)
    rows = _rows(conn, "SELECT * FROM search_content('web3 wall', 'project', 100)")
    assert any(r["title"] == "Web3 Wallet Project" for r in rows)


@pytest.mark.parametrize("fn", FUNCTIONS)
def test_null_query_unknown_type_and_limits(conn, fn: str) -> None:
    call = {
        "search_content": "SELECT * FROM search_content(%s, %s, %s)",
        "search_fuzzy": "SELECT * FROM search_fuzzy(%s, %s, 0.3, %s)",
        "search_combined": "SELECT * FROM search_combined(%s, %s, %s)",
    }[fn]
    assert _rows(conn, call, (None, None, 10)) == []
    assert _rows(conn, call, ("blockchain", "no-such-kind", 10)) == []
    assert len(_rows(conn, call, ("blockchain", None, 0))) == 1
    assert len(_rows(conn, call, ("blockchain", None, -7))) == 1
    assert len(_rows(conn, call, ("blockchain", None, 1_000_000))) <= 100
    for kind in KINDS:
        assert {r["kind"] for r in _rows(conn, call, ("blockchain", kind, 20))} <= {kind}


def test_soft_deleted_and_deleted_users_things_are_not_searchable(conn) -> None:
    titles = {r["title"] for r in _rows(conn, "SELECT title FROM mv_search_index")}
    assert "Carol Blockchain Archive" not in titles  # its author is deleted
    assert "Carol Deleted" not in titles
    assert "Blockchain Voting DAO" in titles


# ---------------------------------------------------------------------------
# Step 3.3 verbatim, and the views against the base tables
# ---------------------------------------------------------------------------


def test_guide_chain_posts_count_matches_base_tables(conn) -> None:
    count = _scalar(conn, "SELECT COUNT(*) FROM mv_chain_posts;")
    expected = _scalar(
        conn,
        """
        SELECT count(*) FROM chain_posts cp JOIN chains c ON c.id = cp.chain_id JOIN users u ON u.id = cp.user_id
        WHERE NOT cp.is_deleted AND NOT c.is_deleted AND NOT u.is_deleted
        """,
    )
    assert count == expected and count >= 2


def test_guide_forum_query_uses_the_index_and_orders_pinned_first(conn) -> None:
    guide_sql = """
        SELECT id, title, upvote_count, comment_count, trending_score
        FROM mv_chain_posts
        WHERE chain_id = (SELECT id FROM chains LIMIT 1)
        ORDER BY is_pinned DESC, trending_score DESC
        LIMIT 10;
    """
    rows = _rows(conn, guide_sql)
    assert len(rows) <= 10
    # The index serves this query shape (no Sort node). On the demo's ~400 posts the planner
    # rightly prefers a sequential scan and a sort; forbidding that shows the index matches the
    # WHERE and the ORDER BY. bench/search_latency.py prints the plan at scale, where it is chosen.
    with conn.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("SET LOCAL enable_seqscan = off")
        cur.execute("SET LOCAL enable_bitmapscan = off")
        plan = "\n".join(r["QUERY PLAN"] for r in _rows(conn, "EXPLAIN " + guide_sql))
        cur.execute("ROLLBACK")
    assert "Index Scan using mv_chain_posts_chain_hot" in plan and "Sort" not in plan, plan
    # The same query on our chain, which has a pinned post and a voted one.
    ours = _rows(
        conn,
        guide_sql.replace("(SELECT id FROM chains LIMIT 1)", "(SELECT id FROM chains WHERE slug = 'p3-web3-builders')")
        .replace("SELECT id, title", "SELECT id, is_pinned, title"),
    )
    assert ours[0]["title"] == "Welcome to Web3 Builders" and ours[0]["is_pinned"]
    assert [r["is_pinned"] for r in ours] == sorted((r["is_pinned"] for r in ours), reverse=True)
    thread = next(r for r in ours if r["title"] == "Blockchain scaling thread")
    assert (thread["upvote_count"], thread["comment_count"]) == (1, 1)


def test_chain_post_counts_equal_base_tables(conn) -> None:
    diff = _scalar(
        conn,
        """
        SELECT count(*) FROM mv_chain_posts m
        WHERE m.upvote_count <> (SELECT count(*) FROM post_upvotes v WHERE v.post_id = m.id)
           OR m.comment_count <> (SELECT count(*) FROM post_comments c WHERE c.post_id = m.id AND NOT c.is_deleted)
        """,
    )
    assert diff == 0


def test_trending_score_is_time_independent_and_monotone(conn) -> None:
    rows = _rows(
        conn,
        "SELECT upvote_count, comment_count, created_at, trending_score FROM mv_chain_posts ORDER BY random() LIMIT 200",
    )
    for r in rows:
        activity = max(r["upvote_count"] + 2 * r["comment_count"], 1)
        expected = math.log10(activity) + r["created_at"].timestamp() / 45000
        assert r["trending_score"] == pytest.approx(expected, rel=1e-12)


def test_investors_directory_counts(conn) -> None:
    row = _rows(conn, "SELECT * FROM mv_investors_directory WHERE firm_name = 'Lovelace Blockchain Capital'")[0]
    # accepted, declined, pending; the withdrawn request does not count as received
    assert (row["intro_requests_received"], row["intro_requests_accepted"]) == (3, 1)
    assert row["acceptance_rate"] == pytest.approx(1 / 3, abs=1e-4)
    assert row["focus_areas"] == ["blockchain", "web3"]
    diff = _scalar(
        conn,
        """
        SELECT count(*) FROM mv_investors_directory m
        WHERE m.intro_requests_received <> (
                SELECT count(*) FROM intro_requests r
                WHERE r.investor_id = m.id AND NOT r.is_deleted AND r.status <> 'withdrawn')
           OR m.intro_requests_accepted <> (
                SELECT count(*) FROM intro_requests r
                WHERE r.investor_id = m.id AND NOT r.is_deleted AND r.status = 'accepted')
        """,
    )
    assert diff == 0
    plan = "\n".join(
        r["QUERY PLAN"]
        for r in _rows(
            conn,
            "EXPLAIN SELECT * FROM mv_investors_directory WHERE focus_areas @> ARRAY['blockchain'] "
            "ORDER BY intro_requests_received DESC LIMIT 20",
        )
    )
    assert "mv_investors_directory" in plan


def test_search_popularity_equals_base_counts(conn) -> None:
    diff = _scalar(
        conn,
        """
        SELECT count(*) FROM mv_search_index s
        WHERE (s.kind = 'project' AND s.popularity <> (SELECT count(*) FROM project_upvotes v WHERE v.project_id = s.id))
           OR (s.kind = 'post' AND s.popularity <> (SELECT count(*) FROM post_upvotes v WHERE v.post_id = s.id))
           OR (s.kind = 'chain' AND s.popularity <> (SELECT count(*) FROM chain_members m WHERE m.chain_id = s.id))
        """,
    )
    assert diff == 0


# ---------------------------------------------------------------------------
# freshness through the refresh queue
# ---------------------------------------------------------------------------


def test_new_project_appears_after_queue_processing_and_disappears_when_soft_deleted(conn) -> None:
    with conn.cursor() as cur:
        cur.execute(
            """
            INSERT INTO projects (user_id, title, description, tags)
            SELECT id, %s, 'brand new', '{fresh}' FROM users WHERE username = 'p3_alice'
            RETURNING id
            """,
            (FRESH_TITLE,),
        )
        project_id = cur.fetchone()[0]
    assert _rows(conn, "SELECT * FROM search_content('zorblaxian', NULL, 10)") == []
    _process_queue(conn)
    found = _rows(conn, "SELECT * FROM search_content('zorblaxian', NULL, 10)")
    assert [(r["kind"], str(r["id"])) for r in found] == [("project", str(project_id))]
    assert any(str(r["id"]) == str(project_id) for r in _rows(conn, "SELECT * FROM search_fuzzy('zorblaxan', NULL, 0.3, 10)"))
    assert any(str(r["id"]) == str(project_id) for r in _rows(conn, "SELECT * FROM search_combined('zorblax', NULL, 10)"))

    with conn.cursor() as cur:
        cur.execute("UPDATE projects SET is_deleted = true WHERE id = %s", (project_id,))
    _process_queue(conn)
    for sql in (
        "SELECT * FROM search_content('zorblaxian', NULL, 10)",
        "SELECT * FROM search_fuzzy('zorblaxian', NULL, 0.3, 10)",
        "SELECT * FROM search_combined('zorblaxian', NULL, 10)",
    ):
        assert all(str(r["id"]) != str(project_id) for r in _rows(conn, sql)), sql


def test_new_forum_post_and_upvote_reach_mv_chain_posts(conn) -> None:
    with conn.cursor() as cur:
        cur.execute(
            """
            INSERT INTO chain_posts (chain_id, user_id, title, body)
            SELECT c.id, u.id, 'Quasar forum post', 'body' FROM chains c, users u
            WHERE c.slug = 'p3-web3-builders' AND u.username = 'p3_alice'
            RETURNING id
            """
        )
        post_id = cur.fetchone()[0]
        cur.execute(
            "INSERT INTO post_upvotes (user_id, post_id) SELECT id, %s FROM users WHERE username = 'p3_bob'", (post_id,)
        )
    _process_queue(conn)
    row = _rows(conn, "SELECT upvote_count, comment_count FROM mv_chain_posts WHERE id = %s", (post_id,))
    assert row == [{"upvote_count": 1, "comment_count": 0}]


def test_views_are_registered_with_dependencies_and_request_triggers(conn) -> None:
    registry = {
        r["view_name"]: r
        for r in _rows(conn, "SELECT * FROM mv_registry WHERE view_name = ANY(%s)", (list(VIEWS),))
    }
    assert set(registry) == set(VIEWS)
    for r in registry.values():
        assert 0 < r["debounce_seconds"] <= r["max_wait_seconds"] < 60
    for view in VIEWS:
        # The tables the view's query reads, from the catalog (not from our own list).
        read = {
            r["t"]
            for r in _rows(
                conn,
                """
                SELECT DISTINCT d.refobjid::regclass::text AS t
                FROM pg_rewrite w JOIN pg_depend d ON d.objid = w.oid AND d.classid = 'pg_rewrite'::regclass
                JOIN pg_class c ON c.oid = d.refobjid AND c.relkind = 'r'
                WHERE w.ev_class = %s::regclass AND d.refobjid <> w.ev_class
                """,
                (view,),
            )
        }
        declared = {
            r["table_name"] for r in _rows(conn, "SELECT table_name FROM mv_dependencies WHERE view_name = %s", (view,))
        }
        # The only tables left out on purpose: they feed mv_search_index.popularity alone (a ranking
        # tiebreaker; see "Dependencies" in the migration).
        exempt = POPULARITY_ONLY_TABLES if view == "mv_search_index" else set()
        assert read - exempt == declared, view
        for table in declared:
            triggers = _scalar(
                conn,
                "SELECT count(*) FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid "
                "WHERE t.tgrelid = %s::regclass AND p.proname = 'request_mv_refresh' AND NOT t.tgisinternal",
                (table,),
            )
            assert triggers == 1, f"{table} feeds {view} but has no request trigger"


# ---------------------------------------------------------------------------
# hostile and arbitrary input
# ---------------------------------------------------------------------------


def _call_all(cur: psycopg2.extensions.cursor, q: str | None, kind: str | None, lim: int = 10,
              threshold: float = 0.3) -> list[list[tuple]]:  # fmt: skip
    out = []
    for sql, args in (
        ("SELECT * FROM search_content(%s, %s, %s)", (q, kind, lim)),
        ("SELECT * FROM search_fuzzy(%s, %s, %s, %s)", (q, kind, threshold, lim)),
        ("SELECT * FROM search_combined(%s, %s, %s)", (q, kind, lim)),
    ):
        cur.execute(sql, args)
        out.append(cur.fetchall())
    return out


def test_hostile_input_never_raises_and_changes_nothing(conn) -> None:
    before = _data_checksum(conn)
    with conn.cursor() as cur:
        # READ ONLY: any attempt to write would be an error, not a silent change.
        cur.execute("BEGIN TRANSACTION READ ONLY")
        for q in HOSTILE_INPUTS:
            for kind in (None, "project", "bogus", "'; DROP TABLE users; --"):
                for result in _call_all(cur, q, kind):
                    assert len(result) <= 10
                    assert all(len(row) == len(RESULT_COLUMNS) for row in result)
        cur.execute("COMMIT")
    assert _data_checksum(conn) == before
    assert _scalar(conn, "SELECT to_regclass('users') IS NOT NULL")


def test_injection_text_is_searched_as_text(conn) -> None:
    rows = _rows(conn, "SELECT * FROM search_content(%s, NULL, 10)", ("'; DROP TABLE users; --",))
    # 'drop' & 'tabl' & 'user' as words: nothing has all three, and nothing was dropped
    assert rows == []
    assert _scalar(conn, "SELECT count(*) FROM users") > 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    # No lone surrogates either: UTF-8 has no encoding for them, so no client can send one,
    # and psycopg2 cannot encode them (the call would fail before reaching SQL).
    q=st.one_of(st.none(), st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
                                   max_size=300)),
    kind=st.sampled_from([None, *KINDS]),
    lim=st.integers(min_value=-(2**31), max_value=2**31 - 1),
    threshold=st.floats(width=32, allow_nan=True, allow_infinity=True),
)
def test_arbitrary_text_never_raises(conn, q: str | None, kind: str | None, lim: int, threshold: float) -> None:
    with conn.cursor() as cur:
        content, fuzzy, combined = _call_all(cur, q, kind, lim, threshold)
    cap = min(max(lim, 1), 100)
    for result in (content, fuzzy, combined):
        assert len(result) <= cap
        assert all(kind is None or row[0] == kind for row in result)
    assert len({(r[0], r[1]) for r in combined}) == len(combined)
    floor = 1.0 if math.isnan(threshold) else min(max(threshold, 0.1), 1.0)
    assert all(row[9] >= floor - 1e-6 for row in fuzzy)
