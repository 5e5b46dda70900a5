"""The refresh bookkeeping in SQL (0020): requests, fence, log, queue, abandoned refreshes.

Every race is played with real concurrent Postgres sessions (one connection
per session, blocking calls in threads), never simulated. Each test gets its
own copy of the migrated database plus two registered test views over a test
table, so the claims do not depend on the demo data:

* ``test_mv_items``: ``test_items`` joined to ``test_gate`` (one row). A
  session holding ACCESS EXCLUSIVE on ``test_gate`` stops a refresh inside its
  REFRESH statement, after it recorded what it covers: the window the
  "write committed during the refresh" race needs.
* ``test_mv_flaky``: ``test_items`` with a division by zero while
  ``test_fail_flag`` has a row: a refresh that fails on demand.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extras
import pytest

from schema.db import raw_connection

SETUP_SQL = """
CREATE TABLE test_items (id serial PRIMARY KEY, v integer NOT NULL DEFAULT 1);
CREATE TABLE test_gate (ok boolean NOT NULL);
INSERT INTO test_gate VALUES (true);
CREATE TABLE test_fail_flag (x integer);
CREATE MATERIALIZED VIEW test_mv_items AS
    SELECT i.id, i.v FROM test_items i JOIN test_gate g ON g.ok;
CREATE UNIQUE INDEX ON test_mv_items (id);
CREATE MATERIALIZED VIEW test_mv_flaky AS
    SELECT i.id, i.v / (CASE WHEN EXISTS (SELECT 1 FROM test_fail_flag) THEN 0 ELSE 1 END) AS v
    FROM test_items i;
CREATE UNIQUE INDEX ON test_mv_flaky (id);
INSERT INTO mv_registry (view_name, debounce_seconds, max_wait_seconds, refresh_order) VALUES
    ('test_mv_items', 5, 30, 1), ('test_mv_flaky', 5, 30, 2);
INSERT INTO mv_dependencies (view_name, table_name) VALUES
    ('test_mv_items', 'test_items'), ('test_mv_flaky', 'test_items');
SELECT mv_install_request_trigger('test_items');
"""

DEADLINE = 20.0


@pytest.fixture()
def qdb(create_database: Callable[..., str], migrated_template: str) -> str:
    """A fresh migrated database with the two test views registered."""
    url = create_database(template=migrated_template, prefix="rq")
    with raw_connection(url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(SETUP_SQL)
    return url


@contextmanager
def session(url: str, autocommit: bool = True) -> Iterator[Any]:
    with raw_connection(url, autocommit=autocommit) as conn:
        yield conn


def q(conn: Any, sql: str, params: tuple = ()) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall() if cur.description else []


def one(conn: Any, sql: str, params: tuple = ()) -> Any:
    rows = q(conn, sql, params)
    return rows[0][0] if rows else None


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = DEADLINE) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def refresh(url: str, view: str, fence: int | None = None, force: bool = False) -> dict[str, Any]:
    """One refresh the way the engine does it: begin (own txn), run (own txn), fail on error."""
    with session(url, autocommit=False) as conn:
        log_id = one(conn, "SELECT mv_refresh_begin(%s, 'manual', 'pytest')", (view,))
        conn.commit()
        try:
            row = q(conn, "SELECT status, requests_cleared, duration_ms, rows_in_view "
                          "FROM mv_refresh_run(%s, %s, %s, %s)", (view, log_id, fence, force))[0]
            conn.commit()
        except psycopg2.Error as exc:
            conn.rollback()
            q(conn, "SELECT mv_refresh_fail(%s, %s)", (log_id, str(exc)))
            conn.commit()
            return {"status": "failed", "log_id": log_id, "error": str(exc)}
    return {"status": row[0], "requests_cleared": row[1], "duration_ms": row[2], "rows_in_view": row[3],
            "log_id": log_id}


def pending(conn: Any, view: str) -> int:
    return one(conn, "SELECT pending_requests FROM mv_refresh_queue WHERE view_name = %s", (view,))


def queue_status(conn: Any, view: str) -> str:
    return one(conn, "SELECT status FROM mv_refresh_queue WHERE view_name = %s", (view,))


def in_view(conn: Any, item_id: int, view: str = "test_mv_items") -> bool:
    # view is one of this module's constants
    return bool(one(conn, f"SELECT count(*) FROM {view} WHERE id = %s", (item_id,)))


def waiting_on_lock(admin: Any, pid: int) -> bool:
    return one(admin, "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s", (pid,)) is True


class Background:
    """Run a blocking database call in a thread and collect its result or exception."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self.result = fn()
        except BaseException as exc:  # handed to the test thread
            self.error = exc

    def join(self, timeout: float = DEADLINE) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "background call did not finish"
        if self.error:
            raise self.error
        return self.result


