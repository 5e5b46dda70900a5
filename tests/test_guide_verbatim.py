"""The owner's guide (denormalization-guide.md), its verification queries run VERBATIM
with psql on a seeded demo database, in the guide's order, with the guide's answers.

Each SQL block below is copied character for character from the guide (Steps 1.3,
1.4, 2.2, 2.3, the SQL of 2.5, 3.2, 3.3 and 4.3). A block is cut into its
statements at the line-ending semicolons (comments stay with the statement they
precede) and each statement goes to ``psql -X -v ON_ERROR_STOP=1 --csv -c``, the
way the guide runs Step 2.5, so every answer can be checked. Steps 1.4 and 2.3
write (a test project, an UPDATE and a queue run); the module's database is its
own copy of the demo data and no worker runs against it.
"""

from __future__ import annotations

import csv
import io
import re
import subprocess
from collections.abc import Iterator

import psycopg2.extensions
import pytest
import sqlalchemy as sa

from schema.db import raw_connection

# ---------------------------------------------------------------------------
# The guide, verbatim
# ---------------------------------------------------------------------------

STEP_1_3 = """-- Check row counts
SELECT COUNT(*) FROM user_dashboard_stats;
SELECT COUNT(*) FROM message_conversations_denorm;
SELECT COUNT(*) FROM intro_request_stats;

-- Check triggers
SELECT COUNT(*) FROM pg_trigger WHERE tgname LIKE 'trg_dashboard%' OR tgname LIKE 'trg_conversation%' OR tgname LIKE 'trg_intro%';
-- Expected: 9 triggers
"""

STEP_1_4 = """-- Test project creation trigger
INSERT INTO projects (id, user_id, title, description, is_deleted)
VALUES (gen_random_uuid(), (SELECT id FROM users LIMIT 1), 'Test Project', 'Test', FALSE);

-- Verify dashboard stats updated
SELECT project_count, active_projects, last_updated_at
FROM user_dashboard_stats
WHERE user_id = (SELECT user_id FROM projects WHERE title = 'Test Project');

-- Clean up test
DELETE FROM projects WHERE title = 'Test Project';
"""

STEP_2_2 = """-- Check all views exist
SELECT matviewname FROM pg_matviews WHERE schemaname = 'public';
-- Expected: mv_feed_projects, mv_leaderboard_projects, mv_leaderboard_builders, mv_chains_discovery, mv_project_details

-- Check row counts
SELECT COUNT(*) FROM mv_feed_projects;
SELECT COUNT(*) FROM mv_leaderboard_projects;
SELECT COUNT(*) FROM mv_leaderboard_builders;
SELECT COUNT(*) FROM mv_chains_discovery;
SELECT COUNT(*) FROM mv_project_details;
"""

STEP_2_3 = """-- Trigger a refresh
UPDATE projects SET updated_at = CURRENT_TIMESTAMP WHERE id = (SELECT id FROM projects LIMIT 1);

-- Check queue (should have pending entry)
SELECT * FROM mv_refresh_queue WHERE view_name = 'mv_feed_projects';

-- Process queue (manual test)
SELECT * FROM process_mv_refresh_queue();

-- Check log
SELECT * FROM mv_refresh_log ORDER BY refresh_started_at DESC LIMIT 5;
"""

STEP_3_2 = """-- Test full-text search
SELECT * FROM search_content('blockchain', NULL, 10);

-- Test fuzzy search (with typo)
SELECT * FROM search_fuzzy('blokchain', NULL, 0.3, 10);

-- Test combined search
SELECT * FROM search_combined('web3 project', 'project', 20);

-- Check performance
EXPLAIN ANALYZE SELECT * FROM search_combined('test query', 'project', 20);
-- Should use GIN index scan
"""

STEP_3_3 = """-- Check chain posts
SELECT COUNT(*) FROM mv_chain_posts;

-- Test forum query
SELECT id, title, upvote_count, comment_count, trending_score
FROM mv_chain_posts
WHERE chain_id = (SELECT id FROM chains LIMIT 1)
ORDER BY is_pinned DESC, trending_score DESC
LIMIT 10;
"""

STEP_4_3 = """-- Test query with index
EXPLAIN ANALYZE
SELECT * FROM projects
WHERE user_id = (SELECT id FROM users LIMIT 1) AND is_deleted = FALSE
ORDER BY created_at DESC
LIMIT 10;

-- Should use: Index Scan using idx_projects_user_deleted
"""

