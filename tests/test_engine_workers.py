"""The refresh engine end to end: real `celery -A tasks worker` processes (two),
two real Beats sweeping every 0.5 s, the session's private Postgres and Redis.

Timings come from tests/engine_helpers.py: lock TTL 5 s, sweep 0.5 s, retry
backoff 0.5 s, test views with a 1 s debounce window and 3 s max wait.
Deadlines in the polls below are generous (the machine is shared); the
assertions are about counts, order and overlap, never about speed.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime

import psycopg2
import pytest
import sqlalchemy as sa

from tasks.refresh_engine import refresh_health

pytestmark = pytest.mark.slow

# Registered before the import below so pytest also rewrites its asserts.
pytest.register_assert_rewrite("engine_helpers")
from api_helpers import api_client  # noqa: E402
from engine_helpers import (  # noqa: E402
    LOCK_TTL,
    MAX_RETRIES,
    ROOT,
    SWEEP_INTERVAL,
    EngineCluster,
    wait_until,
)

# The worker-process fixtures (engine_database_url, engine_cluster).
pytest_plugins = ["engine_helpers"]


@pytest.fixture(autouse=True)
def show_logs_on_failure(engine_cluster: EngineCluster) -> Iterator[None]:
    """Worker and Beat log tails, shown by pytest only when the test fails."""
    yield
    print(engine_cluster.logs())


@pytest.fixture(autouse=True)
def settled(engine_cluster: EngineCluster) -> Iterator[None]:
    """Each test starts with normal flags and nothing pending or running."""
    engine_cluster.execute("UPDATE engine_flags SET enabled = (name = 'slow'), seconds = 0")
    engine_cluster.wait_quiescent(timeout=40)
    yield


def send_refresh(cluster: EngineCluster, view: str, manual: bool = True) -> str:
    return cluster.app.send_task("tasks.refresh_view", args=[view], kwargs={"manual": manual}).id


def write_items(cluster: EngineCluster, start_id: int, count: int) -> None:
    """``count`` separate committed transactions, each one write to engine_items."""
    with cluster.engine.connect() as conn:
        for i in range(start_id, start_id + count):
            conn.execute(sa.text("INSERT INTO engine_items (id, grp, val) VALUES (:i, :g, 1) "
                                 "ON CONFLICT (id) DO UPDATE SET val = engine_items.val + 1"), {"i": i, "g": i % 7})
            conn.commit()


def intervals_overlap(intervals: list[tuple[datetime | float, datetime | float]]) -> list[tuple]:
    ordered = sorted(intervals)
    return [(a, b) for a, b in zip(ordered, ordered[1:], strict=False) if b[0] < a[1]]


def view_matches_definition(cluster: EngineCluster, view: str) -> int:
    """Rows that differ between a view and its defining query, both directions of EXCEPT ALL.

    The view name comes from mv_registry and is quoted by Postgres (format %I).
    """
    sql = cluster.scalar(
        "SELECT format('SELECT count(*) FROM ((TABLE %1$I EXCEPT ALL (%2$s)) UNION ALL ((%2$s) EXCEPT ALL TABLE %1$I)) d', "
        "view_name, rtrim(pg_get_viewdef(to_regclass(view_name)), ';')) FROM mv_registry WHERE view_name = :v", v=view)
    return int(cluster.scalar(sql))


def test_burst_of_200_writes_in_one_window_costs_one_refresh_per_view(engine_cluster: EngineCluster) -> None:
    c = engine_cluster
    # A 1.5 s window (writes never pause that long) and a max wait the burst cannot reach
    # on a loaded machine, so "one window" is what is being tested.
    c.execute("UPDATE mv_registry SET debounce_seconds = 1.5, max_wait_seconds = 20 "
              "WHERE view_name IN ('mv_test_items', 'mv_test_groups')")
    try:
        mark = c.max_log_id()
        started = time.monotonic()
        write_items(c, 10_000, 200)
        burst_seconds = time.monotonic() - started
        # Both affected views are refreshed once the window has passed...
        for view in ("mv_test_items", "mv_test_groups"):
            wait_until(lambda v=view: c.completed_since(mark, v), 30, what=f"{view} refreshed")
        c.wait_quiescent(20)
        time.sleep(3 * SWEEP_INTERVAL)  # a few more sweeps: nothing else may follow
        # ...exactly once each, with every request of the burst cleared by that one refresh.
        for view in ("mv_test_items", "mv_test_groups"):
            done = c.completed_since(mark, view)
            assert len(done) == 1, (view, burst_seconds, done)
            assert done[0].requests_cleared >= 1
        assert c.scalar("SELECT count(*) FROM mv_test_items WHERE id >= 10000 AND id < 10200") == 200
        # Views that do not depend on engine_items were not refreshed at all.
        assert not c.completed_since(mark, "mv_test_slow")
        assert not c.completed_since(mark, "mv_feed_projects")
    finally:
        c.execute("UPDATE mv_registry SET debounce_seconds = 1, max_wait_seconds = 3 "
                  "WHERE view_name IN ('mv_test_items', 'mv_test_groups')")


def test_steady_writes_still_refresh_every_max_wait(engine_cluster: EngineCluster) -> None:
    """A write every 0.1 s for 3x max wait: never quiet for the window, so only max wait
    triggers refreshes, and consecutive refreshes (and the first write and the first
    refresh) start at most max wait apart. The sweep looks one interval ahead
    (``due_views``), so the bound is max wait itself, not max wait plus a sweep."""
    c = engine_cluster
    debounce, max_wait = 1.0, 2.0
    c.execute("UPDATE mv_registry SET debounce_seconds = :d, max_wait_seconds = :m WHERE view_name = 'mv_test_items'",
              d=debounce, m=max_wait)
    try:
        # The Beats sweep and the workers refresh (a module run may start with this test).
        warm = c.max_log_id()
        write_items(c, 19_999, 1)
        wait_until(lambda: c.completed_since(warm, "mv_test_items"), 30, what="a first sweep refresh")
        c.wait_quiescent(20)
        mark = c.max_log_id()
        deadline = time.monotonic() + 3 * max_wait
        i = 20_000
        first_write = None
        with c.engine.connect() as conn:
            while time.monotonic() < deadline:
                conn.execute(sa.text("INSERT INTO engine_items (id, grp, val) VALUES (:i, 1, 1)"), {"i": i})
                conn.commit()
                if first_write is None:
                    first_write = conn.execute(sa.text("SELECT clock_timestamp()")).scalar()
                    conn.commit()
                i += 1
                time.sleep(0.1)
        t_end = c.scalar("SELECT clock_timestamp()")
        done = [r for r in c.completed_since(mark, "mv_test_items") if r.refresh_started_at <= t_end]
        assert len(done) >= 2, done
        assert all(r.source == "sweep" for r in done), done
        starts = [first_write] + [r.refresh_started_at for r in done]
        gaps = [(b - a).total_seconds() for a, b in zip(starts, starts[1:], strict=False)]
        print(f"gaps between refresh starts: {gaps} (max wait {max_wait} s)")
        assert max(gaps) <= max_wait, (gaps, done)
        # Debounced all the same: far fewer refreshes than writes.
        assert len(done) <= 3 * max_wait, (len(done), i - 20_000)
    finally:
        c.execute("UPDATE mv_registry SET debounce_seconds = 1, max_wait_seconds = 3 WHERE view_name = 'mv_test_items'")


def test_writes_during_a_refresh_cause_exactly_one_more(engine_cluster: EngineCluster) -> None:
    c = engine_cluster
    c.execute("UPDATE engine_flags SET seconds = 2 WHERE name = 'slow'")
    mark = c.max_log_id()
    c.execute("INSERT INTO engine_slow_items VALUES (300, 1) ON CONFLICT DO NOTHING")
    running = wait_until(lambda: c.rows(
        "SELECT id FROM mv_refresh_log WHERE id > :m AND view_name = 'mv_test_slow' AND status = 'in_progress'",
        m=mark), 20, what="the slow refresh to start")
    for i in range(301, 321):  # 20 writes, each its own transaction, while it runs
        c.execute("INSERT INTO engine_slow_items VALUES (:i, 1)", i=i)
    assert c.scalar("SELECT status FROM mv_refresh_log WHERE id = :i", i=running[0][0]) == "in_progress", \
        "the writes did not land during the refresh; the test proves nothing"
    c.execute("UPDATE engine_flags SET seconds = 0 WHERE name = 'slow'")
    c.wait_quiescent(30)
    time.sleep(3 * SWEEP_INTERVAL)  # a few more sweeps: nothing else may follow
    done = c.completed_since(mark, "mv_test_slow")
    assert len(done) == 2, done
    assert c.scalar("SELECT count(*) FROM mv_test_slow WHERE id BETWEEN 300 AND 320") == 21


def test_nothing_lost_under_continuous_writes(engine_cluster: EngineCluster) -> None:
    """Writes committed before a refresh starts are in the view it produces; at the end
    every registered view equals a from-scratch run of its query."""
    c = engine_cluster
    stop = threading.Event()
    committed: list[tuple[int, datetime]] = []  # (id, commit time as seen by the database clock after COMMIT)
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            conn = psycopg2.connect(c.database_url.replace("postgresql+psycopg2", "postgresql"))
            cur = conn.cursor()
            i = 30_000
            while not stop.is_set():
                # Mixed writes: inserts (tracked), updates and deletes (checked at the end).
                cur.execute("INSERT INTO engine_items (id, grp, val) VALUES (%s, %s, 1)", (i, i % 5))
                if i % 3 == 0:
                    cur.execute("UPDATE engine_items SET val = val + 1 WHERE id = %s", (i - 2,))
                if i % 10 == 0:
                    cur.execute("DELETE FROM engine_items WHERE id = %s", (i - 5,))
                conn.commit()
                cur.execute("SELECT clock_timestamp()")
                after_commit = cur.fetchone()[0]
                conn.commit()
                if i % 10 != 5:  # ids ending in 5 may be deleted later
                    committed.append((i, after_commit))
                i += 1
                time.sleep(0.005)
            conn.close()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    checks = 0
    try:
        end = time.monotonic() + 6.0
        while time.monotonic() < end:
            time.sleep(0.7)
            # One snapshot: the latest completed refresh's start and the view it produced.
            with c.engine.connect() as conn:
                conn.execute(sa.text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
                started = conn.execute(sa.text(
                    "SELECT max(refresh_started_at) FROM mv_refresh_log "
                    "WHERE view_name = 'mv_test_items' AND status = 'completed'")).scalar()
                in_view = {row[0] for row in conn.execute(sa.text("SELECT id FROM mv_test_items WHERE id >= 30000"))}
                conn.rollback()
            expected = {i for i, t in list(committed) if t < started}
            missing = expected - in_view
            assert not missing, f"{len(missing)} writes committed before the refresh at {started} are missing"
            checks += bool(expected)
    finally:
        stop.set()
        thread.join(10)
    assert not errors, errors
    assert checks >= 2, "no refresh completed while writes were running"
    c.wait_quiescent(30)
    for (view,) in c.rows("SELECT view_name FROM mv_registry WHERE enabled ORDER BY view_name"):
        assert view_matches_definition(c, view) == 0, view


def test_single_flight_under_a_burst_of_50_manual_refreshes(engine_cluster: EngineCluster) -> None:
    c = engine_cluster
    c.execute("INSERT INTO engine_slow_items VALUES (1, 1) ON CONFLICT DO NOTHING")
    c.wait_quiescent(20)
    # Short refreshes, so the burst meets both running and free locks.
    c.execute("UPDATE engine_flags SET seconds = 0.05 WHERE name = 'slow'")
    mark = c.max_log_id()
    ids = [send_refresh(c, "mv_test_slow") for _ in range(50)]
    results = [c.app.AsyncResult(task_id).get(timeout=90) for task_id in ids]
    statuses = [r["status"] for r in results]
    ran = [r for r in results if r["status"] in ("completed", "skipped")]
    # Some ran, the others found the lock taken and returned at once.
    assert statuses.count("completed") >= 1, statuses
    assert statuses.count("locked") >= 1, statuses
    assert set(statuses) <= {"completed", "locked", "skipped"}, statuses
    # Both workers took part.
    assert {r["worker"].split("@")[0] for r in results} == {"w1", "w2"}
    # Lock-holding intervals (wall clock, same machine) never overlap...
    assert not intervals_overlap([(r["lock_acquired_at"], r["lock_released_at"]) for r in ran])
    # ...and neither do the logged refresh intervals in Postgres.
    logged = c.rows("SELECT refresh_started_at, refresh_completed_at FROM mv_refresh_log "
                    "WHERE id > :m AND view_name = 'mv_test_slow' AND status = 'completed'", m=mark)
    assert len(logged) == statuses.count("completed")
    assert not intervals_overlap([(a, b) for a, b in logged])


def test_worker_killed_mid_refresh_is_recovered_within_ttl_plus_sweep(engine_cluster: EngineCluster) -> None:
    c = engine_cluster
    c.execute("UPDATE engine_flags SET seconds = 30 WHERE name = 'slow'")
    c.execute("INSERT INTO engine_slow_items VALUES (100, 2) ON CONFLICT (id) DO UPDATE SET val = 2")
    running = wait_until(lambda: c.rows(
        "SELECT id, worker FROM mv_refresh_log WHERE view_name = 'mv_test_slow' AND status = 'in_progress'"),
        20, what="the slow refresh to start")
    log_id, worker = running[0]
    victim = worker.split("@")[0]
    time.sleep(1.0)  # well inside the 30 s refresh
    c.execute("UPDATE engine_flags SET seconds = 0.2 WHERE name = 'slow'")  # the retry is quick
    killed_at = time.monotonic()
    c.workers[victim].kill()
    try:
        # The queue row leaves in_progress: the backend noticed its client is gone.
        wait_until(lambda: c.scalar("SELECT status FROM mv_refresh_queue WHERE view_name = 'mv_test_slow'")
                   != "in_progress", LOCK_TTL + SWEEP_INTERVAL + 10, what="queue status to leave in_progress")
        # The surviving worker refreshes the view once the dead worker's lock expires.
        wait_until(lambda: c.completed_since(log_id, "mv_test_slow"), LOCK_TTL + SWEEP_INTERVAL + 15,
                   what="a new completed refresh after the kill")
        recovered = time.monotonic() - killed_at
        print(f"recovered {recovered:.1f} s after SIGKILL (lock TTL {LOCK_TTL} s, sweep {SWEEP_INTERVAL} s)")
        assert c.scalar("SELECT status FROM mv_refresh_log WHERE id = :i", i=log_id) == "abandoned"
        assert c.scalar("SELECT sum(val) FROM mv_test_slow WHERE id = 100") == 2
        # Within one lock TTL + one sweep (+ the 0.2 s refresh and hand-off slack).
        assert recovered <= LOCK_TTL + SWEEP_INTERVAL + 0.2 + 3.0, recovered
    finally:
        c.restart_worker(victim)


def test_failing_refresh_retries_with_growing_delays_and_others_keep_refreshing(engine_cluster: EngineCluster) -> None:
    c = engine_cluster
    c.execute("INSERT INTO engine_fail_items VALUES (1, 1) ON CONFLICT DO NOTHING")
    c.wait_quiescent(20)
    mark = c.max_log_id()
    c.execute("UPDATE engine_flags SET enabled = true WHERE name = 'fail'")
    c.execute("INSERT INTO engine_fail_items VALUES (2, 1)")

    def failures() -> list[sa.Row]:
        return c.rows("SELECT refresh_started_at, error FROM mv_refresh_log WHERE id > :m "
                      "AND view_name = 'mv_test_fail' AND status = 'failed' ORDER BY id", m=mark)

    wait_until(lambda: len(failures()) >= MAX_RETRIES + 1, 40, what="the first attempt and its retries to fail")
    failed = failures()
    # Meanwhile another view keeps refreshing.
    other_mark = c.max_log_id()
    write_items(c, 40_000, 5)
    wait_until(lambda: c.completed_since(other_mark, "mv_test_items"), 20, what="mv_test_items refreshed")
    report = refresh_health(c.engine)
    assert report["status"] == "degraded"
    assert "mv_test_fail" in report["failing_views"]
    # GET /health (the API's route, monitoring/http.py) says so too, naming the view and its error.
    with api_client(c.database_url, c.redis_url) as (client, _deps):
        health = client.simulate_get("/health")
    assert health.status_code == 503 and health.json["status"] == "degraded", health.json
    assert health.json["checks"]["database"]["status"] == "healthy"
    views_check = health.json["checks"]["materialized_views"]
    assert views_check["status"] == "degraded" and "mv_test_fail" in views_check["failing_views"], views_check
    assert "division by zero" in views_check["errors"]["mv_test_fail"]
    assert all("division by zero" in row.error for row in failed)
    # Exponential backoff: each gap between attempts is longer than the one before.
    starts = [row.refresh_started_at for row in failed[: MAX_RETRIES + 1]]
    gaps = [(b - a).total_seconds() for a, b in zip(starts, starts[1:], strict=False)]
    assert all(b > a - 0.05 for a, b in zip(gaps, gaps[1:], strict=False)), gaps
    assert gaps[-1] > gaps[0] + 0.3, gaps
    # Fixed: the next attempt succeeds and health recovers.
    c.execute("UPDATE engine_flags SET enabled = false WHERE name = 'fail'")
    wait_until(lambda: c.completed_since(mark, "mv_test_fail"), 30, what="the failing view to recover")
    wait_until(lambda: "mv_test_fail" not in refresh_health(c.engine)["failing_views"], 10, what="health to recover")
    with api_client(c.database_url, c.redis_url) as (client, _deps):
        views_check = client.simulate_get("/health").json["checks"]["materialized_views"]
    assert "mv_test_fail" not in views_check["failing_views"], views_check


def test_redis_flushed_mid_refresh_the_engine_recovers(engine_cluster: EngineCluster) -> None:
    c = engine_cluster
    c.execute("UPDATE engine_flags SET seconds = 3 WHERE name = 'slow'")
    c.execute("INSERT INTO engine_slow_items VALUES (200, 5) ON CONFLICT (id) DO UPDATE SET val = 5")
    running = wait_until(lambda: c.rows(
        "SELECT id FROM mv_refresh_log WHERE view_name = 'mv_test_slow' AND status = 'in_progress'"),
        20, what="the slow refresh to start")
    c.redis.flushdb()  # locks, queued markers, queued messages, results: all gone
    flushed_at = c.scalar("SELECT clock_timestamp()")
    c.execute("UPDATE engine_flags SET seconds = 0.2 WHERE name = 'slow'")
    # The refresh that lost its lock rolled back instead of committing...
    wait_until(lambda: c.scalar("SELECT status FROM mv_refresh_log WHERE id = :i", i=running[0][0]) != "in_progress",
               20, what="the interrupted refresh to finish")
    assert c.scalar("SELECT status FROM mv_refresh_log WHERE id = :i", i=running[0][0]) == "failed"
    assert c.scalar("SELECT error FROM mv_refresh_log WHERE id = :i", i=running[0][0]).startswith("superseded")
    # ...and its requests, kept in Postgres, bring the view up to date without help.
    wait_until(lambda: c.scalar("SELECT val FROM mv_test_slow WHERE id = 200") == 5, 30,
               what="the slow view to be refreshed after the flush")
    mark = c.max_log_id()
    write_items(c, 50_000, 3)
    wait_until(lambda: c.completed_since(mark, "mv_test_items"), 20, what="new refreshes after FLUSHALL")
    assert all(r.refresh_started_at > flushed_at for r in c.completed_since(mark, "mv_test_items"))


def test_celery_call_cli_refreshes_and_refuses_unknown_names(engine_cluster: EngineCluster) -> None:
    c = engine_cluster
    fence_before = c.scalar("SELECT last_value FROM mv_refresh_fence_seq")

    def call(view: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "tasks", "call", "tasks.refresh_view", f'--args=["{view}"]'],
            cwd=ROOT, env=c.env, capture_output=True, text=True, timeout=60, check=True)
        return out.stdout.strip().splitlines()[-1]

    bad = c.app.AsyncResult(call("mv_does_not_exist"))
    wait_until(bad.ready, 30, what="the unknown-view task to finish")
    assert bad.state == "FAILURE"
    assert "unknown materialized view 'mv_does_not_exist'" in str(bad.result)
    assert "mv_test_items" in str(bad.result)  # the error names the registered views
    assert c.scalar("SELECT last_value FROM mv_refresh_fence_seq") == fence_before
    assert c.scalar("SELECT count(*) FROM mv_refresh_log WHERE view_name = 'mv_does_not_exist'") == 0
    # The guide's command, exactly: a manual refresh that runs even with nothing pending.
    mark = c.max_log_id()
    good = c.app.AsyncResult(call("mv_feed_projects"))
    assert good.get(timeout=30)["status"] == "completed"
    assert [r.source for r in c.completed_since(mark, "mv_feed_projects")] == ["manual"]
