"""Phase 1: trigger-kept denormalized tables are exact, on every path and under concurrency.

Every check compares the stored rows with the truth recomputed from the base
tables by the same functions the reconciliation uses (``*_truth(keys)``), in
one statement, so one snapshot. Single-threaded tests also require that no
delta is pending: uncontended writes update the main rows in place, which is
what the guide's Step 1.4 reads.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import pytest
import sqlalchemy as sa

from schema.db import queries, raw_connection
from schema.migrate import MIGRATIONS_DIR

BACKFILL = next(MIGRATIONS_DIR.glob("*phase1_backfill_data.sql"))

# (table, live view, truth function, key source, compared columns)
TABLES = {
    "user_dashboard_stats": (
        "user_dashboard_stats_live",
        "user_dashboard_stats_truth",
        "SELECT id FROM users",
        "user_id, project_count, active_projects, total_upvotes_received, total_comments_received, chains_joined",
    ),
    "message_conversations_denorm": (
        "message_conversations_denorm_live",
        "message_conversations_denorm_truth",
        "SELECT id FROM conversations",
        "conversation_id, user1_id, user2_id, is_deleted, message_count, user1_unread_count, user2_unread_count, "
        "last_message_id, last_message_at, last_message_sender_id, last_message_preview",
    ),
    "intro_request_stats": (
        "intro_request_stats_live",
        "intro_request_stats_truth",
        "SELECT id FROM users",
        "user_id, requests_sent, sent_pending, sent_accepted, sent_declined, requests_received, received_pending, "
        "received_accepted, received_declined",
    ),
    # 0012: the read models' per-project counters, same scheme.
    "project_stats": (
        "project_stats_live",
        "project_stats_truth",
        "SELECT id FROM projects",
        "project_id, upvote_count, comment_count",
    ),
}


def differences(cur: psycopg2.extensions.cursor, *, source: str = "live") -> dict[str, list[tuple]]:
    """Rows that differ between the stored tables and the truth, per table (empty = exact).

    ``source`` "live" reads the *_live views (main + deltas), "main" the tables alone.
    Each table is compared in one statement; call inside a REPEATABLE READ
    transaction to compare all three in one snapshot.
    """
    found = {}
    for table, (live, truth, keys, cols) in TABLES.items():
        stored = live if source == "live" else table
        # All names come from the TABLES constant above.
        cur.execute(
            f"""WITH t AS (SELECT {cols} FROM {truth}(ARRAY({keys}))),
                     s AS (SELECT {cols} FROM {stored})
                SELECT 'missing or wrong', * FROM (SELECT * FROM t EXCEPT SELECT * FROM s) a
                UNION ALL
                SELECT 'extra or wrong', * FROM (SELECT * FROM s EXCEPT SELECT * FROM t) b"""
        )
        rows = cur.fetchall()
        if rows:
            found[table] = rows
    return found


def pending_deltas(cur: psycopg2.extensions.cursor) -> int:
    cur.execute("SELECT sum(pending_deltas)::int FROM denorm_delta_backlog")
    return cur.fetchone()[0]


def assert_exact(cur: psycopg2.extensions.cursor, *, main: bool = True) -> None:
    """Live views equal the truth; with ``main``, so do the tables alone (no deltas pending)."""
    assert differences(cur) == {}
    if main:
        assert pending_deltas(cur) == 0
        assert differences(cur, source="main") == {}


@pytest.fixture()
def db(create_database, migrated_template: str) -> Iterator[str]:
    """A fresh migrated empty database per test (copied from the template: fast)."""
    yield create_database(template=migrated_template, prefix="p1")


@pytest.fixture()
def cur(db: str) -> Iterator[psycopg2.extensions.cursor]:
    with raw_connection(db, autocommit=True) as conn, conn.cursor() as c:
        yield c


def one(cur: psycopg2.extensions.cursor, sql: str, params: object = None) -> object:
    cur.execute(sql, params)
    return cur.fetchone()[0]


class Data:
    """Tiny factories over plain INSERTs (ids returned as strings)."""

    def __init__(self, cur: psycopg2.extensions.cursor) -> None:
        self.cur = cur

    def user(self, role: str = "member") -> str:
        name = "u" + uuid.uuid4().hex[:12]
        return str(one(self.cur, "INSERT INTO users (username, name, role) VALUES (%s, %s, %s) RETURNING id",
                       (name, name, role)))

    def project(self, user_id: str, deleted: bool = False) -> str:
        return str(one(self.cur, "INSERT INTO projects (user_id, title, is_deleted) VALUES (%s, 'p', %s) RETURNING id",
                       (user_id, deleted)))

    def upvote(self, user_id: str, project_id: str) -> None:
        self.cur.execute("INSERT INTO project_upvotes (user_id, project_id) VALUES (%s, %s)", (user_id, project_id))

    def comment(self, user_id: str, project_id: str, deleted: bool = False) -> str:
        return str(one(self.cur, "INSERT INTO project_comments (project_id, user_id, body, is_deleted) "
                                 "VALUES (%s, %s, 'nice', %s) RETURNING id", (project_id, user_id, deleted)))

    def chain(self, owner: str) -> str:
        return str(one(self.cur, "INSERT INTO chains (slug, name, owner_id) VALUES (%s, 'c', %s) RETURNING id",
                       ("c" + uuid.uuid4().hex[:10], owner)))

    def conversation(self, a: str, b: str) -> str:
        a, b = sorted([a, b])
        return str(one(self.cur, "INSERT INTO conversations (user1_id, user2_id) VALUES (%s, %s) RETURNING id", (a, b)))

    def message(self, conversation_id: str, sender: str, body: str = "hello", read: bool = False,
                at: str | None = None) -> str:
        return str(one(self.cur, "INSERT INTO messages (conversation_id, sender_id, body, is_read, created_at) "
                                 "VALUES (%s, %s, %s, %s, coalesce(%s::timestamptz, clock_timestamp())) RETURNING id",
                       (conversation_id, sender, body, read, at)))

    def investor(self, user_id: str) -> str:
        return str(one(self.cur, "INSERT INTO investors (user_id, firm_name) VALUES (%s, 'Fund') RETURNING id",
                       (user_id,)))

    def intro(self, requester: str, investor_id: str, status: str = "pending") -> str:
        return str(one(self.cur, "INSERT INTO intro_requests (requester_id, investor_id, status) "
                                 "VALUES (%s, %s, %s) RETURNING id", (requester, investor_id, status)))


def dashboard(cur: psycopg2.extensions.cursor, user_id: str) -> dict[str, int]:
    cur.execute("SELECT project_count, active_projects, total_upvotes_received, total_comments_received, "
                "chains_joined FROM user_dashboard_stats WHERE user_id = %s", (user_id,))
    names = ("projects", "active", "upvotes", "comments", "chains")
    return dict(zip(names, cur.fetchone(), strict=True))


# ---------------------------------------------------------------------------
# The guide's verification steps, verbatim
# ---------------------------------------------------------------------------

STEP_1_3 = """
-- Check row counts
SELECT COUNT(*) FROM user_dashboard_stats;
SELECT COUNT(*) FROM message_conversations_denorm;
SELECT COUNT(*) FROM intro_request_stats;

