"""The fault suite: the whole stack under a mixed load, one fault at a time.

`make test-faults` runs it at full size (FAULTS_FULL=1: 20 worker kills, three
gunicorn kills, longer outages); `make test` at a reduced size. The stack and
its timings are in tests/fault_helpers.py.

For every fault: /health is 200 before it; the fault is injected while three
load threads toggle upvotes, comment, create projects and read through the
API; /health is polled all along. Recovery is the time from the end of the
fault (the kill itself, or the stopped service back) until /health answers
200 again and no view has a pending request older than that moment. Then the
load pauses and, with the queue idle:

* no refresh log row is left in_progress, no queue row stuck;
* after one more refresh of every view (through the engine), every view
  equals its defining query run now (EXCEPT ALL, both ways);
* a report-only reconciliation finds no counter (or Redis set) off the truth;
* every write the load saw committed is in Postgres, in the views, and in
  what the user reads back; none lost;
* no two refreshes of one view overlapped in mv_refresh_log (whole run), and
  no sweep refresh started sooner than its view's debounce rules allow;
* /health named the fault while it lasted (for the faults it can see: a
  service down, a view stale or failing) and answered 200 after.

The table (one row per kind of fault) is printed at the end of the session by
tests/conftest.py; its last line is ``faults: N survived, L lost, D overlapping``.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest.register_assert_rewrite("fault_helpers")
from fault_helpers import (  # noqa: E402
    FULL,
    NOTES,
    RESULTS,
    SLOW_SECONDS,
    STALE_AFTER,
    FaultResult,
    FaultStack,
    HealthPoller,
    Load,
    early_refreshes,
    fault_stack,
    fault_table,
    load_projects,
    load_users,
    lost_writes,
    now,
    overlapping_refreshes,
    reconciliation_found,
    refresh_every_view,
    stuck_rows,
    view_differences,
    wait_quiescent,
    wait_until,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(5400 if FULL else 1200)]

SEED = int(os.environ.get("FAULTS_SEED") or time.time())
WORKER_KILLS = 20 if FULL else 3
GUNICORN_KILLS = 3 if FULL else 1
OUTAGE = 8.0 if FULL else 4.0  # seconds a stopped service stays away
TWO_BEATS_FOR = 30.0 if FULL else 5.0


@pytest.fixture(scope="module")
def stack(work_dir: Path) -> Iterator[FaultStack]:
    with fault_stack(work_dir / "faults") as s:
        yield s


@pytest.fixture(scope="module")
def health(stack: FaultStack) -> Iterator[HealthPoller]:
    assert stack.api is not None
    poller = HealthPoller(stack.api.url("/health")).start()
    yield poller
    poller.stop()


@pytest.fixture(scope="module")
def load(stack: FaultStack, health: HealthPoller) -> Iterator[Load]:
    assert stack.api is not None
    print(f"\nfault suite: size {'full' if FULL else 'reduced'}, FAULTS_SEED={SEED}")
    lg = Load(stack.api.base, load_users(stack), load_projects(stack), seed=SEED).start()
    yield lg
    lg.stop()


class Harness:
    """Runs one fault: baseline, injection, recovery, checks; records a FaultResult."""

    def __init__(self, stack: FaultStack, load: Load, health: HealthPoller) -> None:
        self.stack, self.load, self.health = stack, load, health
        self.reported_lost: set[str] = set()

    def baseline(self) -> None:
        t = now()
        wait_until(lambda: self.health.healthy_since(t), 120, interval=0.2, what="/health 200 before the fault")

    def caught_up(self, t: float) -> bool:
        """No view has a pending request older than t, and no live refresh began before t."""
        return not self.stack.scalar(
            "SELECT count(*) FROM mv_refresh_queue WHERE enabled AND refresh_requested_at < to_timestamp(:t)", t=t)

    def run(self, name: str, inject: Callable[[FaultResult], float], *, expect: str | None,
            after: Callable[[FaultResult], None] | None = None) -> FaultResult:
        """``inject`` performs the fault and returns when it ended; ``expect`` names the
        /health check that must report it (None: a fault /health is not meant to see)."""
        self.baseline()
        mark = int(self.stack.scalar("SELECT coalesce(max(id), 0) FROM mv_refresh_log"))
        result = FaultResult(name, injected=now(), ended=0.0)
        result.ended = inject(result)
        try:
            # /health caches its answer for 1 s: count only samples that started after that.
            wait_until(lambda: self.health.healthy_since(result.ended + 1.1) and self.caught_up(result.ended),
                       120, interval=0.2, what=f"recovery from {name}")
            result.recovered = now()
        except AssertionError as exc:
            result.problems.append(str(exc))
        ops = self.load.ops_between(result.injected, result.recovered or now())
        result.requests, result.failed_requests = len(ops), sum(op.failed for op in ops)
        during = [s for s in self.health.between(result.injected, result.recovered or now()) if s.code != 200]
        reported = sorted({f"{s.code} {k}" for s in during for k in s.bad} | {f"{s.code} {s.status}" for s in during
                                                                             if not s.bad})
        result.health_seen = ", ".join(reported) or "200 throughout"
        if expect is not None and not any(expect in s.bad for s in during):
            result.problems.append(f"/health never reported {expect!r} during the fault (saw: {result.health_seen})")
        if after is not None:
            after(result)
        try:
            self.verify(result, mark)
        except AssertionError as exc:  # a check that could not even run is a fault not survived
            result.problems.append(f"checks could not complete: {exc}")
        finally:
            RESULTS.append(result)
        return result

    def verify(self, result: FaultResult, mark: int) -> None:
        s = self.stack
        self.load.pause()
        try:
            # A process that died by itself (not one the suite killed) did not survive the
            # fault; start it again, as a supervisor would, so the next fault starts whole.
            dead = [node for node, proc in s.workers.items() if not proc.alive()]
            dead_beats = [beat for beat in s.beats if not beat.alive()]
            if dead or dead_beats:
                result.problems.append(f"processes exited: {dead + [b.name for b in dead_beats]}:\n{s.logs(30)}")
                for node in dead:
                    s.restart_worker(node)
                for beat in dead_beats:
                    s.beats.remove(beat)
                    s.start_beat(beat.name)
            for node in s.workers:
                s.wait_worker(node)
            wait_quiescent(s)
            # Nothing pending: every committed write must already be in its views.
            stale = view_differences(s, skip_lagging=True)
            if stale:
                result.problems.append(f"views differ from their definition with nothing pending: {stale}")
            refresh_every_view(s)
            diffs = view_differences(s)
            if diffs:
                result.problems.append(f"views differ from their definition after one more refresh: {diffs}")
            found, lines = reconciliation_found(s)
            if found:
                result.problems.append(f"reconciliation found {found} discrepancies:\n{lines}")
            stuck = stuck_rows(s)
            if stuck:
                result.problems.append(f"refresh log rows stuck in_progress: {stuck}")
            lost = [line for line in lost_writes(s, self.load) if line not in self.reported_lost]
            self.reported_lost.update(lost)
            result.lost = len(lost)
            if lost:
                result.problems.append(f"{len(lost)} committed writes lost: {lost[:10]}")
            overlaps = overlapping_refreshes(s)
            result.overlapping = len(overlaps)
            if overlaps:
                result.problems.append(f"overlapping refreshes of one view: {overlaps[:10]}")
            early = early_refreshes(s, mark)
            result.duplicates = len(early)
            if early:
                shown = [f"{r.view_name} #{r.id} {(r.refresh_started_at - r.prev_start).total_seconds():.2f} s after "
                         f"the previous" for r in early[:10]]
                result.problems.append(f"{len(early)} refreshes sooner than the debounce rules allow: {shown}")
        finally:
            self.load.resume()


@pytest.fixture(scope="module")
def harness(stack: FaultStack, load: Load, health: HealthPoller) -> Harness:
    return Harness(stack, load, health)


def survived(result: FaultResult, stack: FaultStack) -> None:
    assert result.survived, "\n".join(result.problems) + "\n" + stack.logs(20)


# ---------------------------------------------------------------------------
# 1. A refresh worker SIGKILLed mid-refresh, repeatedly
# ---------------------------------------------------------------------------


def test_refresh_worker_killed_mid_refresh_repeatedly(harness: Harness, stack: FaultStack) -> None:
    """Odd kills take the whole worker (parent and pool, like a machine dying; a
    supervisor starts it again), even kills only the pool child running the refresh
    (Celery replaces it). The killed refresh's lock outlives it by up to one TTL:
    its view is stale meanwhile, which /health reports."""
    rng = random.Random(SEED)
    mid_refresh = 0
    for i in range(WORKER_KILLS):
        whole = i % 2 == 0
        victim: dict[str, object] = {}

        def inject(result: FaultResult, whole: bool = whole, victim: dict = victim) -> float:
            time.sleep(rng.uniform(0.0, 1.5))
            # Most refreshes of the demo views take tens of milliseconds: aim at the slow
            # view most of the time so that the kill lands inside a refresh.
            views = ["mv_fault_slow"] if rng.random() < 0.7 else stack.views()
            row = wait_until(lambda: stack.rows(
                "SELECT id, view_name, worker FROM mv_refresh_log WHERE status = 'in_progress' "
                "AND worker LIKE 'refresh@fault-%' AND view_name = ANY(:v) ORDER BY id DESC LIMIT 1", v=views),
                60, interval=0.02, what="a refresh to kill")[0]
            time.sleep(rng.uniform(0.0, 0.3))  # a random moment, inside the refresh or just after it
            node, pid = row.worker.split(" pid ")
            pids = stack.worker_children(node) if whole else [int(pid)]
            victim.update(first_id=row.id, workers=[f"{node} pid {p}" for p in pids])
            if whole:
                stack.workers[node].kill(signal.SIGKILL)
                killed = now()
                stack.restart_worker(node)
            else:
                assert stack.worker_child_pid_ok(node, int(pid)), (node, pid)
                os.kill(int(pid), signal.SIGKILL)
                killed = now()
            result.note = f"{'worker' if whole else 'pool child'} of {node} during {row.view_name}"
            return killed

        def after(result: FaultResult, victim: dict = victim) -> None:
            nonlocal mid_refresh
            # The refreshes the kill interrupted: the killed processes' rows since the target row
            # (not those of the worker started again under the same name).
            statuses = [r[0] for r in stack.rows(
                "SELECT status FROM mv_refresh_log WHERE id >= :i AND worker = ANY(:w)",
                i=victim["first_id"], w=victim["workers"])]
            if "in_progress" in statuses:
                result.problems.append(f"a refresh of the killed {victim['workers']} is still in_progress")
            if "abandoned" in statuses:
                mid_refresh += 1
            else:
                # Killed between refreshes: no view waits for a dead lock, nothing for /health to see.
                result.problems = [p for p in result.problems if "/health never reported" not in p]

        result = harness.run("refresh worker SIGKILL mid-refresh", inject, expect="materialized_views", after=after)
        survived(result, stack)
    NOTES.append(f"worker kills that interrupted a refresh (its log row abandoned): {mid_refresh} of {WORKER_KILLS}")
    # The kills did land inside refreshes (not all between them).
    assert mid_refresh >= max(1, WORKER_KILLS // 2), mid_refresh


# ---------------------------------------------------------------------------
# 2. Beat killed; two Beats at once
# ---------------------------------------------------------------------------


def test_beat_killed_then_restarted(harness: Harness, stack: FaultStack) -> None:
    def inject(result: FaultResult) -> float:
        killed = now()
        beat = stack.beats.pop()
        beat.kill(signal.SIGKILL)
        # No sweeps: pending requests age past STALE_AFTER. Stay down until /health
        # has said so (or a deadline): a fixed OUTAGE of STALE_AFTER seconds could end
        # just before the first request old enough, while already-queued refreshes ran.
        deadline = time.monotonic() + OUTAGE + STALE_AFTER + 20
        time.sleep(OUTAGE)
        while time.monotonic() < deadline and not any(
                "materialized_views" in s.bad for s in harness.health.between(killed, now())):
            time.sleep(0.2)
        stack.start_beat("beat")
        return now()

    survived(harness.run("Beat SIGKILL (down, then restarted)", inject, expect="materialized_views"), stack)


def test_two_beats_at_once_add_no_refresh_and_no_second_reconciliation(harness: Harness, stack: FaultStack) -> None:
    """celery #2856: two Beats send every entry twice. Refreshes stay within the
    debounce rules (checked for every fault) and two reconciliations sent at the
    same moment, as two Beats would at 03:00, never run at the same time."""
    runs_before = int(stack.scalar("SELECT coalesce(max(id), 0) FROM reconciliation_runs"))
    outcomes: list[str] = []

    def inject(result: FaultResult) -> float:
        second = stack.start_beat("beat-2")
        sent = [stack.app.send_task("tasks.reconcile", kwargs={"auto_fix": False}) for _ in range(2)]
        for r in sent:
            outcomes.append(r.get(timeout=120)["status"])
        time.sleep(TWO_BEATS_FOR)
        second.stop()
        stack.beats.remove(second)
        result.note = f"reconciliations: {outcomes}"
        return now()

    def after(result: FaultResult) -> None:
        overlapping = stack.rows(
            "SELECT a.id, b.id FROM reconciliation_runs a JOIN reconciliation_runs b ON b.id > a.id "
            "WHERE a.id > :m AND b.id > :m AND a.started_at < coalesce(b.finished_at, clock_timestamp()) "
            "AND b.started_at < coalesce(a.finished_at, clock_timestamp())", m=runs_before)
        if overlapping:
            result.problems.append(f"reconciliation runs overlapped: {overlapping}")
        if sorted(outcomes) not in (["completed", "refused"], ["completed", "completed"]):
            result.problems.append(f"unexpected reconciliation outcomes {outcomes}")

    survived(harness.run("two Beats at once", inject, expect=None, after=after), stack)


# ---------------------------------------------------------------------------
# 3. Redis (cache and locks) restarted empty; Redis unreachable
# ---------------------------------------------------------------------------


def test_redis_restarted_empty(harness: Harness, stack: FaultStack) -> None:
    def inject(result: FaultResult) -> float:
        stack.cache_redis.stop()  # nothing on disk: locks, queued markers, user sets gone
        time.sleep(3.0)
        stack.cache_redis.start()
        return now()

    survived(harness.run("Redis restarted empty", inject, expect="redis"), stack)


def test_redis_unreachable_for_a_while(harness: Harness, stack: FaultStack) -> None:
    """SIGSTOP: connections hang instead of being refused, and the data survives,
    so a user's set missing a change made meanwhile would stay wrong."""
    def inject(result: FaultResult) -> float:
        pid = stack.redis_pid(stack.cache_redis)
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(OUTAGE)
        finally:
            os.kill(pid, signal.SIGCONT)
        return now()

    survived(harness.run("Redis unreachable (SIGSTOP)", inject, expect="redis"), stack)