# --------------------------------------------------------------------------
# Nothing lost
# --------------------------------------------------------------------------


def test_write_committed_before_refresh_is_in_view_and_cleared(qdb: str) -> None:
    with session(qdb) as c:
        item = one(c, "INSERT INTO test_items DEFAULT VALUES RETURNING id")
        assert queue_status(c, "test_mv_items") == "pending" and pending(c, "test_mv_items") == 1
        result = refresh(qdb, "test_mv_items")
        assert result["status"] == "completed" and result["requests_cleared"] == 1
        assert in_view(c, item)
        assert pending(c, "test_mv_items") == 0 and queue_status(c, "test_mv_items") == "completed"
        # No requests, no refresh.
        assert refresh(qdb, "test_mv_items")["status"] == "skipped"


def test_write_committed_after_refresh_snapshot_causes_exactly_one_more_refresh(qdb: str) -> None:
    with session(qdb) as c, session(qdb, autocommit=False) as writer:
        first = one(c, "INSERT INTO test_items DEFAULT VALUES RETURNING id")
        late = one(writer, "INSERT INTO test_items DEFAULT VALUES RETURNING id")  # not committed yet
        result = refresh(qdb, "test_mv_items")
        assert result["status"] == "completed" and result["requests_cleared"] == 1
        writer.commit()  # commits after the refresh's snapshot
        assert in_view(c, first) and not in_view(c, late)
        assert queue_status(c, "test_mv_items") == "pending" and pending(c, "test_mv_items") == 1
        assert refresh(qdb, "test_mv_items")["status"] == "completed"
        assert in_view(c, late) and pending(c, "test_mv_items") == 0
        assert refresh(qdb, "test_mv_items")["status"] == "skipped"


def test_write_committing_while_refresh_runs_stays_pending(qdb: str) -> None:
    """The DESIGN race: the write commits between the refresh's bookkeeping and its REFRESH."""
    with session(qdb) as admin, session(qdb, autocommit=False) as writer, \
            session(qdb, autocommit=False) as gate, session(qdb, autocommit=False) as refresher:
        one(admin, "INSERT INTO test_items DEFAULT VALUES RETURNING id")
        late = one(writer, "INSERT INTO test_items DEFAULT VALUES RETURNING id")
        q(gate, "LOCK TABLE test_gate IN ACCESS EXCLUSIVE MODE")
        log_id = one(refresher, "SELECT mv_refresh_begin('test_mv_items', 'manual', 'pytest')")
        refresher.commit()
        pid = one(refresher, "SELECT pg_backend_pid()")
        run = Background(lambda: q(refresher, "SELECT status FROM mv_refresh_run('test_mv_items', %s, NULL, false)",
                                   (log_id,)))
        wait_until(lambda: waiting_on_lock(admin, pid), "the refresh to block inside REFRESH")
        assert queue_status(admin, "test_mv_items") == "in_progress"
        writer.commit()  # after the refresh recorded its snapshot, before its REFRESH ran
        gate.rollback()
        assert run.join()[0][0] == "completed"
        refresher.commit()
        # Whether or not REFRESH happened to see it, the write's request survived.
        assert queue_status(admin, "test_mv_items") == "pending" and pending(admin, "test_mv_items") == 1
        assert refresh(qdb, "test_mv_items")["status"] == "completed"
        assert in_view(admin, late)
        assert refresh(qdb, "test_mv_items")["status"] == "skipped"


