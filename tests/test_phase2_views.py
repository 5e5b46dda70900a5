"""The five phase 2 materialized views (0021) on the demo data.

Claims: the guide's Step 2.2 runs verbatim and every view has rows; a view
equals a from-scratch run of its own definition after a refresh; writes
(new project, upvote, comment, soft deletes) reach the views through
process_mv_refresh_queue(); every view can be refreshed CONCURRENTLY (unique
index on plain columns, no WHERE); no column depends on the clock, so a refresh
with nothing changed rewrites no row and one upvote rewrites one feed row;
keyset pagination over the feed's indexes returns the full order.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import pytest

from schema.db import raw_connection

PHASE2_VIEWS = (
    "mv_feed_projects",
    "mv_leaderboard_projects",
    "mv_leaderboard_builders",
    "mv_chains_discovery",
    "mv_project_details",
)


@pytest.fixture(scope="module")
def db(demo_database_url: str) -> str:
    """The demo data, with nothing pending."""
    with raw_connection(demo_database_url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT * FROM process_mv_refresh_queue()")
    return demo_database_url


@pytest.fixture()
def conn(db: str) -> Iterator[Any]:
    with raw_connection(db, autocommit=True) as c:
        yield c


def q(conn: Any, sql: str, params: tuple = ()) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall() if cur.description else []


def one(conn: Any, sql: str, params: tuple = ()) -> Any:
    rows = q(conn, sql, params)
    return rows[0][0] if rows else None


def process(conn: Any) -> dict[str, tuple]:
    rows = q(conn, "SELECT view_name, status, error FROM process_mv_refresh_queue()")
    failed = [r for r in rows if r[1] == "failed"]
    assert not failed, failed
    return {r[0]: r[1:] for r in rows}


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def some_user(conn: Any, offset: int = 0) -> Any:
    return one(conn, "SELECT id FROM users WHERE NOT is_deleted ORDER BY username LIMIT 1 OFFSET %s", (offset,))


def new_project(conn: Any, title: str, user_id: Any = None) -> Any:
    user_id = user_id or some_user(conn)
    return one(conn, "INSERT INTO projects (user_id, title, description) VALUES (%s, %s, 'about it') RETURNING id",
               (user_id, title))


def test_step_2_2_views_exist_and_have_rows(conn: Any) -> None:
    names = {r[0] for r in q(conn, "SELECT matviewname FROM pg_matviews WHERE schemaname = 'public';")}
    assert names >= set(PHASE2_VIEWS)
    counts = {}
    for view in PHASE2_VIEWS:  # names from the constant above
        counts[view] = one(conn, f"SELECT COUNT(*) FROM {view};")
    assert all(n > 0 for n in counts.values()), counts
    assert counts["mv_feed_projects"] == one(conn, """
        SELECT count(*) FROM projects p JOIN users u ON u.id = p.user_id
        WHERE NOT p.is_deleted AND NOT u.is_deleted""")
    assert counts["mv_project_details"] == counts["mv_feed_projects"]


def test_every_materialized_view_has_a_plain_unique_index(conn: Any) -> None:
    rows = q(conn, """
        SELECT m.matviewname,
               bool_or(i.indisunique AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL)
        FROM pg_matviews m
        LEFT JOIN pg_index i ON i.indrelid = (quote_ident(m.schemaname) || '.' || quote_ident(m.matviewname))::regclass
        WHERE m.schemaname = 'public'
        GROUP BY m.matviewname""")
    assert rows and all(ok for _, ok in rows), [name for name, ok in rows if not ok]


# Trigger-kept counters a view may read instead of counting a base table
# (0012): the base tables whose writes change them, which must then be the
# registered dependencies (project_stats itself has no request trigger).
COUNTER_SOURCES = {"project_stats_live": {"project_upvotes", "project_comments"}}


def _referenced_tables(conn: Any, view: str) -> set[str]:
    found = {r[0] for r in q(conn, """
        SELECT DISTINCT c.relname
        FROM pg_rewrite rw
        JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = rw.oid
                        AND d.refclassid = 'pg_class'::regclass
        JOIN pg_class c ON c.oid = d.refobjid
        WHERE rw.ev_class = %s::regclass AND c.oid <> rw.ev_class AND c.relkind IN ('r', 'p', 'v')""", (view,))}
    tables = set()
    for name in found:
        tables |= COUNTER_SOURCES.get(name, {name})
    return tables


@pytest.mark.parametrize("view", PHASE2_VIEWS)
def test_dependencies_name_every_table_the_view_reads(conn: Any, view: str) -> None:
    registered = {r[0] for r in q(conn, "SELECT table_name FROM mv_dependencies WHERE view_name = %s", (view,))}
    assert _referenced_tables(conn, view) == registered
    with_trigger = {r[0] for r in q(conn, "SELECT tgrelid::regclass::text FROM pg_trigger "
                                          "WHERE tgname = 'trg_mv_request_refresh'")}
    assert registered <= with_trigger


def _differences(conn: Any, view: str) -> int:
    definition = one(conn, "SELECT pg_get_viewdef(%s::regclass, true)", (view,)).rstrip().rstrip(";")
    # The view name is from PHASE2_VIEWS, the definition from the catalog.
    return one(conn, f"""
        SELECT count(*) FROM (
            (TABLE {view} EXCEPT ALL SELECT * FROM ({definition}) d1)
            UNION ALL
            (SELECT * FROM ({definition}) d2 EXCEPT ALL TABLE {view})
        ) diff""")


def test_views_equal_their_definitions_after_writes_and_refresh(conn: Any) -> None:
    project = new_project(conn, "Recompute check")
    voters = [r[0] for r in q(conn, "SELECT id FROM users WHERE NOT is_deleted ORDER BY username LIMIT 3")]
    for voter in voters:
        q(conn, "INSERT INTO project_upvotes (user_id, project_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
          (voter, project))
    q(conn, "INSERT INTO project_comments (project_id, user_id, body) VALUES (%s, %s, 'nice')", (project, voters[0]))
    q(conn, "UPDATE project_comments SET is_deleted = true WHERE id = (SELECT id FROM project_comments "
            "WHERE NOT is_deleted AND project_id <> %s ORDER BY id LIMIT 1)", (project,))
    q(conn, "UPDATE projects SET is_deleted = true WHERE id = (SELECT id FROM mv_leaderboard_projects "
            "WHERE rank = 2)")
    q(conn, "INSERT INTO chain_members (chain_id, user_id) SELECT c.id, u.id FROM chains c, users u "
            "WHERE NOT EXISTS (SELECT 1 FROM chain_members m WHERE m.chain_id = c.id AND m.user_id = u.id) LIMIT 1")
    pending_before = {r[0] for r in q(conn, "SELECT view_name FROM mv_refresh_queue WHERE status = 'pending'")}
    assert pending_before >= set(PHASE2_VIEWS)
    differing = {view: _differences(conn, view) for view in PHASE2_VIEWS}
    assert any(differing.values()), "the writes should have made the views stale"
    processed = process(conn)
    assert all(processed[v][0] == "completed" for v in PHASE2_VIEWS)
    assert {view: _differences(conn, view) for view in PHASE2_VIEWS} == dict.fromkeys(PHASE2_VIEWS, 0)


def test_new_project_reaches_the_feed_and_its_counts_follow_writes(conn: Any) -> None:
    project = new_project(conn, "Fresh feed project")
    assert q(conn, "SELECT 1 FROM mv_feed_projects WHERE id = %s", (project,)) == []
    assert one(conn, "SELECT status FROM mv_refresh_queue WHERE view_name = 'mv_feed_projects'") == "pending"
    process(conn)
    row = q(conn, "SELECT title, author_id, upvote_count, comment_count FROM mv_feed_projects WHERE id = %s",
            (project,))
    author = one(conn, "SELECT user_id FROM projects WHERE id = %s", (project,))
    assert row == [("Fresh feed project", author, 0, 0)]
    assert one(conn, "SELECT description FROM mv_project_details WHERE id = %s", (project,)) == "about it"
    voter = some_user(conn, 1)
    q(conn, "INSERT INTO project_upvotes (user_id, project_id) VALUES (%s, %s)", (voter, project))
    q(conn, "INSERT INTO project_comments (project_id, user_id, body) VALUES (%s, %s, 'hello')", (project, voter))
    process(conn)
    assert q(conn, "SELECT upvote_count, comment_count FROM mv_feed_projects WHERE id = %s", (project,)) == [(1, 1)]
    # The project page's view holds no counts (the API reads project_stats_live), and
    # votes do not ask for its refresh.
    assert q(conn, "SELECT upvote_count, comment_count FROM project_stats_live WHERE project_id = %s",
             (project,)) == [(1, 1)]
    assert q(conn, "SELECT 1 FROM mv_dependencies WHERE view_name = 'mv_project_details' "
                   "AND table_name IN ('project_upvotes', 'project_comments')") == []


def test_soft_deleted_things_disappear(conn: Any) -> None:
    project = new_project(conn, "Doomed project")
    process(conn)
    assert one(conn, "SELECT count(*) FROM mv_feed_projects WHERE id = %s", (project,)) == 1
    q(conn, "UPDATE projects SET is_deleted = true WHERE id = %s", (project,))
    process(conn)
    for view in ("mv_feed_projects", "mv_project_details", "mv_leaderboard_projects"):
        assert one(conn, f"SELECT count(*) FROM {view} WHERE id = %s", (project,)) == 0, view

    # A deleted user's projects and leaderboard entry go too.
    top_builder = one(conn, "SELECT user_id FROM mv_leaderboard_builders WHERE rank = 1")
    q(conn, "UPDATE users SET is_deleted = true WHERE id = %s", (top_builder,))
    process(conn)
    assert one(conn, "SELECT count(*) FROM mv_feed_projects WHERE author_id = %s", (top_builder,)) == 0
    assert one(conn, "SELECT count(*) FROM mv_leaderboard_builders WHERE user_id = %s", (top_builder,)) == 0
    assert one(conn, "SELECT count(*) FROM mv_leaderboard_projects WHERE author_id = %s", (top_builder,)) == 0

    # A deleted comment stops counting.
    project, count = q(conn, "SELECT id, comment_count FROM mv_feed_projects WHERE comment_count > 0 LIMIT 1")[0]
    q(conn, "UPDATE project_comments SET is_deleted = true WHERE id = (SELECT id FROM project_comments "
            "WHERE project_id = %s AND NOT is_deleted LIMIT 1)", (project,))
    process(conn)
    assert one(conn, "SELECT comment_count FROM mv_feed_projects WHERE id = %s", (project,)) == count - 1

    # A deleted chain leaves discovery.
    chain = one(conn, "SELECT id FROM mv_chains_discovery ORDER BY member_count DESC, id LIMIT 1")
    q(conn, "UPDATE chains SET is_deleted = true WHERE id = %s", (chain,))
    process(conn)
    assert one(conn, "SELECT count(*) FROM mv_chains_discovery WHERE id = %s", (chain,)) == 0
    assert one(conn, "SELECT count(*) FROM mv_feed_projects WHERE chain_id = %s", (chain,)) == 0


def _write_stats(db: str, views: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    with raw_connection(db, autocommit=True) as c:
        q(c, "SELECT pg_stat_clear_snapshot()")
        rows = q(c, "SELECT relname, n_tup_ins, n_tup_del FROM pg_stat_user_tables WHERE relname = ANY(%s)",
                 (list(views),))
    return {r[0]: (r[1], r[2]) for r in rows}


def _refresh_in_own_session(db: str, admin: Any, view: str) -> None:
    """Force-refresh one view from a session that then exits: its statistics are flushed on exit."""
    c = psycopg2.connect(admin.dsn)
    try:
        c.autocommit = True
        pid = one(c, "SELECT pg_backend_pid()")
        assert one(c, "SELECT status FROM mv_refresh_run(%s, NULL, NULL, true)", (view,)) == "completed"
    finally:
        c.close()
    wait_until(lambda: one(admin, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)) == 0,
               "the refreshing backend to exit")


def test_no_column_depends_on_the_clock_and_refresh_writes_follow_changes(db: str, conn: Any) -> None:
    process(conn)
    for view in PHASE2_VIEWS:
        _refresh_in_own_session(db, conn, view)
    before = _write_stats(db, PHASE2_VIEWS)
    time.sleep(1.1)  # any clock-based column would now differ
    for view in PHASE2_VIEWS:
        _refresh_in_own_session(db, conn, view)
    after = _write_stats(db, PHASE2_VIEWS)
    assert after == before, "a refresh with nothing changed rewrote rows"

    # One new upvote rewrites exactly one feed row; one title edit one feed row and one details row.
    project = one(conn, "SELECT id FROM mv_feed_projects ORDER BY id LIMIT 1")
    voter = one(conn, "SELECT id FROM users u WHERE NOT is_deleted AND NOT EXISTS (SELECT 1 FROM project_upvotes v "
                      "WHERE v.user_id = u.id AND v.project_id = %s) ORDER BY id LIMIT 1", (project,))
    q(conn, "INSERT INTO project_upvotes (user_id, project_id) VALUES (%s, %s)", (voter, project))
    for view in ("mv_feed_projects", "mv_project_details"):
        _refresh_in_own_session(db, conn, view)
    changed = _write_stats(db, ("mv_feed_projects", "mv_project_details"))
    assert [changed["mv_feed_projects"][i] - after["mv_feed_projects"][i] for i in (0, 1)] == [1, 1]
    assert changed["mv_project_details"] == after["mv_project_details"], "an upvote rewrote a details row"
    q(conn, "UPDATE projects SET title = title || ' (edited)' WHERE id = %s", (project,))
    for view in ("mv_feed_projects", "mv_project_details"):
        _refresh_in_own_session(db, conn, view)
    edited = _write_stats(db, ("mv_feed_projects", "mv_project_details"))
    for view in ("mv_feed_projects", "mv_project_details"):
        assert [edited[view][i] - changed[view][i] for i in (0, 1)] == [1, 1], view


def test_trending_score_is_log_activity_plus_creation_time(conn: Any) -> None:
    rows = q(conn, """SELECT upvote_count, comment_count, extract(epoch FROM created_at)::float8, trending_score
                      FROM mv_feed_projects ORDER BY id LIMIT 200""")
    for up, comments, epoch, score in rows:
        assert math.isclose(score, math.log10(max(up + 2 * comments, 1)) + epoch / 45000.0, rel_tol=0, abs_tol=1e-9)
    # Ten times the activity is worth 12.5 hours of recency.
    assert math.isclose(math.log10(10), 12.5 * 3600 / 45000.0)


def test_feed_keyset_pages_return_the_full_order(conn: Any) -> None:
    full = q(conn, "SELECT id FROM mv_feed_projects ORDER BY trending_score DESC, id DESC")
    pages: list[tuple] = []
    cursor = None
    while True:
        if cursor is None:
            page = q(conn, "SELECT trending_score, id FROM mv_feed_projects ORDER BY trending_score DESC, id DESC "
                           "LIMIT 50")
        else:
            page = q(conn, "SELECT trending_score, id FROM mv_feed_projects WHERE (trending_score, id) < (%s, %s) "
                           "ORDER BY trending_score DESC, id DESC LIMIT 50", cursor)
        if not page:
            break
        pages.extend((r[1],) for r in page)
        cursor = page[-1]
    assert pages == full


@pytest.mark.parametrize(("read", "index"), [
    ("SELECT id FROM mv_feed_projects ORDER BY trending_score DESC, id DESC LIMIT 20", "mv_feed_projects_trending"),
    ("SELECT id FROM mv_feed_projects ORDER BY created_at DESC, id DESC LIMIT 20", "mv_feed_projects_newest"),
    ("SELECT id FROM mv_leaderboard_projects WHERE rank > 20 ORDER BY rank LIMIT 20", "mv_leaderboard_projects_rank"),
    ("SELECT user_id FROM mv_leaderboard_builders ORDER BY rank LIMIT 20", "mv_leaderboard_builders_rank"),
    ("SELECT id FROM mv_chains_discovery ORDER BY member_count DESC, id LIMIT 20", "mv_chains_discovery_members"),
    ("SELECT id FROM mv_chains_discovery ORDER BY activity_count DESC, id LIMIT 20", "mv_chains_discovery_activity"),
])
def test_page_reads_can_use_their_index(conn: Any, read: str, index: str) -> None:
    # Demo data are small enough that a sort may be cheaper; this checks the index serves the order at all.
    q(conn, "SET enable_seqscan = off")
    q(conn, "SET enable_sort = off")
    try:
        plan = "\n".join(r[0] for r in q(conn, "EXPLAIN " + read))
    finally:
        q(conn, "RESET enable_seqscan")
        q(conn, "RESET enable_sort")
    assert index in plan and "Sort" not in plan, plan


def test_leaderboards_rank_from_one_without_gaps_in_count_order(conn: Any) -> None:
    rows = q(conn, "SELECT rank, upvote_count FROM mv_leaderboard_projects ORDER BY rank")
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1))
    assert all(a[1] >= b[1] for a, b in zip(rows, rows[1:], strict=False))
    rows = q(conn, "SELECT rank, upvotes_received FROM mv_leaderboard_builders ORDER BY rank")
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1))
    assert all(a[1] >= b[1] for a, b in zip(rows, rows[1:], strict=False))
    assert len(rows) <= 1000