# ---------------------------------------------------------------------------
# 4. Postgres restarted; connections killed; the broker unavailable
# ---------------------------------------------------------------------------


def test_postgres_restarted_fast(harness: Harness, stack: FaultStack) -> None:
    def inject(result: FaultResult) -> float:
        stack.pg.stop("fast")
        time.sleep(3.0)
        stack.pg.start()
        return now()

    survived(harness.run("Postgres restart (fast shutdown)", inject, expect="database"), stack)


def test_postgres_connections_terminated(harness: Harness, stack: FaultStack) -> None:
    """Every client backend of the database terminated, every 0.3 s for a few
    seconds. Pools replace dead connections (pre-ping; API reads retry once), so
    /health is not meant to see it; the requests caught mid-flight are counted."""
    def inject(result: FaultResult) -> float:
        killed = 0
        deadline = time.monotonic() + OUTAGE
        while time.monotonic() < deadline:
            killed += int(stack.scalar(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"))
            time.sleep(0.3)
        result.note = f"{killed} backends terminated"
        return now()

    survived(harness.run("Postgres connections terminated", inject, expect=None), stack)


def test_broker_unavailable(harness: Harness, stack: FaultStack) -> None:
    """The broker Redis stopped and started empty: queued and unacknowledged
    messages are lost; requests live in Postgres, so the sweep re-enqueues.
    Stopped while a refresh runs (its message unacknowledged): that used to
    kill the worker (tasks/consumer.py)."""
    def inject(result: FaultResult) -> float:
        wait_until(lambda: stack.rows("SELECT 1 FROM mv_refresh_log WHERE status = 'in_progress'"), 60,
                   interval=0.02, what="a refresh running")
        stack.broker_redis.stop()
        time.sleep(OUTAGE)
        stack.broker_redis.start()
        return now()

    survived(harness.run("broker unavailable (stopped, back empty)", inject, expect="broker"), stack)


# ---------------------------------------------------------------------------
# 5. A refresh over its time limit; a view whose SQL fails
# ---------------------------------------------------------------------------


def test_refresh_over_its_time_limit(harness: Harness, stack: FaultStack) -> None:
    def inject(result: FaultResult) -> float:
        mark = int(stack.scalar("SELECT coalesce(max(id), 0) FROM mv_refresh_log"))
        t = now()
        stack.set_flag("slow", seconds=60)  # far past the 3 s statement budget
        try:
            wait_until(lambda: stack.scalar(
                "SELECT error FROM mv_refresh_log WHERE id > :m AND view_name = 'mv_fault_slow' "
                "AND status = 'failed' ORDER BY id LIMIT 1", m=mark), 60, what="the slow refresh to time out")
            wait_until(lambda: any("materialized_views" in s.bad for s in harness.health.between(t, now())), 20,
                       what="/health to report the failing view")
            result.note = stack.scalar("SELECT error FROM mv_refresh_log WHERE id > :m AND view_name = 'mv_fault_slow' "
                                       "AND status = 'failed' ORDER BY id LIMIT 1", m=mark)[:80]
        finally:
            stack.set_flag("slow", seconds=SLOW_SECONDS)
        return now()

    survived(harness.run("refresh over its time limit", inject, expect="materialized_views"), stack)


def test_view_whose_sql_fails(harness: Harness, stack: FaultStack) -> None:
    def inject(result: FaultResult) -> float:
        mark = int(stack.scalar("SELECT coalesce(max(id), 0) FROM mv_refresh_log"))
        t = now()
        stack.set_flag("fail", enabled=True)
        try:
            wait_until(lambda: stack.scalar(
                "SELECT count(*) FROM mv_refresh_log WHERE id > :m AND view_name = 'mv_fault_fail' "
                "AND status = 'failed'", m=mark), 60, what="the view's refresh to fail")
            wait_until(lambda: any("materialized_views" in s.bad for s in harness.health.between(t, now())), 20,
                       what="/health to report the failing view")
        finally:
            stack.set_flag("fail", enabled=False)
        return now()

    survived(harness.run("view whose SQL fails", inject, expect="materialized_views"), stack)


# ---------------------------------------------------------------------------
# 6. A gunicorn worker killed under load
# ---------------------------------------------------------------------------


def test_gunicorn_worker_killed_under_load(harness: Harness, stack: FaultStack) -> None:
    """The master starts a new worker; requests in flight on the dead one fail
    (counted), none of them half-applied. /health is served by the other worker."""
    for _ in range(GUNICORN_KILLS):
        def inject(result: FaultResult) -> float:
            before = stack.gunicorn_workers()
            assert len(before) == 2, before
            os.kill(random.Random(SEED).choice(before), signal.SIGKILL)
            killed = now()
            wait_until(lambda: len(stack.gunicorn_workers()) == 2 and stack.gunicorn_workers() != before, 30,
                       what="gunicorn to replace its worker")
            return killed

        survived(harness.run("gunicorn worker SIGKILL", inject, expect=None), stack)


# ---------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------


def test_fault_table_nothing_lost_nothing_overlapping(stack: FaultStack) -> None:
    table = fault_table(RESULTS)  # printed by tests/conftest.py at the end of the session
    assert RESULTS, "no fault ran"
    assert sum(r.lost for r in RESULTS) == 0, table
    assert not overlapping_refreshes(stack), table