def test_failed_refresh_rolls_back_and_its_requests_come_back(qdb: str) -> None:
    with session(qdb) as c:
        item = one(c, "INSERT INTO test_items DEFAULT VALUES RETURNING id")
        q(c, "INSERT INTO test_fail_flag VALUES (1)")
        before = pending(c, "test_mv_flaky")
        assert before == 1
        result = refresh(qdb, "test_mv_flaky")
        assert result["status"] == "failed" and "division by zero" in result["error"]
        status, error = q(c, "SELECT status, error FROM mv_refresh_log WHERE id = %s", (result["log_id"],))[0]
        assert status == "failed" and "division by zero" in error
        assert pending(c, "test_mv_flaky") == before
        assert queue_status(c, "test_mv_flaky") == "pending"
        assert one(c, "SELECT last_status FROM mv_refresh_queue WHERE view_name = 'test_mv_flaky'") == "failed"
        assert not in_view(c, item, "test_mv_flaky")
        q(c, "DELETE FROM test_fail_flag")
        assert refresh(qdb, "test_mv_flaky")["status"] == "completed"
        assert in_view(c, item, "test_mv_flaky") and pending(c, "test_mv_flaky") == 0


def test_stale_fence_is_refused_and_changes_nothing(qdb: str) -> None:
    with session(qdb) as c:
        one(c, "INSERT INTO test_items DEFAULT VALUES RETURNING id")
        stale = one(c, "SELECT nextval('mv_refresh_fence_seq')")
        current = one(c, "SELECT nextval('mv_refresh_fence_seq')")
        assert refresh(qdb, "test_mv_items", fence=current)["status"] == "completed"
        item = one(c, "INSERT INTO test_items DEFAULT VALUES RETURNING id")
        before = q(c, "SELECT fence, covered_snapshot::text FROM mv_registry WHERE view_name = 'test_mv_items'")
        result = refresh(qdb, "test_mv_items", fence=stale, force=True)
        assert result["status"] == "skipped"
        assert "superseded" in one(c, "SELECT error FROM mv_refresh_log WHERE id = %s", (result["log_id"],))
        assert q(c, "SELECT fence, covered_snapshot::text FROM mv_registry WHERE view_name = 'test_mv_items'") == before
        assert not in_view(c, item) and pending(c, "test_mv_items") == 1
        # An equal fence is not newer either.
        assert refresh(qdb, "test_mv_items", fence=current, force=True)["status"] == "skipped"


def test_two_refreshes_of_one_view_never_overlap(qdb: str) -> None:
    with session(qdb) as admin, session(qdb, autocommit=False) as r1, session(qdb, autocommit=False) as r2:
        one(admin, "INSERT INTO test_items DEFAULT VALUES RETURNING id")
        log1 = one(r1, "SELECT mv_refresh_begin('test_mv_items', 'manual', 'r1')")
        r1.commit()
        log2 = one(r2, "SELECT mv_refresh_begin('test_mv_items', 'manual', 'r2')")
        r2.commit()
        assert q(r1, "SELECT status FROM mv_refresh_run('test_mv_items', %s, NULL, true)", (log1,))[0][0] == "completed"
        pid2 = one(r2, "SELECT pg_backend_pid()")
        second = Background(lambda: q(r2, "SELECT status FROM mv_refresh_run('test_mv_items', %s, NULL, true)",
                                      (log2,)))
        wait_until(lambda: waiting_on_lock(admin, pid2), "the second refresh to wait for the registry row lock")
        r1.commit()
        assert second.join()[0][0] == "completed"
        r2.commit()
        (s1, e1, f1), (s2, e2, f2) = q(admin, "SELECT refresh_started_at, refresh_completed_at, fence "
                                              "FROM mv_refresh_log WHERE id IN (%s, %s) ORDER BY id", (log1, log2))
        assert s2 >= e1, "the waiting refresh's logged start must be after the first one's end"
        assert f2 > f1