-- Check triggers
SELECT COUNT(*) FROM pg_trigger WHERE tgname LIKE 'trg_dashboard%' OR tgname LIKE 'trg_conversation%' OR tgname LIKE 'trg_intro%';
"""

STEP_1_4 = [
    """-- Test project creation trigger
INSERT INTO projects (id, user_id, title, description, is_deleted)
VALUES (gen_random_uuid(), (SELECT id FROM users LIMIT 1), 'Test Project', 'Test', FALSE);""",
    """-- Verify dashboard stats updated
SELECT project_count, active_projects, last_updated_at
FROM user_dashboard_stats
WHERE user_id = (SELECT user_id FROM projects WHERE title = 'Test Project');""",
    """-- Clean up test
DELETE FROM projects WHERE title = 'Test Project';""",
]


def _statements(sql: str) -> list[str]:
    return [s.strip() for s in sql.split(";") if re.sub(r"--[^\n]*", "", s).strip()]


def test_guide_step_1_3_row_counts_and_nine_triggers(cur) -> None:
    d = Data(cur)
    users = [d.user() for _ in range(3)]
    d.conversation(users[0], users[1])
    results = []
    for statement in _statements(STEP_1_3):
        cur.execute(statement)
        results.append(cur.fetchone()[0])
    assert results == [3, 1, 3, 9]


def test_guide_step_1_4_project_count_up_on_insert_and_back_on_delete(cur) -> None:
    d = Data(cur)
    d.user()
    d.user()
    first = str(one(cur, "SELECT id FROM users LIMIT 1"))  # the user Step 1.4 picks
    d.project(first)  # an existing project, so the values are not just 0 -> 1 -> 0
    before = dashboard(cur, first)
    cur.execute(STEP_1_4[0])
    cur.execute(STEP_1_4[1])
    rows = cur.fetchall()
    assert len(rows) == 1
    project_count, active_projects, last_updated_at = rows[0]
    assert (project_count, active_projects) == (before["projects"] + 1, before["active"] + 1)
    assert last_updated_at is not None
    cur.execute(STEP_1_4[2])
    assert cur.rowcount == 1
    assert dashboard(cur, first) == before
    assert_exact(cur)


def test_guide_step_1_4_runs_verbatim_in_psql(db: str, cur) -> None:
    """The three statements as a psql script: the SELECT shows the new project, then it is gone."""
    Data(cur).user()
    url = sa.engine.make_url(db)
    out = subprocess.run(
        ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-At", "-h", url.host, "-p", str(url.port), "-U", url.username,
         "-d", url.database, "-f", "-"],
        input="\n\n".join(STEP_1_4) + "\n", capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "INSERT 0 1"
    assert re.fullmatch(r"1\|1\|\d{4}-\d\d-\d\d .+", lines[1]), lines
    assert lines[2] == "DELETE 1"
    assert one(cur, "SELECT sum(project_count) FROM user_dashboard_stats") == 0


# ---------------------------------------------------------------------------
# Each trigger path, exact after every step
# ---------------------------------------------------------------------------


def test_new_user_gets_rows_in_both_per_user_tables(cur) -> None:
    d = Data(cur)
    u = d.user()
    assert one(cur, "SELECT count(*) FROM user_dashboard_stats WHERE user_id = %s", (u,)) == 1
    assert one(cur, "SELECT count(*) FROM intro_request_stats WHERE user_id = %s", (u,)) == 1
    assert_exact(cur)


def test_project_paths_insert_soft_delete_undelete_owner_change_hard_delete(cur) -> None:
    d = Data(cur)
    owner, other, fan = d.user("builder"), d.user("builder"), d.user()
    p = d.project(owner)
    d.project(owner, deleted=True)
    d.upvote(fan, p)
    d.upvote(owner, p)  # self-upvote counts
    d.comment(fan, p)
    d.comment(fan, p, deleted=True)  # soft-deleted comment does not count
    assert dashboard(cur, owner) == {"projects": 2, "active": 1, "upvotes": 2, "comments": 1, "chains": 0}
    assert_exact(cur)

    cur.execute("UPDATE projects SET is_deleted = true WHERE id = %s", (p,))
    assert dashboard(cur, owner) == {"projects": 2, "active": 0, "upvotes": 0, "comments": 0, "chains": 0}
    assert_exact(cur)
    d.upvote(other, p)  # an upvote on a soft-deleted project is not received
    assert dashboard(cur, owner)["upvotes"] == 0
    cur.execute("UPDATE projects SET is_deleted = false WHERE id = %s", (p,))
    assert dashboard(cur, owner) == {"projects": 2, "active": 1, "upvotes": 3, "comments": 1, "chains": 0}
    assert_exact(cur)

    cur.execute("UPDATE projects SET user_id = %s WHERE id = %s", (other, p))
    assert dashboard(cur, owner) == {"projects": 1, "active": 0, "upvotes": 0, "comments": 0, "chains": 0}
    assert dashboard(cur, other) == {"projects": 1, "active": 1, "upvotes": 3, "comments": 1, "chains": 0}
    assert_exact(cur)

    cur.execute("UPDATE projects SET user_id = %s, is_deleted = true WHERE id = %s", (owner, p))
    assert_exact(cur)
    cur.execute("UPDATE projects SET title = 'renamed', updated_at = now() WHERE id = %s", (p,))  # no counter
    assert_exact(cur)

    cur.execute("UPDATE projects SET is_deleted = false WHERE id = %s", (p,))
    cur.execute("DELETE FROM projects WHERE id = %s", (p,))  # cascades to its upvotes and comments
    assert one(cur, "SELECT count(*) FROM project_upvotes WHERE project_id = %s", (p,)) == 0
    assert dashboard(cur, owner) == {"projects": 1, "active": 0, "upvotes": 0, "comments": 0, "chains": 0}
    assert_exact(cur)


def test_upvote_paths_insert_delete_move_and_on_conflict(cur) -> None:
    d = Data(cur)
    a, b, fan = d.user(), d.user(), d.user()
    pa, pb = d.project(a), d.project(b)
    d.upvote(fan, pa)
    cur.execute("INSERT INTO project_upvotes (user_id, project_id) VALUES (%s, %s) ON CONFLICT DO NOTHING", (fan, pa))
    assert dashboard(cur, a)["upvotes"] == 1
    cur.execute("UPDATE project_upvotes SET project_id = %s WHERE user_id = %s AND project_id = %s", (pb, fan, pa))
    assert (dashboard(cur, a)["upvotes"], dashboard(cur, b)["upvotes"]) == (0, 1)
    assert_exact(cur)
    cur.execute("UPDATE project_upvotes SET created_at = now() - interval '1 day'")  # no counter change
    cur.execute("DELETE FROM project_upvotes WHERE user_id = %s", (fan,))
    assert dashboard(cur, b)["upvotes"] == 0
    assert_exact(cur)


def test_comment_paths_soft_delete_undelete_move_delete(cur) -> None:
    d = Data(cur)
    a, b, fan = d.user(), d.user(), d.user()
    pa, pb = d.project(a), d.project(b)
    c = d.comment(fan, pa)
    cur.execute("UPDATE project_comments SET is_deleted = true WHERE id = %s", (c,))
    assert dashboard(cur, a)["comments"] == 0
    cur.execute("UPDATE project_comments SET is_deleted = false WHERE id = %s", (c,))
    assert dashboard(cur, a)["comments"] == 1
    cur.execute("UPDATE project_comments SET project_id = %s WHERE id = %s", (pb, c))
    assert (dashboard(cur, a)["comments"], dashboard(cur, b)["comments"]) == (0, 1)
    cur.execute("UPDATE project_comments SET body = 'edited' WHERE id = %s", (c,))
    assert_exact(cur)
    cur.execute("DELETE FROM project_comments WHERE id = %s", (c,))
    assert dashboard(cur, b)["comments"] == 0
    assert_exact(cur)


def test_chain_membership_join_leave_and_chain_delete(cur) -> None:
    d = Data(cur)
    a, b = d.user(), d.user()
    c1, c2 = d.chain(a), d.chain(a)
    cur.execute("INSERT INTO chain_members (chain_id, user_id) VALUES (%s, %s), (%s, %s), (%s, %s)",
                (c1, a, c2, a, c1, b))
    assert (dashboard(cur, a)["chains"], dashboard(cur, b)["chains"]) == (2, 1)
    cur.execute("UPDATE chain_members SET user_id = %s WHERE chain_id = %s AND user_id = %s", (b, c2, a))
    assert (dashboard(cur, a)["chains"], dashboard(cur, b)["chains"]) == (1, 2)
    cur.execute("DELETE FROM chains WHERE id = %s", (c1,))  # cascades to memberships
    assert (dashboard(cur, a)["chains"], dashboard(cur, b)["chains"]) == (0, 1)
    assert_exact(cur)


def test_conversation_paths_messages_read_soft_delete_last_and_moves(cur) -> None:
    d = Data(cur)
    a, b, c = d.user(), d.user(), d.user()
    conv = d.conversation(a, b)
    conv2 = d.conversation(a, c)
    m1 = d.message(conv, a, "first", at="2024-01-01T10:00:00Z")
    m2 = d.message(conv, b, "second", at="2024-01-01T11:00:00Z")
    m3 = d.message(conv, b, "third", at="2024-01-01T12:00:00Z")
    assert_exact(cur)
    cur.execute("SELECT message_count, last_message_id, last_message_preview FROM message_conversations_denorm "
                "WHERE conversation_id = %s", (conv,))
    assert cur.fetchone() == (3, m3, "third")
    cur.execute("SELECT user_id, unread_count FROM user_conversations_live WHERE conversation_id = %s ORDER BY 2",
                (conv,))
    assert sorted(cur.fetchall()) == sorted([(a, 2), (b, 1)])

    cur.execute("UPDATE messages SET is_read = true WHERE id = %s", (m2,))  # a reads one
    assert_exact(cur)
    cur.execute("UPDATE messages SET is_deleted = true WHERE id = %s", (m1,))  # not the last one
    assert_exact(cur)
    cur.execute("UPDATE messages SET is_deleted = true WHERE id = %s", (m3,))  # the last one: falls back to m2
    cur.execute("SELECT message_count, last_message_id FROM message_conversations_denorm WHERE conversation_id = %s",
                (conv,))
    assert cur.fetchone() == (1, m2)
    assert_exact(cur)
    cur.execute("UPDATE messages SET is_deleted = false WHERE id = %s", (m3,))  # undelete: last again
    cur.execute("UPDATE messages SET body = 'third, edited' WHERE id = %s", (m3,))  # preview follows
    assert_exact(cur)
    cur.execute("UPDATE messages SET conversation_id = %s WHERE id = %s", (conv2, m3))  # moved
    assert_exact(cur)
    cur.execute("UPDATE messages SET created_at = '2020-01-01' WHERE id = %s", (m2,))
    assert_exact(cur)
    cur.execute("DELETE FROM messages WHERE id = %s", (m2,))
    cur.execute("SELECT message_count, last_message_id FROM message_conversations_denorm WHERE conversation_id = %s",
                (conv,))
    assert cur.fetchone() == (0, None)
    assert_exact(cur)
    cur.execute("UPDATE conversations SET is_deleted = true WHERE id = %s", (conv2,))
    assert one(cur, "SELECT is_deleted FROM message_conversations_denorm WHERE conversation_id = %s", (conv2,))
    assert_exact(cur)
    cur.execute("DELETE FROM conversations WHERE id = %s", (conv2,))  # cascades to messages and its row
    assert one(cur, "SELECT count(*) FROM message_conversations_denorm WHERE conversation_id = %s", (conv2,)) == 0
    assert_exact(cur)


def test_intro_paths_status_changes_soft_delete_withdrawn_and_investor_changes(cur) -> None:
    d = Data(cur)
    founder, vc_user, vc2_user = d.user("builder"), d.user("investor"), d.user("investor")
    vc = d.investor(vc_user)
    r1 = d.intro(founder, vc)
    r2 = d.intro(founder, vc, "accepted")
    cur.execute("SELECT requests_sent, sent_pending, sent_accepted FROM intro_request_stats WHERE user_id = %s",
                (founder,))
    assert cur.fetchone() == (2, 1, 1)
    cur.execute("SELECT requests_received, received_pending, received_accepted FROM intro_request_stats "
                "WHERE user_id = %s", (vc_user,))
    assert cur.fetchone() == (2, 1, 1)
    cur.execute("UPDATE intro_requests SET status = 'declined' WHERE id = %s", (r1,))
    assert_exact(cur)
    cur.execute("UPDATE intro_requests SET status = 'withdrawn' WHERE id = %s", (r2,))  # sent yes, received no
    cur.execute("SELECT requests_sent, requests_received FROM intro_request_stats_live WHERE user_id = ANY(%s::uuid[]) "
                "ORDER BY user_id = %s::uuid DESC", ([founder, vc_user], founder))
    assert cur.fetchall() == [(2, 0), (0, 1)]
    assert_exact(cur)
    cur.execute("UPDATE intro_requests SET is_deleted = true WHERE id = %s", (r1,))
    assert_exact(cur)
    cur.execute("UPDATE intro_requests SET is_deleted = false, status = 'pending' WHERE id = %s", (r1,))
    cur.execute("UPDATE investors SET user_id = %s WHERE id = %s", (vc2_user, vc))  # the profile moves
    cur.execute("SELECT requests_received FROM intro_request_stats WHERE user_id = %s", (vc2_user,))
    assert cur.fetchone() == (1,)
    assert_exact(cur)
    cur.execute("DELETE FROM investors WHERE id = %s", (vc,))  # cascades to its intro requests
    cur.execute("SELECT requests_received, requests_sent FROM intro_request_stats WHERE user_id IN (%s, %s)",
                (vc2_user, founder))
    assert sorted(cur.fetchall()) == [(0, 0), (0, 0)]
    assert_exact(cur)
    vc3 = d.investor(vc_user)
    r3 = d.intro(founder, vc3)
    cur.execute("DELETE FROM intro_requests WHERE id = %s", (r3,))
    assert_exact(cur)


def test_user_delete_cascades_everywhere(cur) -> None:
    d = Data(cur)
    gone, stays, vc_user = d.user("builder"), d.user("builder"), d.user("investor")
    vc = d.investor(vc_user)
    p_gone, p_stays = d.project(gone), d.project(stays)
    d.upvote(gone, p_stays)
    d.upvote(stays, p_gone)
    d.comment(gone, p_stays)
    d.comment(stays, p_gone)
    conv = d.conversation(gone, stays)
    d.message(conv, gone)
    other = d.conversation(stays, vc_user)
    d.message(other, gone, "a stranger's message")  # sender is not a participant; cascades by sender_id
    d.intro(gone, vc)
    vc_gone_inv = d.investor(gone)
    d.intro(stays, vc_gone_inv)
    chain = d.chain(gone)
    cur.execute("INSERT INTO chain_members (chain_id, user_id) VALUES (%s, %s), (%s, %s)", (chain, gone, chain, stays))
    assert_exact(cur)
    cur.execute("DELETE FROM users WHERE id = %s", (gone,))
    assert one(cur, "SELECT count(*) FROM user_dashboard_stats WHERE user_id = %s", (gone,)) == 0
    assert dashboard(cur, stays) == {"projects": 1, "active": 1, "upvotes": 0, "comments": 0, "chains": 1}
    assert_exact(cur)


def test_randomized_single_writer_sequence_stays_exact_after_every_step(cur) -> None:
    """300 random operations of every kind; stored == truth after each one."""
    rng = random.Random(7)
    d = Data(cur)
    users = [d.user(rng.choice(["builder", "member", "investor"])) for _ in range(8)]
    investors = [d.investor(u) for u in users[:3]]
    projects = [d.project(rng.choice(users)) for _ in range(10)]
    convs = [d.conversation(a, b) for a, b in [(users[0], users[1]), (users[1], users[2]), (users[3], users[4])]]
    chains = [d.chain(users[0]), d.chain(users[1])]

    def pick(sql: str, *params: object) -> str | None:
        cur.execute(sql + " ORDER BY random() LIMIT 1", params)
        row = cur.fetchone()
        return str(row[0]) if row else None

    ops: list[Callable[[], None]] = [
        lambda: cur.execute("INSERT INTO project_upvotes (user_id, project_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                            (rng.choice(users), rng.choice(projects))),
        lambda: cur.execute("DELETE FROM project_upvotes WHERE ctid = (SELECT ctid FROM project_upvotes "
                            "ORDER BY random() LIMIT 1)"),
        lambda: d.comment(rng.choice(users), rng.choice(projects), rng.random() < 0.2),
        lambda: cur.execute("UPDATE project_comments SET is_deleted = NOT is_deleted WHERE id = %s",
                            (pick("SELECT id FROM project_comments"),)),
        lambda: cur.execute("UPDATE project_comments SET project_id = %s WHERE id = %s",
                            (rng.choice(projects), pick("SELECT id FROM project_comments"))),
        lambda: cur.execute("UPDATE projects SET is_deleted = NOT is_deleted WHERE id = %s", (rng.choice(projects),)),
        lambda: cur.execute("UPDATE projects SET user_id = %s WHERE id = %s", (rng.choice(users), rng.choice(projects))),
        lambda: d.message(rng.choice(convs), rng.choice(users), rng.choice(["hi", "yo", "ok"]), rng.random() < 0.3),
        lambda: cur.execute("UPDATE messages SET is_read = NOT is_read WHERE id = %s", (pick("SELECT id FROM messages"),)),
        lambda: cur.execute("UPDATE messages SET is_deleted = NOT is_deleted WHERE id = %s",
                            (pick("SELECT id FROM messages"),)),
        lambda: cur.execute("DELETE FROM messages WHERE id = %s", (pick("SELECT id FROM messages"),)),
        lambda: d.intro(rng.choice(users), rng.choice(investors), rng.choice(["pending", "accepted", "declined",
                                                                               "withdrawn"])),
        lambda: cur.execute("UPDATE intro_requests SET status = %s WHERE id = %s",
                            (rng.choice(["pending", "accepted", "declined", "withdrawn"]),
                             pick("SELECT id FROM intro_requests"))),
        lambda: cur.execute("UPDATE intro_requests SET is_deleted = NOT is_deleted WHERE id = %s",
                            (pick("SELECT id FROM intro_requests"),)),
        lambda: cur.execute("INSERT INTO chain_members (chain_id, user_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                            (rng.choice(chains), rng.choice(users))),
        lambda: cur.execute("DELETE FROM chain_members WHERE ctid = (SELECT ctid FROM chain_members "
                            "ORDER BY random() LIMIT 1)"),
    ]
    for step in range(300):
        rng.choice(ops)()
        if step % 60 == 59:  # occasionally hard-delete a project and replace it
            victim = projects.pop(rng.randrange(len(projects)))
            cur.execute("DELETE FROM projects WHERE id = %s", (victim,))
            projects.append(d.project(rng.choice(users)))
        diff = differences(cur, source="main")
        assert diff == {}, f"step {step}: {diff}"
    assert_exact(cur)


# ---------------------------------------------------------------------------
# Deltas: the busy-row path, exact reads, fold
# ---------------------------------------------------------------------------


def test_busy_row_writes_a_delta_live_view_is_exact_and_fold_moves_it(db: str, cur) -> None:
    d = Data(cur)
    owner, fan1, fan2 = d.user(), d.user(), d.user()
    p = d.project(owner)
    with raw_connection(db) as a, raw_connection(db) as b, a.cursor() as ca, b.cursor() as cb:
        ca.execute("INSERT INTO project_upvotes (user_id, project_id) VALUES (%s, %s)", (fan1, p))  # holds the row
        cb.execute("INSERT INTO project_upvotes (user_id, project_id) VALUES (%s, %s)", (fan2, p))  # cannot wait
        b.commit()  # committed without waiting for A
        # Two busy rows, two deltas: the owner's dashboard row and the project's counter row.
        cur.execute("SELECT table_name, pending_deltas FROM denorm_delta_backlog WHERE pending_deltas > 0 ORDER BY 1")
        assert cur.fetchall() == [("project_stats", 1), ("user_dashboard_stats", 1)]
        assert one(cur, "SELECT total_upvotes_received FROM user_dashboard_stats_live WHERE user_id = %s",
                   (owner,)) == 1
        assert one(cur, "SELECT upvote_count FROM project_stats_live WHERE project_id = %s", (p,)) == 1
        assert differences(cur) == {}  # live == truth while A is still open
        # The fold cannot take A's row: it waits lock_timeout and leaves the delta.
        started = time.monotonic()
        assert one(cur, "SELECT fold_denorm_deltas()") == 0
        assert time.monotonic() - started < 5
        a.commit()
    assert one(cur, "SELECT total_upvotes_received FROM user_dashboard_stats_live WHERE user_id = %s", (owner,)) == 2
    assert one(cur, "SELECT upvote_count FROM project_stats_live WHERE project_id = %s", (p,)) == 2
    assert one(cur, "SELECT fold_denorm_deltas()") == 2
    assert_exact(cur)


def test_busy_conversation_delta_carries_the_last_message(db: str, cur) -> None:
    d = Data(cur)
    a_user, b_user = d.user(), d.user()
    conv = d.conversation(a_user, b_user)
    with raw_connection(db) as a, raw_connection(db) as b, a.cursor() as ca, b.cursor() as cb:
        ca.execute("INSERT INTO messages (conversation_id, sender_id, body, created_at) "
                   "VALUES (%s, %s, 'older', '2024-01-01')", (conv, a_user))
        cb.execute("INSERT INTO messages (conversation_id, sender_id, body, created_at) "
                   "VALUES (%s, %s, 'newer', '2024-01-02') RETURNING id", (conv, b_user))
        newer = cb.fetchone()[0]
        b.commit()
        a.commit()
    assert pending_deltas(cur) == 1
    cur.execute("SELECT message_count, last_message_preview, last_message_id::text FROM message_conversations_denorm_live")
    assert cur.fetchone() == (2, "newer", newer)
    assert differences(cur) == {}
    one(cur, "SELECT fold_denorm_deltas()")
    assert_exact(cur)


def _in_thread(fn: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    return t, errors


def _wait_until_blocked_or_done(cur: psycopg2.extensions.cursor, db_name: str, t: threading.Thread) -> None:
    """Let the second transaction run until it waits on a lock (or finishes without waiting).

    The tests check the outcome, not the waiting: a version that does not wait
    finishes here and then shows the wrong counts."""
    end = time.monotonic() + 10
    while time.monotonic() < end and t.is_alive():
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'",
                    (db_name,))
        if cur.fetchone()[0] > 0:
            return
        time.sleep(0.02)


def test_soft_delete_of_a_project_waits_for_an_in_flight_upvote_on_it(db: str, cur) -> None:
    """Without the project status lock the soft delete would count its upvotes without
    the in-flight one, whose +1 then stays on the owner: off by one."""
    d = Data(cur)
    owner, fan, fan2 = d.user(), d.user(), d.user()
    p = d.project(owner)
    d.upvote(fan2, p)
    with raw_connection(db) as a, raw_connection(db, autocommit=True) as b, a.cursor() as ca, b.cursor() as cb:
        ca.execute("INSERT INTO project_upvotes (user_id, project_id) VALUES (%s, %s)", (fan, p))
        t, errors = _in_thread(lambda: cb.execute("UPDATE projects SET is_deleted = true WHERE id = %s", (p,)))
        _wait_until_blocked_or_done(cur, sa.engine.make_url(db).database, t)
        a.commit()
        t.join(30)
    assert errors == []
    assert dashboard(cur, owner)["upvotes"] == 0
    assert_exact(cur)


def test_deleting_the_two_latest_messages_concurrently_leaves_the_right_last_message(db: str, cur) -> None:
    """A rebuild (deleting the latest message) and a second delete of the one before it:
    the second must wait and see the rebuilt last message, or the row keeps a deleted one."""
    d = Data(cur)
    u1, u2 = d.user(), d.user()
    conv = d.conversation(u1, u2)
    m0 = d.message(conv, u1, "zero", at="2024-01-01T09:00:00Z")
    m1 = d.message(conv, u1, "one", at="2024-01-01T10:00:00Z")
    m2 = d.message(conv, u2, "two", at="2024-01-01T11:00:00Z")
    with raw_connection(db) as a, raw_connection(db, autocommit=True) as b, a.cursor() as ca, b.cursor() as cb:
        ca.execute("UPDATE messages SET is_deleted = true WHERE id = %s", (m2,))  # rebuild: last -> m1 (uncommitted)
        t, errors = _in_thread(lambda: cb.execute("UPDATE messages SET is_deleted = true WHERE id = %s", (m1,)))
        _wait_until_blocked_or_done(cur, sa.engine.make_url(db).database, t)
        a.commit()
        t.join(30)
    assert errors == []
    assert one(cur, "SELECT last_message_id FROM message_conversations_denorm_live WHERE conversation_id = %s",
               (conv,)) == m0
    assert_exact(cur)


def test_rebuild_repairs_drift_and_drops_deltas(cur) -> None:
    d = Data(cur)
    u = d.user()
    d.project(u)
    cur.execute("UPDATE user_dashboard_stats SET project_count = 99 WHERE user_id = %s", (u,))
    cur.execute("INSERT INTO user_dashboard_stats_deltas (user_id, active_projects) VALUES (%s, 5)", (u,))
    assert set(differences(cur)) == {"user_dashboard_stats"}
    assert one(cur, "SELECT rebuild_user_dashboard_stats(ARRAY[%s]::uuid[])", (u,)) == 1
    assert_exact(cur)


def test_truth_functions_agree_with_their_full_table_forms(cur) -> None:
    d = Data(cur)
    users = [d.user() for _ in range(4)]
    vc = d.investor(users[3])
    for i, u in enumerate(users):
        p = d.project(u, deleted=i == 1)
        d.upvote(users[(i + 1) % 4], p)
        d.comment(users[(i + 2) % 4], p, deleted=i == 2)
        d.intro(u, vc, ["pending", "accepted", "declined", "withdrawn"][i])
    conv = d.conversation(users[0], users[1])
    d.message(conv, users[0], "x")
    d.conversation(users[2], users[3])  # no messages
    for table, (_, truth, keys, cols) in TABLES.items():
        cur.execute(f"SELECT {cols} FROM {truth}(ARRAY({keys})) EXCEPT SELECT {cols} FROM {truth}_all()")
        assert cur.fetchall() == [], table
        cur.execute(f"SELECT {cols} FROM {truth}_all() EXCEPT SELECT {cols} FROM {truth}(ARRAY({keys}))")
        assert cur.fetchall() == [], table


def test_named_truth_queries_match_stored_rows(db: str, cur) -> None:
    d = Data(cur)
    u1, u2 = d.user(), d.user()
    p = d.project(u1)
    d.upvote(u2, p)
    conv = d.conversation(u1, u2)
    d.message(conv, u2)
    q = queries("phase1_truth")
    engine = sa.create_engine(sa.engine.make_url(db).set(drivername="postgresql+psycopg2"))
    try:
        with engine.connect() as conn:
            for table, ids in (("user_dashboard_stats", [u1, u2]), ("message_conversations_denorm", [conv]),
                               ("intro_request_stats", [u1, u2]), ("project_stats", [p])):
                truth = conn.execute(q[f"{table}_truth"], {"ids": ids}).all()
                stored = conn.execute(q[f"{table}_stored"], {"ids": ids}).all()
                assert truth == stored and len(truth) == len(ids)
            assert conn.execute(q["user_dashboard_stats_rebuild"], {"ids": [u1]}).scalar() == 1
            batch = conn.execute(q["user_ids_batch"], {"after": str(uuid.UUID(int=0)), "lim": 10}).scalars().all()
            assert sorted(map(str, batch)) == sorted([u1, u2])
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------
# Backfill
# ---------------------------------------------------------------------------


def run_backfill(db: str) -> list[str]:
    with raw_connection(db, autocommit=True) as conn:
        with conn.cursor() as c:
            c.execute(BACKFILL.read_text())
        return [n.strip() for n in conn.notices]


def test_backfill_prints_notices_recomputes_clears_deltas_and_reruns_identically(db: str, cur) -> None:
    d = Data(cur)
    users = [d.user() for _ in range(3)]
    p = d.project(users[0])
    d.upvote(users[1], p)
    d.conversation(users[0], users[1])
    vc = d.investor(users[2])
    d.intro(users[0], vc)
    # Drift of every kind: a wrong main row, a stray delta, a missing row.
    cur.execute("UPDATE user_dashboard_stats SET total_upvotes_received = 40 WHERE user_id = %s", (users[0],))
    cur.execute("INSERT INTO intro_request_stats_deltas (user_id, requests_sent) VALUES (%s, 3)", (users[1],))
    cur.execute("DELETE FROM message_conversations_denorm")
    assert differences(cur) != {}

    notices = run_backfill(db)
    assert notices == [
        "NOTICE:  Backfilled 3 rows in user_dashboard_stats",
        "NOTICE:  Backfilled 1 rows in message_conversations_denorm",
        "NOTICE:  Backfilled 3 rows in intro_request_stats",
    ]
    assert_exact(cur)
    cur.execute("SELECT * FROM user_dashboard_stats ORDER BY user_id")
    first = cur.fetchall()
    assert run_backfill(db) == notices
    cur.execute("SELECT * FROM user_dashboard_stats ORDER BY user_id")
    assert cur.fetchall() == first  # unchanged rows are not rewritten (same last_updated_at too)
    assert_exact(cur)


def test_backfill_file_runs_under_psql_and_prints_the_guide_lines(db: str, cur) -> None:
    Data(cur).user()
    url = sa.engine.make_url(db)
    out = subprocess.run(
        ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-h", url.host, "-p", str(url.port), "-U", url.username,
         "-d", url.database, "-f", str(BACKFILL)],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert re.search(r"NOTICE:  Backfilled 1 rows in user_dashboard_stats$", out.stderr, re.M)
    assert re.search(r"NOTICE:  Backfilled 0 rows in message_conversations_denorm$", out.stderr, re.M)
    assert re.search(r"NOTICE:  Backfilled 1 rows in intro_request_stats$", out.stderr, re.M)
    assert out.stdout.strip().splitlines()[-1] == "COMMIT"


def test_backfill_after_a_load_with_triggers_disabled(db: str, cur) -> None:
    """What the seed generator does: bulk insert with triggers off, then backfill."""
    cur.execute("SET session_replication_role = replica")
    cur.execute("INSERT INTO users (username, name) SELECT 'bulk' || g, 'B' FROM generate_series(1, 50) g")
    cur.execute("INSERT INTO projects (user_id, title, is_deleted) SELECT id, 't', random() < 0.2 FROM users, "
                "generate_series(1, 3)")
    cur.execute("INSERT INTO project_upvotes (user_id, project_id) SELECT u.id, p.id FROM users u, projects p "
                "WHERE random() < 0.05")
    cur.execute("SET session_replication_role = origin")
    assert one(cur, "SELECT count(*) FROM user_dashboard_stats") == 0
    assert run_backfill(db)[0] == "NOTICE:  Backfilled 50 rows in user_dashboard_stats"
    # project_stats (0012) has its own backfill, which the seed calls after the Phase 1 file.
    assert set(differences(cur)) == {"project_stats"}
    assert one(cur, "SELECT backfill_project_stats()") == 150
    assert_exact(cur)


# ---------------------------------------------------------------------------
# Concurrency
# ---------------------------------------------------------------------------

WRITERS = 8
RUN_SECONDS = 6.0


def test_concurrent_writers_on_hot_and_spread_rows_stay_exact(db: str, cur) -> None:
    """8 writer threads (own connections) for several seconds, a fold every 0.3 s, and a
    checker comparing live views with the truth in REPEATABLE READ snapshots while
    they run. Several writers share one hot project (one builder's row) and one
    hot conversation. Afterwards, folded, every row of the three tables equals the truth."""
    d = Data(cur)
    users = [d.user("builder" if i < 10 else "member") for i in range(30)]
    investors = [d.investor(u) for u in users[25:]]
    projects = [d.project(users[i % 10]) for i in range(30)]
    hot_project = projects[0]
    convs = [d.conversation(users[i], users[i + 10]) for i in range(10)]
    hot_conv = convs[0]
    hot_pair = sorted([users[0], users[10]])
    chains = [d.chain(users[0]), d.chain(users[1])]
    for _ in range(20):
        d.message(hot_conv, hot_pair[0])
    for i in range(10):
        d.intro(users[i], investors[i % len(investors)])
    assert_exact(cur)

    stop = threading.Event()
    errors: list[str] = []
    counts = {"ops": 0, "checks": 0, "folded": 0}
    lock = threading.Lock()

    def writer(seed: int) -> None:
        rng = random.Random(seed)

        def project() -> str:
            return hot_project if rng.random() < 0.5 else rng.choice(projects)

        def conv() -> str:
            return hot_conv if rng.random() < 0.6 else rng.choice(convs)

        ops = [
            (6, "INSERT INTO project_upvotes (user_id, project_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
             lambda: (rng.choice(users), project())),
            (4, "DELETE FROM project_upvotes WHERE user_id = %s AND project_id = %s",
             lambda: (rng.choice(users), project())),
            (4, "INSERT INTO project_comments (project_id, user_id, body) VALUES (%s, %s, 'c')",
             lambda: (project(), rng.choice(users))),
            (3, "UPDATE project_comments SET is_deleted = NOT is_deleted WHERE id = "
                "(SELECT id FROM project_comments WHERE project_id = %s ORDER BY random() LIMIT 1)",
             lambda: (project(),)),
            (1, "UPDATE projects SET is_deleted = NOT is_deleted WHERE id = %s", lambda: (project(),)),
            (1, "UPDATE projects SET user_id = %s WHERE id = %s", lambda: (rng.choice(users[:10]),
                                                                      rng.choice(projects[1:]))),
            (6, "INSERT INTO messages (conversation_id, sender_id, body, is_read) "
                "SELECT c.id, CASE WHEN %s THEN c.user1_id ELSE c.user2_id END, 'm', %s FROM conversations c "
                "WHERE c.id = %s", lambda: (rng.random() < 0.5, rng.random() < 0.3, conv())),
            (3, "UPDATE messages SET is_read = NOT is_read WHERE id = "
                "(SELECT id FROM messages WHERE conversation_id = %s ORDER BY random() LIMIT 1)", lambda: (conv(),)),
            (2, "UPDATE messages SET is_deleted = NOT is_deleted WHERE id = "
                "(SELECT id FROM messages WHERE conversation_id = %s ORDER BY created_at DESC LIMIT 1 "
                "OFFSET floor(random() * 3)::int)", lambda: (conv(),)),
            (2, "INSERT INTO intro_requests (requester_id, investor_id) VALUES (%s, %s)",
             lambda: (rng.choice(users), rng.choice(investors))),
            (3, "UPDATE intro_requests SET status = (ARRAY['pending','accepted','declined','withdrawn'])"
                "[1 + floor(random() * 4)::int] WHERE id = (SELECT id FROM intro_requests ORDER BY random() LIMIT 1)",
             lambda: ()),
            (1, "UPDATE intro_requests SET is_deleted = NOT is_deleted WHERE id = "
                "(SELECT id FROM intro_requests ORDER BY random() LIMIT 1)", lambda: ()),
            (2, "INSERT INTO chain_members (chain_id, user_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
             lambda: (rng.choice(chains), rng.choice(users))),
            (1, "DELETE FROM chain_members WHERE chain_id = %s AND user_id = %s",
             lambda: (rng.choice(chains), rng.choice(users))),
        ]
        weights = [w for w, _, _ in ops]
        try:
            with raw_connection(db, autocommit=True) as conn, conn.cursor() as c:
                while not stop.is_set():
                    _, sql, params = rng.choices(ops, weights)[0]
                    c.execute(sql, params())
                    with lock:
                        counts["ops"] += 1
        except Exception as exc:  # any error fails the test below
            errors.append(f"writer {seed}: {type(exc).__name__}: {exc}")
            stop.set()

    def folder() -> None:
        try:
            with raw_connection(db, autocommit=True) as conn, conn.cursor() as c:
                while not stop.wait(0.3):
                    c.execute("SELECT fold_denorm_deltas()")
                    with lock:
                        counts["folded"] += c.fetchone()[0]
        except Exception as exc:
            errors.append(f"folder: {type(exc).__name__}: {exc}")
            stop.set()

    def checker() -> None:
        try:
            with raw_connection(db) as conn, conn.cursor() as c:
                while not stop.wait(0.4):
                    c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    diff = differences(c)
                    conn.rollback()
                    if diff:
                        errors.append(f"checker: live views differ from the truth mid-run: {diff}")
                        stop.set()
                    with lock:
                        counts["checks"] += 1
        except Exception as exc:
            errors.append(f"checker: {type(exc).__name__}: {exc}")
            stop.set()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(WRITERS)]
    threads += [threading.Thread(target=folder), threading.Thread(target=checker)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + RUN_SECONDS
    while time.monotonic() < deadline and not stop.is_set():
        time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert errors == [], errors
    print("concurrency run:", counts)
    assert counts["ops"] > 200, counts
    assert counts["checks"] >= 3, counts
    # Contention really happened: some writes went to deltas (folded or still pending).
    assert counts["folded"] + pending_deltas(cur) > 0, counts

    for _ in range(50):
        if one(cur, "SELECT fold_denorm_deltas()") == 0 and pending_deltas(cur) == 0:
            break
    assert_exact(cur)


def test_fold_is_single_flight(db: str, cur) -> None:
    """A second fold while one runs returns 0 at once instead of queueing."""
    d = Data(cur)
    u = d.user()
    cur.execute("INSERT INTO user_dashboard_stats_deltas (user_id, chains_joined) VALUES (%s, 0)", (u,))
    with raw_connection(db) as a, a.cursor() as ca:
        ca.execute("SELECT fold_denorm_deltas()")  # holds the fold lock until commit
        started = time.monotonic()
        assert one(cur, "SELECT fold_denorm_deltas()") == 0
        assert time.monotonic() - started < 2
        a.commit()
    assert pending_deltas(cur) == 0


def test_repeated_migration_files_are_idempotent(db: str, cur) -> None:
    """0010 re-run by psql on a migrated database changes nothing (CREATE OR REPLACE / IF NOT EXISTS)."""
    d = Data(cur)
    u = d.user()
    d.project(u)
    url = sa.engine.make_url(db)
    path = Path(MIGRATIONS_DIR / "0010_phase1_denormalized_tables.sql")
    out = subprocess.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", url.host, "-p", str(url.port), "-U", url.username,
         "-d", url.database, "-f", str(path)],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "PGOPTIONS": "-c client_min_messages=warning"},  # hide "already exists, skipping"
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == ""
    assert one(cur, "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'trg_dashboard%' "
                    "OR tgname LIKE 'trg_conversation%' OR tgname LIKE 'trg_intro%'") == 9
    assert_exact(cur)


def test_rejected_write_leaves_counters_untouched(cur) -> None:
    """A write that the base tables reject leaves the counters untouched (same transaction)."""
    d = Data(cur)
    u = d.user()
    before = dashboard(cur, u)
    with pytest.raises(psycopg2.errors.ForeignKeyViolation):
        cur.execute("INSERT INTO project_upvotes (user_id, project_id) VALUES (%s, gen_random_uuid())", (u,))
    assert dashboard(cur, u) == before
    assert_exact(cur)
