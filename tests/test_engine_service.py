"""The refresh engine's service layer, called directly (no Celery), on real Postgres and Redis."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis as redis_lib
import sqlalchemy as sa
from conftest import make_settings

from beat.schedule import beat_schedule
from tasks import refresh_engine
from tasks.celery import celery_config, refresh_time_limits, visibility_timeout
from tasks.deps import Deps
from tasks.locks import ViewLock, lock_key, queued_key
from tasks.refresh import retry_delay
from tasks.refresh_engine import LOCKED, LOST, RefreshFailed, UnknownView
from tasks.routes import QUEUES, TASK_ROUTES

# Registered before the import below so pytest also rewrites its asserts.
pytest.register_assert_rewrite("engine_helpers")
from engine_helpers import (  # noqa: E402
    wait_until,
)

# The worker-process fixtures (engine_database_url, engine_cluster).
pytest_plugins = ["engine_helpers"]


@pytest.fixture(scope="module")
def deps(engine_database_url: str, redis_url: str) -> Iterator[Deps]:
    settings = make_settings(engine_database_url, redis_url, refresh_lock_ttl=3.0, sweep_interval=0.5)
    d = Deps.connect(settings)
    yield d
    d.close()


@pytest.fixture(autouse=True)
def clean_state(deps: Deps) -> Iterator[None]:
    """Each test starts with no pending requests, no locks and a normal slow/fail setup."""
    deps.redis.flushdb()
    with deps.engine.begin() as conn:
        conn.execute(sa.text("UPDATE engine_flags SET enabled = (name = 'slow'), seconds = 0"))
    with deps.engine.begin() as conn:
        # The SQL fallback refreshes whatever earlier tests left pending.
        conn.execute(sa.text("SELECT * FROM process_mv_refresh_queue()")).all()
    yield


def scalar(deps: Deps, sql: str, **params: object) -> object:
    with deps.engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar()


def execute(deps: Deps, sql: str, **params: object) -> None:
    with deps.engine.begin() as conn:
        conn.execute(sa.text(sql), params)


def pending(deps: Deps, view: str) -> int:
    return int(scalar(deps, "SELECT pending_requests FROM mv_refresh_queue WHERE view_name = :v", v=view))  # type: ignore[arg-type]


def queue_status(deps: Deps, view: str) -> str:
    return str(scalar(deps, "SELECT status FROM mv_refresh_queue WHERE view_name = :v", v=view))


def test_unknown_view_is_refused_before_any_sql_but_the_registry_lookup(deps: Deps) -> None:
    statements: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany) -> None:
        statements.append(statement)

    fence_before = scalar(deps, "SELECT last_value FROM mv_refresh_fence_seq")
    log_before = scalar(deps, "SELECT count(*) FROM mv_refresh_log")
    sa.event.listen(deps.engine, "before_cursor_execute", record)
    try:
        for bad in ["nope", "mv_feed_projects; DROP TABLE users", "", None, "x" * 200]:
            with pytest.raises(UnknownView) as info:
                refresh_engine.run_refresh(deps, bad, manual=True)  # type: ignore[arg-type]
            # The error names the bad value and the registered views.
            assert "unknown materialized view" in str(info.value)
            assert "mv_test_items" in str(info.value)
        with pytest.raises(UnknownView):
            refresh_engine.request_refresh(deps, "nope")
    finally:
        sa.event.remove(deps.engine, "before_cursor_execute", record)
    # Only registry reads ran (plus the pool's liveness ping).
    for statement in statements:
        assert "mv_registry" in statement or statement.strip() == "SELECT 1", statement
    assert any("mv_registry" in s for s in statements)
    assert scalar(deps, "SELECT last_value FROM mv_refresh_fence_seq") == fence_before
    assert scalar(deps, "SELECT count(*) FROM mv_refresh_log") == log_before
    assert deps.redis.keys("mvlock:*") == []


def test_request_refresh_only_inserts_a_request(deps: Deps) -> None:
    log_before = scalar(deps, "SELECT count(*) FROM mv_refresh_log")
    assert queue_status(deps, "mv_test_items") == "completed"
    assert refresh_engine.request_refresh(deps, "mv_test_items") == {"view_name": "mv_test_items", "requested": True}
    assert queue_status(deps, "mv_test_items") == "pending"
    assert scalar(deps, "SELECT count(*) FROM mv_refresh_log") == log_before
    # The next (sweep) refresh honours it even though no table was written.
    assert refresh_engine.run_refresh(deps, "mv_test_items", manual=False).status == "completed"
    assert queue_status(deps, "mv_test_items") == "completed"


def test_sweep_refresh_with_nothing_pending_is_skipped_and_manual_forces(deps: Deps) -> None:
    skipped = refresh_engine.run_refresh(deps, "mv_test_items", manual=False)
    assert skipped.status == "skipped"
    forced = refresh_engine.run_refresh(deps, "mv_test_items", manual=True)
    assert forced.status == "completed"
    assert scalar(deps, "SELECT source FROM mv_refresh_log WHERE id = :i", i=forced.log_id) == "manual"
    # The lock is gone after each refresh.
    assert deps.redis.get(lock_key("mv_test_items")) is None


def test_refresh_makes_committed_writes_visible_and_clears_their_requests(deps: Deps) -> None:
    execute(deps, "INSERT INTO engine_items (id, grp, val) SELECT g, g % 3, g FROM generate_series(1, 30) g "
                  "ON CONFLICT DO NOTHING")
    assert pending(deps, "mv_test_items") >= 1
    result = refresh_engine.run_refresh(deps, "mv_test_items", manual=False)
    assert result.status == "completed" and result.requests_cleared >= 1
    assert pending(deps, "mv_test_items") == 0
    assert scalar(deps, "SELECT count(*) FROM mv_test_items") == scalar(deps, "SELECT count(*) FROM engine_items")


def test_lock_held_elsewhere_returns_locked_at_once_and_keeps_requests(deps: Deps) -> None:
    refresh_engine.request_refresh(deps, "mv_test_items")
    other = ViewLock(deps.redis, "mv_test_items", 10)
    assert other.acquire()
    try:
        result = refresh_engine.run_refresh(deps, "mv_test_items", manual=True)
        assert result.status == LOCKED
        assert queue_status(deps, "mv_test_items") == "pending"
        # The other holder still owns its lock (ours never touched it).
        assert other.still_owned()
    finally:
        other.release()


def test_advisory_lock_held_by_another_session_returns_locked(deps: Deps) -> None:
    refresh_engine.request_refresh(deps, "mv_test_items")
    with deps.engine.connect() as conn:
        got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:ns, hashtext(:v))"),
                           {"ns": refresh_engine.ADVISORY_NAMESPACE, "v": "mv_test_items"}).scalar()
        assert got
        try:
            result = refresh_engine.run_refresh(deps, "mv_test_items", manual=False)
            assert result.status == LOCKED
            assert queue_status(deps, "mv_test_items") == "pending"
        finally:
            conn.execute(sa.text("SELECT pg_advisory_unlock_all()"))
            conn.commit()
    # The Redis lock was released when the advisory lock said no.
    assert deps.redis.get(lock_key("mv_test_items")) is None


def test_redis_down_refreshes_under_the_advisory_lock_alone(deps: Deps) -> None:
    settings = deps.settings.with_overrides(redis_url="redis://127.0.0.1:1/0")
    no_redis = Deps.connect(settings)
    try:
        refresh_engine.request_refresh(no_redis, "mv_test_items")
        result = refresh_engine.run_refresh(no_redis, "mv_test_items", manual=False)
        assert result.status == "completed"
        assert result.lock == "postgres"
        assert queue_status(deps, "mv_test_items") == "completed"
        # And two at once still do not both refresh: the advisory lock is the gate.
        refresh_engine.request_refresh(no_redis, "mv_test_slow")
        execute(deps, "UPDATE engine_flags SET seconds = 1.5 WHERE name = 'slow'")
        results: list[refresh_engine.RefreshResult] = []
        threads = [threading.Thread(target=lambda: results.append(
            refresh_engine.run_refresh(no_redis, "mv_test_slow", manual=True))) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(r.status for r in results) == ["completed", "locked"]
    finally:
        no_redis.close()


def test_lock_lost_during_refresh_rolls_back_and_logs_superseded(deps: Deps) -> None:
    execute(deps, "INSERT INTO engine_slow_items VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET val = engine_slow_items.val + 1")
    execute(deps, "UPDATE engine_flags SET seconds = 2 WHERE name = 'slow'")
    before = scalar(deps, "SELECT coalesce(sum(val), 0) FROM mv_test_slow")
    key = lock_key("mv_test_slow")

    def steal() -> None:
        # Wait until the refresh holds its lock, then make it vanish (as FLUSHALL would).
        wait_until(lambda: deps.redis.get(key), 10, 0.02, "the refresh to take its lock")
        time.sleep(0.3)
        deps.redis.delete(key)

    thief = threading.Thread(target=steal)
    thief.start()
    result = refresh_engine.run_refresh(deps, "mv_test_slow", manual=False)
    thief.join()
    assert result.status == LOST
    row = deps.engine.connect().execute(
        sa.text("SELECT status, error FROM mv_refresh_log WHERE id = :i"), {"i": result.log_id}).one()
    assert row.status == "failed" and row.error.startswith("superseded")
    # Rolled back: the view did not change and the requests are still there.
    assert scalar(deps, "SELECT coalesce(sum(val), 0) FROM mv_test_slow") == before
    assert queue_status(deps, "mv_test_slow") == "pending"


def test_statement_timeout_stops_the_refresh_in_postgres(deps: Deps) -> None:
    execute(deps, "INSERT INTO engine_slow_items VALUES (2, 1) ON CONFLICT DO NOTHING")
    refresh_engine.request_refresh(deps, "mv_test_slow")
    execute(deps, "UPDATE engine_flags SET seconds = 5 WHERE name = 'slow'")
    # Cancelled by the timeout (the error says so), not slept through.
    with pytest.raises(RefreshFailed, match="statement timeout"):
        refresh_engine.run_refresh(deps, "mv_test_slow", manual=False, statement_timeout_s=1.0)
    status, error = deps.engine.connect().execute(sa.text(
        "SELECT status, error FROM mv_refresh_log WHERE view_name = 'mv_test_slow' ORDER BY id DESC LIMIT 1")).one()
    assert status == "failed" and "statement timeout" in error
    assert queue_status(deps, "mv_test_slow") == "pending"
    assert deps.redis.get(lock_key("mv_test_slow")) is None


def test_failed_refresh_makes_health_degraded_until_a_refresh_succeeds(deps: Deps) -> None:
    execute(deps, "INSERT INTO engine_fail_items VALUES (1, 10) ON CONFLICT DO NOTHING")
    refresh_engine.run_refresh(deps, "mv_test_fail", manual=True)  # a clean baseline
    execute(deps, "UPDATE engine_flags SET enabled = true WHERE name = 'fail'")
    refresh_engine.request_refresh(deps, "mv_test_fail")
    with pytest.raises(RefreshFailed, match="division by zero"):
        refresh_engine.run_refresh(deps, "mv_test_fail", manual=False)
    health = refresh_engine.refresh_health(deps.engine)
    assert health["status"] == "degraded"
    assert "mv_test_fail" in health["failing_views"]
    view = health["views"]["mv_test_fail"]
    assert view["last_status"] == "failed" and "division by zero" in view["last_error"]
    assert view["failures_last_hour"] >= 1
    # Other views are not affected.
    refresh_engine.request_refresh(deps, "mv_test_items")
    assert refresh_engine.run_refresh(deps, "mv_test_items", manual=False).status == "completed"
    execute(deps, "UPDATE engine_flags SET enabled = false WHERE name = 'fail'")
    assert refresh_engine.run_refresh(deps, "mv_test_fail", manual=False).status == "completed"
    assert "mv_test_fail" not in refresh_engine.refresh_health(deps.engine)["failing_views"]


def test_old_pending_request_makes_a_view_stale(deps: Deps) -> None:
    assert refresh_engine.refresh_health(deps.engine, stale_after_seconds=0.5)["status"] == "healthy"
    execute(deps, "INSERT INTO engine_items VALUES (999999, 1, 1) ON CONFLICT (id) DO UPDATE SET val = 2")
    # Pending requests older than the threshold make their views stale.
    health = wait_until(lambda: (h := refresh_engine.refresh_health(deps.engine, stale_after_seconds=0.5))
                        ["stale_views"] == 2 and h, 10, what="views to turn stale")
    assert health["status"] == "degraded"
    assert health["stale"] == ["mv_test_groups", "mv_test_items"]
    assert refresh_engine.refresh_health(deps.engine, stale_after_seconds=600)["stale_views"] == 0


def test_sweep_enqueues_a_due_view_once_even_when_two_sweeps_run(deps: Deps) -> None:
    execute(deps, "UPDATE mv_registry SET debounce_seconds = 0.2 WHERE view_name = 'mv_test_groups'")
    refresh_engine.request_refresh(deps, "mv_test_groups")
    time.sleep(0.3)  # let the debounce window pass (the window itself is the subject here)
    sent: list[str] = []
    first = refresh_engine.sweep_refresh_queue(deps, lambda view, seen: sent.append(view))
    second = refresh_engine.sweep_refresh_queue(deps, lambda view, seen: sent.append(view))
    assert "mv_test_groups" in first.enqueued
    assert "mv_test_groups" in second.already_queued
    assert sent.count("mv_test_groups") == 1
    # The refresh that starts clears the marker, so the view can be enqueued again later.
    assert refresh_engine.run_refresh(deps, "mv_test_groups", manual=False).status == "completed"
    assert deps.redis.get(queued_key("mv_test_groups")) is None


def test_a_sweep_refresh_enqueued_twice_refreshes_once(deps: Deps) -> None:
    """Two sweeps can both read a view as due when one reads just before the
    view's refresh starts and claims the enqueue marker just after that refresh
    cleared it (found by the fault suite: overlapping sweeps, two Beats; also a
    sweep without Redis, or a redelivered message). The late copy runs after the
    first refresh committed, with newer writes pending that are not due yet: it
    must not refresh them before their debounce window."""
    view = "mv_test_groups"
    execute(deps, "UPDATE mv_registry SET debounce_seconds = 0.2 WHERE view_name = :v", v=view)
    refresh_engine.request_refresh(deps, view)
    time.sleep(0.3)  # past the window: due
    sent: list[tuple[str, int]] = []
    refresh_engine.sweep_refresh_queue(deps, lambda v, seen: sent.append((v, seen)))
    seen = dict(sent)[view]
    first = refresh_engine.run_refresh(deps, view, manual=False, seen_us=seen)
    assert first.status == "completed"
    refresh_engine.request_refresh(deps, view)  # a write right after the refresh: pending, inside its window
    log_before = scalar(deps, "SELECT max(id) FROM mv_refresh_log")
    duplicate = refresh_engine.run_refresh(deps, view, manual=False, seen_us=seen)
    assert duplicate.status == "skipped" and "already refreshed" in (duplicate.detail or "")
    assert scalar(deps, "SELECT max(id) FROM mv_refresh_log") == log_before  # nothing refreshed, nothing logged
    assert pending(deps, view) == 1  # the new request waits for the next sweep
    # The next sweep sees the newer refresh and enqueues a refresh that does run.
    time.sleep(0.3)
    sent.clear()
    refresh_engine.sweep_refresh_queue(deps, lambda v, seen: sent.append((v, seen)))
    assert dict(sent)[view] != seen
    assert refresh_engine.run_refresh(deps, view, manual=False, seen_us=dict(sent)[view]).status == "completed"
    assert pending(deps, view) == 0


def test_sweep_leaves_a_view_inside_its_debounce_window(deps: Deps) -> None:
    execute(deps, "UPDATE mv_registry SET debounce_seconds = 30, max_wait_seconds = 60 WHERE view_name = 'mv_test_items'")
    try:
        refresh_engine.request_refresh(deps, "mv_test_items")
        result = refresh_engine.sweep_refresh_queue(deps, lambda view, seen: None)
        assert "mv_test_items" not in result.due
        assert result.waiting["mv_test_items"] == "debouncing"
    finally:
        execute(deps, "UPDATE mv_registry SET debounce_seconds = 1, max_wait_seconds = 3 WHERE view_name = 'mv_test_items'")


def test_disabled_engine_refreshes_nothing(deps: Deps) -> None:
    off = Deps(settings=deps.settings.with_overrides(mv_refresh_worker_enabled=False), engine=deps.engine,
               redis=deps.redis)
    refresh_engine.request_refresh(off, "mv_test_items")
    assert refresh_engine.run_refresh(off, "mv_test_items", manual=True).status == "disabled"
    assert refresh_engine.sweep_refresh_queue(off, lambda v: pytest.fail("enqueued")).disabled
    assert queue_status(deps, "mv_test_items") == "pending"
    assert beat_schedule(off.settings).get("sweep-refresh-queue") is None


def test_beat_schedule_names_routed_tasks_and_skips_what_is_disabled(deps: Deps) -> None:
    full = beat_schedule(deps.settings)
    assert full["sweep-refresh-queue"]["task"] == "tasks.sweep_refresh_queue"
    assert full["sweep-refresh-queue"]["schedule"] == deps.settings.sweep_interval
    assert full["nightly-reconciliation"]["task"] == "tasks.reconcile"
    cron = full["nightly-reconciliation"]["schedule"]
    assert cron.hour == {3} and cron.minute == {0}
    for entry in full.values():
        assert entry["task"] in TASK_ROUTES
    none = beat_schedule(deps.settings.with_overrides(mv_refresh_worker_enabled=False,
                                                      reconciliation_job_enabled=False))
    assert none == {}


def test_celery_config_fits_lock_ttl_and_time_limits(deps: Deps) -> None:
    conf = celery_config(deps.settings)
    soft, hard = refresh_time_limits(deps.settings)
    assert soft < hard
    assert conf["task_annotations"]["tasks.refresh_view"] == {"soft_time_limit": soft, "time_limit": hard}
    assert conf["broker_transport_options"]["visibility_timeout"] == visibility_timeout(deps.settings)
    assert visibility_timeout(deps.settings) > hard + deps.settings.refresh_lock_ttl
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["worker_send_task_events"] and conf["task_send_sent_event"]
    assert [q.name for q in conf["task_queues"]] == list(QUEUES)
    assert TASK_ROUTES["tasks.refresh_view"] == {"queue": "refresh"}
    assert TASK_ROUTES["tasks.sweep_refresh_queue"] == {"queue": "default"}
    assert TASK_ROUTES["tasks.reconcile"] == {"queue": "maintenance"}


def test_retry_delays_grow_with_jitter() -> None:
    for _ in range(200):
        delays = [retry_delay(0.5, n) for n in range(5)]
        assert all(b >= a for a, b in zip(delays, delays[1:], strict=False))
        for n, d in enumerate(delays):
            assert 0.25 * 2**n <= d <= 0.5 * 2**n
    assert len({round(retry_delay(1.0, 3), 6) for _ in range(20)}) > 1  # jittered


def test_lock_renewal_keeps_a_long_refresh_locked(deps: Deps) -> None:
    lock = ViewLock(deps.redis, "mv_test_items", 0.6)
    assert lock.acquire()
    lock.start_renewal()
    try:
        time.sleep(1.5)  # longer than the TTL: only renewal keeps the key alive
        assert lock.still_owned() and lock.renewals >= 2
        other = ViewLock(redis_lib.Redis.from_url(deps.settings.redis_url), "mv_test_items", 1)
        assert not other.acquire()
    finally:
        lock.release()
    assert deps.redis.get(lock_key("mv_test_items")) is None