def test_concurrent_refreshes_logged_intervals_are_disjoint(qdb: str) -> None:
    with session(qdb) as c:
        one(c, "INSERT INTO test_items DEFAULT VALUES RETURNING id")
    workers = [Background(lambda: [refresh(qdb, "test_mv_items", force=True) for _ in range(4)]) for _ in range(4)]
    for w in workers:
        w.join(60)
    with session(qdb) as c:
        rows = q(c, "SELECT refresh_started_at, refresh_completed_at FROM mv_refresh_log "
                    "WHERE view_name = 'test_mv_items' AND status = 'completed' ORDER BY refresh_started_at")
    assert len(rows) == 16
    for (_, end), (start, _) in zip(rows, rows[1:], strict=False):
        assert start >= end


# --------------------------------------------------------------------------
# process_mv_refresh_queue, the SQL fallback
# --------------------------------------------------------------------------


def test_process_queue_refreshes_every_pending_view_and_logs_it(qdb: str) -> None:
    with session(qdb) as c:
        item = one(c, "INSERT INTO test_items DEFAULT VALUES RETURNING id")
        rows = q(c, "SELECT view_name, status, duration_ms, requests_cleared, error FROM process_mv_refresh_queue()")
        by_view = {r[0]: r for r in rows}
        assert set(by_view) == {"test_mv_items", "test_mv_flaky"}
        for view in by_view:
            assert by_view[view][1] == "completed" and by_view[view][3] == 1 and by_view[view][4] is None
            assert in_view(c, item, view)
        logged = q(c, "SELECT view_name, status, source, requests_cleared FROM mv_refresh_log ORDER BY id")
        assert sorted(logged) == [("test_mv_flaky", "completed", "sql", 1), ("test_mv_items", "completed", "sql", 1)]
        assert q(c, "SELECT * FROM process_mv_refresh_queue()") == []
        assert one(c, "SELECT count(*) FROM mv_refresh_requests") == 0  # pruned once every view covered them


def test_failing_view_is_logged_failed_and_does_not_stop_the_others(qdb: str) -> None:
    with session(qdb) as c:
        q(c, """CREATE MATERIALIZED VIEW test_mv_no_unique AS SELECT id FROM test_items;
                INSERT INTO mv_registry (view_name, refresh_order) VALUES ('test_mv_no_unique', 0);
                INSERT INTO mv_dependencies VALUES ('test_mv_no_unique', 'test_items');""")
        item = one(c, "INSERT INTO test_items DEFAULT VALUES RETURNING id")
        q(c, "INSERT INTO test_fail_flag VALUES (1)")
        rows = {r[0]: r for r in q(c, "SELECT view_name, status, error FROM process_mv_refresh_queue()")}
        assert rows["test_mv_no_unique"][1] == "failed" and "concurrently" in rows["test_mv_no_unique"][2]
        assert rows["test_mv_flaky"][1] == "failed" and "division by zero" in rows["test_mv_flaky"][2]
        assert rows["test_mv_items"][1] == "completed" and in_view(c, item)
        failed = dict(q(c, "SELECT view_name, error FROM mv_refresh_log WHERE status = 'failed'"))
        assert set(failed) == {"test_mv_no_unique", "test_mv_flaky"}
        assert "division by zero" in failed["test_mv_flaky"]
        assert pending(c, "test_mv_flaky") == 1 and pending(c, "test_mv_items") == 0
        assert one(c, "SELECT count(*) FROM mv_refresh_queue WHERE last_status = 'failed'") == 2