STEP_2_5 = [
    'SELECT * FROM mv_refresh_queue ORDER BY refresh_requested_at DESC LIMIT 10;',
    "SELECT view_name, AVG(duration_ms), COUNT(*) FROM mv_refresh_log WHERE status = 'completed' GROUP BY view_name;",
]


PHASE2_VIEWS = {"mv_feed_projects", "mv_leaderboard_projects", "mv_leaderboard_builders", "mv_chains_discovery",
                "mv_project_details"}


def statements(block: str) -> list[str]:
    """The block's statements, each with the comment lines before it; comment-only tails dropped."""
    parts = re.split(r"(?<=;)\n", block)
    return [p.strip("\n") for p in parts if re.sub(r"--[^\n]*", "", p).strip()]


class Psql:
    def __init__(self, url: str) -> None:
        self.url = url
        u = sa.engine.make_url(url)
        self.args = ["psql", "-X", "-v", "ON_ERROR_STOP=1", "--csv", "-h", u.host, "-p", str(u.port),
                     "-U", u.username, "-d", u.database]

    def run(self, statement: str) -> list[dict[str, str]] | str:
        """Rows (as dicts) of a query, or the command tag of anything else (e.g. 'UPDATE 1')."""
        out = subprocess.run([*self.args, "-c", statement], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, f"{statement}\n{out.stderr}"
        assert "ERROR" not in out.stderr, out.stderr
        text = out.stdout
        if re.fullmatch(r"[A-Z]+( \d+)+\n", text):
            return text.strip()
        return list(csv.DictReader(io.StringIO(text)))


@pytest.fixture(scope="module")
def psql(demo_database_url: str) -> Psql:
    return Psql(demo_database_url)


@pytest.fixture(scope="module")
def cur(demo_database_url: str) -> Iterator[psycopg2.extensions.cursor]:
    with raw_connection(demo_database_url, autocommit=True) as conn, conn.cursor() as c:
        yield c


def one(cur: psycopg2.extensions.cursor, sql: str, params: tuple = ()) -> object:
    cur.execute(sql, params)
    return cur.fetchone()[0]


def test_step_1_3_row_counts_and_nine_triggers(psql: Psql, cur) -> None:
    answers = [psql.run(s) for s in statements(STEP_1_3)]
    counts = [int(rows[0]["count"]) for rows in answers]
    users, conversations = one(cur, "SELECT count(*) FROM users"), one(cur, "SELECT count(*) FROM conversations")
    # The guide's numbers (its Step 1.2 NOTICEs): 1523 users, 487 conversations; then 9 triggers.
    assert counts == [users, conversations, users, 9] == [1523, 487, 1523, 9]


def test_step_1_4_project_count_up_on_insert_and_back_on_delete(psql: Psql, cur) -> None:
    insert, select, delete = statements(STEP_1_4)
    user = one(cur, "SELECT id FROM users LIMIT 1")  # the user the guide's INSERT picks
    cur.execute("SELECT project_count, active_projects FROM user_dashboard_stats WHERE user_id = %s", (user,))
    before = cur.fetchone()
    assert before[0] > 0  # a builder with projects: the change is not just 0 -> 1
    assert psql.run(insert) == "INSERT 0 1"
    rows = psql.run(select)
    assert len(rows) == 1
    assert (int(rows[0]["project_count"]), int(rows[0]["active_projects"])) == (before[0] + 1, before[1] + 1)
    assert rows[0]["last_updated_at"]
    assert psql.run(delete) == "DELETE 1"
    cur.execute("SELECT project_count, active_projects FROM user_dashboard_stats WHERE user_id = %s", (user,))
    assert cur.fetchone() == before


def test_step_2_2_every_view_listed_and_non_empty(psql: Psql, cur) -> None:
    listing, *counts = statements(STEP_2_2)
    names = {r["matviewname"] for r in psql.run(listing)}
    assert names >= PHASE2_VIEWS
    assert len(counts) == 5
    for statement in counts:
        view = re.search(r"FROM (\w+);", statement).group(1)
        n = int(psql.run(statement)[0]["count"])
        assert n > 0, view
    live = one(cur, "SELECT count(*) FROM projects p JOIN users u ON u.id = p.user_id "
                    "WHERE NOT p.is_deleted AND NOT u.is_deleted")
    assert int(psql.run(counts[0])[0]["count"]) == live  # the feed holds every live project


def test_step_2_3_and_2_5_update_queues_process_refreshes_and_logs(psql: Psql, cur) -> None:
    update, queue, process, log = statements(STEP_2_3)
    before = one(cur, "SELECT clock_timestamp()")
    assert psql.run(update) == "UPDATE 1"
    entry = psql.run(queue)
    assert len(entry) == 1 and entry[0]["view_name"] == "mv_feed_projects"
    assert entry[0]["status"] == "pending" and entry[0]["refresh_requested_at"]
    processed = {r["view_name"]: r for r in psql.run(process)}
    assert processed["mv_feed_projects"]["status"] == "completed"
    assert all(r["status"] == "completed" for r in processed.values()), processed
    logged = psql.run(log)
    assert len(logged) == 5 and all(r["status"] == "completed" for r in logged), logged
    assert all(r["view_name"] in processed for r in logged)  # the newest five are this run's
    feed_log = one(cur, "SELECT count(*) FROM mv_refresh_log WHERE view_name = 'mv_feed_projects' "
                        "AND status = 'completed' AND source = 'sql' AND refresh_started_at > %s", (before,))
    assert feed_log == 1
    assert psql.run(queue)[0]["status"] == "completed"

    # Step 2.5, the two psql -c commands.
    queue_rows = psql.run(STEP_2_5[0])
    assert 5 <= len(queue_rows) <= 10
    by_view = {r["view_name"]: r for r in queue_rows}
    assert set(by_view) >= PHASE2_VIEWS and by_view["mv_feed_projects"]["status"] == "completed"
    perf = {r["view_name"]: r for r in psql.run(STEP_2_5[1])}
    assert set(perf) >= PHASE2_VIEWS
    assert int(perf["mv_feed_projects"]["count"]) >= 2  # the seed's refresh and this one
    assert float(perf["mv_feed_projects"]["avg"]) >= 0


def test_step_3_2_search_finds_blockchain_and_the_typo_and_uses_gin(psql: Psql, cur) -> None:
    content, fuzzy, combined, explain = statements(STEP_3_2)
    rows = psql.run(content)
    assert 1 <= len(rows) <= 10
    assert all("blockchain" in " ".join((r["title"], r["subtitle"], r["snippet"])).lower() for r in rows)
    assert any("blockchain" in r["title"].lower() for r in rows)
    rows = psql.run(fuzzy)
    assert 1 <= len(rows) <= 10
    assert any("blockchain" in r["title"].lower() for r in rows), rows  # 'blokchain' with its typo
    rows = psql.run(combined)
    assert 1 <= len(rows) <= 20 and {r["kind"] for r in rows} == {"project"}
    assert len({r["id"] for r in rows}) == len(rows)
    assert any("web3" in r["title"].lower() for r in rows)
    plan = "\n".join(r["QUERY PLAN"] for r in psql.run(explain))
    scanned = set(re.findall(r"Bitmap Index Scan on (\w+)", plan))
    assert scanned, plan
    cur.execute("SELECT c.relname FROM pg_class c JOIN pg_am a ON a.oid = c.relam "
                "WHERE a.amname = 'gin' AND c.relname = ANY(%s)", (list(scanned),))
    assert {r[0] for r in cur.fetchall()} == scanned, plan  # every index it scans is a GIN index
    assert "Seq Scan on mv_search_index" not in plan


def test_step_3_3_chain_posts_and_the_forum_query(psql: Psql, cur) -> None:
    count, forum = statements(STEP_3_3)
    n = int(psql.run(count)[0]["count"])
    assert n == one(cur, "SELECT count(*) FROM chain_posts p JOIN chains c ON c.id = p.chain_id "
                         "JOIN users u ON u.id = p.user_id WHERE NOT p.is_deleted AND NOT c.is_deleted "
                         "AND NOT u.is_deleted") > 0
    rows = psql.run(forum)
    assert 1 <= len(rows) <= 10
    cur.execute("SELECT id::text, is_pinned, trending_score FROM mv_chain_posts WHERE id = ANY(%s::uuid[])",
                ([r["id"] for r in rows],))
    facts = {r[0]: (r[1], r[2]) for r in cur.fetchall()}
    order = [facts[r["id"]] for r in rows]
    assert order == sorted(order, key=lambda f: (not f[0], -f[1]))  # pinned first, then trending
    chain = one(cur, "SELECT id FROM chains LIMIT 1")
    expected = min(10, one(cur, "SELECT count(*) FROM mv_chain_posts WHERE chain_id = %s", (chain,)))
    assert len(rows) == expected


def test_step_4_3_plan_uses_idx_projects_user_deleted(psql: Psql) -> None:
    (explain,) = statements(STEP_4_3)
    plan = "\n".join(r["QUERY PLAN"] for r in psql.run(explain))
    assert re.search(r"Index Scan (using|on) idx_projects_user_deleted", plan), plan