def test_unknown_view_names_are_refused_before_any_dynamic_sql(qdb: str) -> None:
    hostile = 'mv_feed_projects"; DROP TABLE users; --'
    calls = [
        "SELECT mv_refresh_begin(%s, 'manual', 'pytest')",
        "SELECT * FROM mv_refresh_run(%s, NULL, NULL, true)",
        "SELECT mv_request_refresh(%s)",
        "SELECT mv_set_enabled(%s, true)",
    ]
    with session(qdb) as c:
        for call in calls:
            with pytest.raises(psycopg2.errors.UndefinedObject, match="unknown materialized view"):
                q(c, call, (hostile,))
        with pytest.raises(psycopg2.errors.UndefinedObject, match="not a dependency"):
            q(c, "SELECT mv_install_request_trigger(%s)", ('users; DROP TABLE users',))
        assert one(c, "SELECT to_regclass('users') IS NOT NULL") is True
        assert one(c, "SELECT count(*) FROM mv_refresh_log") == 0
        # Registered but not a materialized view: refused before REFRESH.
        q(c, "INSERT INTO mv_registry (view_name) VALUES ('users')")
        with pytest.raises(psycopg2.errors.WrongObjectType):
            q(c, "SELECT * FROM mv_refresh_run('users', NULL, NULL, true)")


# --------------------------------------------------------------------------
# The guide's queries, verbatim
# --------------------------------------------------------------------------


def test_guide_step_2_3_and_monitoring_queries_verbatim(qdb: str) -> None:
    with session(qdb) as c:
        user = one(c, "INSERT INTO users (username, name) VALUES ('guide_user', 'Guide User') RETURNING id")
        q(c, "INSERT INTO projects (user_id, title) VALUES (%s, 'Guide project')", (user,))
        q(c, "SELECT * FROM process_mv_refresh_queue()")
        # Step 2.3
        q(c, "UPDATE projects SET updated_at = CURRENT_TIMESTAMP WHERE id = (SELECT id FROM projects LIMIT 1);")
        c.cursor_factory = psycopg2.extras.RealDictCursor
        with c.cursor() as cur:
            cur.execute("SELECT * FROM mv_refresh_queue WHERE view_name = 'mv_feed_projects';")
            entry = cur.fetchall()
            assert len(entry) == 1 and entry[0]["status"] == "pending" and entry[0]["refresh_requested_at"]
            cur.execute("SELECT * FROM process_mv_refresh_queue();")
            processed = {r["view_name"]: r for r in cur.fetchall()}
            assert processed["mv_feed_projects"]["status"] == "completed"
            cur.execute("SELECT * FROM mv_refresh_log ORDER BY refresh_started_at DESC LIMIT 5;")
            log = cur.fetchall()
            assert len(log) == 5 and all(r["status"] == "completed" for r in log)
            # (Other views refreshed later in the same run may fill the newest five.)
            cur.execute("SELECT status, requests_cleared FROM mv_refresh_log WHERE view_name = 'mv_feed_projects' "
                        "ORDER BY refresh_started_at DESC LIMIT 1")
            assert cur.fetchone() == {"status": "completed", "requests_cleared": 1}
            # Step 2.5 and the health check
            cur.execute("SELECT * FROM mv_refresh_queue ORDER BY refresh_requested_at DESC LIMIT 10;")
            assert len(cur.fetchall()) >= 5
            cur.execute("SELECT view_name, AVG(duration_ms), COUNT(*) FROM mv_refresh_log "
                        "WHERE status = 'completed' GROUP BY view_name;")
            assert {r["view_name"] for r in cur.fetchall()} >= {"mv_feed_projects"}
            cur.execute("""
            SELECT COUNT(*) as stale_views
            FROM mv_refresh_queue
            WHERE status = 'pending' AND refresh_requested_at < CURRENT_TIMESTAMP - INTERVAL '1 minute'
        """)
            assert cur.fetchone()["stale_views"] == 0
            cur.execute("SELECT * FROM mv_refresh_queue WHERE status = 'pending';")
            assert cur.fetchall() == []


def test_stale_view_counts_in_the_health_query(qdb: str) -> None:
    with session(qdb) as c:
        q(c, "INSERT INTO mv_refresh_requests (view_name, requested_at) "
             "VALUES ('test_mv_items', clock_timestamp() - interval '2 minutes')")
        stale = one(c, """SELECT COUNT(*) as stale_views FROM mv_refresh_queue
                          WHERE status = 'pending' AND refresh_requested_at < CURRENT_TIMESTAMP - INTERVAL '1 minute'""")
        assert stale == 1
        metrics = dict(q(c, "SELECT metric, value FROM monitoring_dashboard"))
        assert metrics["Stale Views (pending > 1 min)"] == 1
        assert metrics["Oldest Pending Request Age: test_mv_items"] >= 120


def test_monitoring_dashboard_starts_with_the_guides_four_rows(qdb: str) -> None:
    with session(qdb) as c:
        rows = q(c, "SELECT * FROM monitoring_dashboard;")
        assert [r[0] for r in rows[:4]] == [
            "Materialized Views", "Denormalized Tables", "Active MV Refreshes", "Failed Refreshes (24h)"]
        assert [r[2] for r in rows[:4]] == ["views", "tables", "refreshes", "failures"]
        assert rows[0][1] == one(c, "SELECT count(*) FROM pg_matviews WHERE schemaname = 'public'")
        names = [r[0] for r in rows]
        assert len(names) == len(set(names)), "metric names are unique"
        assert "Pending Refresh Requests" in names and "Abandoned Refreshes (24h)" in names
        for view in one(c, "SELECT array_agg(view_name) FROM mv_registry"):
            assert f"Oldest Pending Request Age: {view}" in names
        types = q(c, "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                     "WHERE attrelid = 'monitoring_dashboard'::regclass AND attnum > 0 ORDER BY attnum")
        assert [t[0] for t in types] == ["text", "numeric", "text"]


# --------------------------------------------------------------------------
# Requests: one per table and transaction, savepoints, refresh inside a writing transaction
# --------------------------------------------------------------------------


def test_one_request_row_per_table_and_transaction(qdb: str) -> None:
    with session(qdb, autocommit=False) as w, session(qdb) as c:
        for _ in range(5):
            q(w, "INSERT INTO test_items DEFAULT VALUES")
        q(w, "UPDATE test_items SET v = v + 1")
        w.commit()
        assert one(c, "SELECT count(*) FROM mv_refresh_requests WHERE table_name = 'test_items'") == 1
        assert pending(c, "test_mv_items") == 1 and pending(c, "test_mv_flaky") == 1
        q(c, "INSERT INTO test_items DEFAULT VALUES")  # its own transaction: its own row
        assert one(c, "SELECT count(*) FROM mv_refresh_requests WHERE table_name = 'test_items'") == 2


def test_rolled_back_savepoint_does_not_swallow_the_next_request(qdb: str) -> None:
    with session(qdb, autocommit=False) as w, session(qdb) as c:
        q(w, "SAVEPOINT a")
        q(w, "INSERT INTO test_items DEFAULT VALUES")
        q(w, "ROLLBACK TO SAVEPOINT a")
        item = one(w, "INSERT INTO test_items DEFAULT VALUES RETURNING id")
        w.commit()
        assert pending(c, "test_mv_items") == 1
        assert refresh(qdb, "test_mv_items")["status"] == "completed" and in_view(c, item)


def test_rolled_back_write_leaves_no_request(qdb: str) -> None:
    with session(qdb, autocommit=False) as w, session(qdb) as c:
        q(w, "INSERT INTO test_items DEFAULT VALUES")
        w.rollback()
        assert pending(c, "test_mv_items") == 0 and queue_status(c, "test_mv_items") == "completed"


def test_write_after_a_refresh_in_the_same_transaction_stays_pending(qdb: str) -> None:
    with session(qdb, autocommit=False) as w, session(qdb) as c:
        first = one(w, "INSERT INTO test_items DEFAULT VALUES RETURNING id")
        processed = dict((r[0], r[1]) for r in q(w, "SELECT view_name, status FROM process_mv_refresh_queue()"))
        assert processed["test_mv_items"] == "completed"
        assert in_view(w, first)
        second = one(w, "INSERT INTO test_items DEFAULT VALUES RETURNING id")
        w.commit()
        assert in_view(c, first) and not in_view(c, second)
        assert queue_status(c, "test_mv_items") == "pending"
        assert refresh(qdb, "test_mv_items")["status"] == "completed" and in_view(c, second)


def test_explicit_view_request_and_reenable(qdb: str) -> None:
    with session(qdb) as c:
        q(c, "SELECT mv_request_refresh('test_mv_items')")
        assert pending(c, "test_mv_items") == 1 and pending(c, "test_mv_flaky") == 0
        assert refresh(qdb, "test_mv_items")["status"] == "completed"
        q(c, "SELECT mv_set_enabled('test_mv_flaky', false)")
        item = one(c, "INSERT INTO test_items DEFAULT VALUES RETURNING id")
        assert {r[0] for r in q(c, "SELECT view_name FROM process_mv_refresh_queue()")} == {"test_mv_items"}
        assert one(c, "SELECT count(*) FROM mv_refresh_requests") == 0  # a disabled view keeps nothing
        q(c, "SELECT mv_set_enabled('test_mv_flaky', true)")
        assert queue_status(c, "test_mv_flaky") == "pending"
        assert refresh(qdb, "test_mv_flaky")["status"] == "completed" and in_view(c, item, "test_mv_flaky")


def test_requests_stay_until_every_dependent_view_covered_them(qdb: str) -> None:
    with session(qdb) as c:
        q(c, "INSERT INTO test_items DEFAULT VALUES")
        refresh(qdb, "test_mv_items")
        assert one(c, "SELECT count(*) FROM mv_refresh_requests") == 1
        assert pending(c, "test_mv_items") == 0 and pending(c, "test_mv_flaky") == 1
        refresh(qdb, "test_mv_flaky")
        assert one(c, "SELECT count(*) FROM mv_refresh_requests") == 0


# --------------------------------------------------------------------------
# Debounce, abandoned refreshes
# --------------------------------------------------------------------------


def test_due_views_debounce_window_and_max_wait(qdb: str) -> None:
    def due(c: Any) -> dict[str, tuple]:
        return {r[0]: (r[1], r[2]) for r in q(c, "SELECT view_name, due, reason FROM mv_due_views()")}

    with session(qdb) as c:
        assert due(c) == {}
        q(c, "INSERT INTO mv_refresh_requests (view_name, requested_at) "
             "VALUES ('test_mv_items', clock_timestamp() - interval '1 second')")
        assert due(c)["test_mv_items"] == (False, "debouncing")
        q(c, "DELETE FROM mv_refresh_requests")
        q(c, "INSERT INTO mv_refresh_requests (view_name, requested_at) "
             "VALUES ('test_mv_items', clock_timestamp() - interval '6 seconds')")
        assert due(c)["test_mv_items"] == (True, "quiet")
        # A steady stream: the newest request is fresh, the oldest has waited max_wait.
        q(c, "INSERT INTO mv_refresh_requests (view_name, requested_at) "
             "VALUES ('test_mv_items', clock_timestamp() - interval '31 seconds'), ('test_mv_items', clock_timestamp())")
        assert due(c)["test_mv_items"] == (True, "max_wait")


def test_live_refresh_is_in_progress_and_not_due(qdb: str) -> None:
    with session(qdb) as admin, session(qdb, autocommit=False) as gate, session(qdb, autocommit=False) as r:
        q(admin, "INSERT INTO test_items DEFAULT VALUES")
        q(gate, "LOCK TABLE test_gate IN ACCESS EXCLUSIVE MODE")
        log_id = one(r, "SELECT mv_refresh_begin('test_mv_items', 'manual', 'pytest')")
        r.commit()
        pid = one(r, "SELECT pg_backend_pid()")
        run = Background(lambda: q(r, "SELECT status FROM mv_refresh_run('test_mv_items', %s, NULL, false)", (log_id,)))
        wait_until(lambda: waiting_on_lock(admin, pid), "the refresh to block")
        q(admin, "INSERT INTO test_items DEFAULT VALUES")
        assert one(admin, "SELECT mv_mark_abandoned()") == 0
        assert queue_status(admin, "test_mv_items") == "in_progress"
        due = {row[0]: row[1:] for row in q(admin, "SELECT view_name, due, reason FROM mv_due_views()")}
        assert due["test_mv_items"] == (False, "running")
        metrics = dict(q(admin, "SELECT metric, value FROM monitoring_dashboard"))
        assert metrics["Active MV Refreshes"] == 1
        gate.rollback()
        run.join()
        r.commit()
        assert queue_status(admin, "test_mv_items") == "pending"  # the write made during the refresh


def test_refresh_killed_mid_flight_is_marked_abandoned_and_its_requests_remain(qdb: str) -> None:
    with session(qdb) as admin, session(qdb, autocommit=False) as gate:
        item = one(admin, "INSERT INTO test_items DEFAULT VALUES RETURNING id")
        q(gate, "LOCK TABLE test_gate IN ACCESS EXCLUSIVE MODE")
        victim = psycopg2.connect(admin.dsn)
        log_id = one(victim, "SELECT mv_refresh_begin('test_mv_items', 'sweep', 'doomed')")
        victim.commit()
        pid = one(victim, "SELECT pg_backend_pid()")
        run = Background(lambda: q(victim, "SELECT * FROM mv_refresh_run('test_mv_items', %s, NULL, false)", (log_id,)))
        wait_until(lambda: waiting_on_lock(admin, pid), "the refresh to block")
        assert one(admin, "SELECT pg_terminate_backend(%s)", (pid,)) is True
        with pytest.raises(psycopg2.Error):
            run.join()
        victim.close()
        gate.rollback()
        wait_until(lambda: one(admin, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)) == 0,
                   "the killed backend to exit")
        assert one(admin, "SELECT mv_mark_abandoned()") == 1
        status, error = q(admin, "SELECT status, error FROM mv_refresh_log WHERE id = %s", (log_id,))[0]
        assert status == "abandoned" and str(pid) in error
        assert queue_status(admin, "test_mv_items") == "pending" and pending(admin, "test_mv_items") == 1
        assert refresh(qdb, "test_mv_items")["status"] == "completed" and in_view(admin, item)
        assert one(admin, "SELECT mv_mark_abandoned()") == 0


def test_begin_without_run_on_a_closed_connection_is_abandoned(qdb: str) -> None:
    with session(qdb) as admin:
        conn = psycopg2.connect(admin.dsn)
        log_id = one(conn, "SELECT mv_refresh_begin('test_mv_items', 'sweep', 'gone')")
        conn.commit()
        pid = one(conn, "SELECT pg_backend_pid()")
        assert one(admin, "SELECT mv_mark_abandoned()") == 0  # still connected: maybe about to run
        conn.close()
        wait_until(lambda: one(admin, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)) == 0,
                   "the backend to exit")
        assert one(admin, "SELECT mv_mark_abandoned()") == 1
        assert one(admin, "SELECT status FROM mv_refresh_log WHERE id = %s", (log_id,)) == "abandoned"


def test_request_trigger_helper_installs_one_statement_trigger(qdb: str) -> None:
    with session(qdb) as c:
        q(c, "SELECT mv_install_request_trigger('test_items')")  # again: still one trigger
        triggers = q(c, "SELECT tgname, tgtype FROM pg_trigger WHERE tgrelid = 'test_items'::regclass "
                        "AND NOT tgisinternal")
        assert len(triggers) == 1 and triggers[0][0] == "trg_mv_request_refresh"
        assert triggers[0][1] & 1 == 0, "statement-level (TRIGGER_TYPE_ROW bit clear)"
        q(c, "TRUNCATE test_items")
        assert pending(c, "test_mv_items") == 1
        base = {r[0] for r in q(c, "SELECT DISTINCT tgrelid::regclass::text FROM pg_trigger "
                                   "WHERE tgname = 'trg_mv_request_refresh'")}
        assert base >= {"projects", "users", "project_upvotes", "project_comments", "chains", "chain_members",
                        "chain_posts", "post_comments", "test_items"}
