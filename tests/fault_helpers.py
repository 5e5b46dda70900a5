"""The fault suite's stack, load, health poller and checks (tests/test_faults.py).

The stack is the product as `make up` runs it, on servers the suite owns and
may break: a private Postgres cluster, a private Redis for the cache and the
locks, and a second private Redis as the Celery broker and result backend (so
"Redis restarted" and "broker unavailable" are separate faults), all started
with deploy/embedded.py; gunicorn (2 workers), two refresh workers
(``refresh@fault-a``, ``refresh@fault-b``), a default worker and Beat, each a
real process the suite can SIGKILL.

Timings are small so a fault and its recovery fit in seconds: lock TTL 8 s,
sweep 0.5 s, every view debounced 1 s with a 2 s max wait, a view is stale
after 4 s pending (so a view held by a dead worker's lock shows in /health),
refresh time limit 12 s (statement budget 3 s).

The database is the demo data plus two views of the suite's own, fed by the
tables the load writes: ``mv_fault_slow`` (upvotes per project, with a
pg_sleep read from ``fault_flags``: the refresh to kill or time out) and
``mv_fault_fail`` (comments per project, dividing by zero when its flag says so).
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kombu.exceptions
import redis as redis_lib
import sqlalchemy as sa
from api_helpers import SECRET, Gunicorn, bearer, http
from celery import Celery
from engine_helpers import CeleryProcess, wait_until

from api.auth import issue_token
from deploy.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from schema.db import make_engine, raw_connection
from schema.migrate import migrate
from schema.settings import Settings
from tasks.celery import create_app
from tasks.reconciliation import ReconcileOptions, run_reconciliation

FULL = os.environ.get("FAULTS_FULL", "") not in ("", "0")
SIZE = "full" if FULL else "reduced"

LOCK_TTL = 8.0
SWEEP_INTERVAL = 0.5
STALE_AFTER = 4
REFRESH_TIME_LIMIT = 12  # soft limit 6 s, statement budget 3 s (tasks/celery.py, tasks/refresh.py)
DEBOUNCE = 1.0
MAX_WAIT = 2.0
SLOW_SECONDS = 0.5
# Slack on the debounce rule: a request row is timestamped when inserted and
# visible when its transaction commits, a few milliseconds later.
DEBOUNCE_SLACK = 0.25

REFRESH_NODES = ("refresh@fault-a", "refresh@fault-b")
DEFAULT_NODE = "default@fault"

FAULT_SCHEMA_SQL = f"""
CREATE TABLE fault_flags (name text PRIMARY KEY, enabled boolean NOT NULL DEFAULT false,
                          seconds float8 NOT NULL DEFAULT 0);
INSERT INTO fault_flags VALUES ('fail', false, 0), ('slow', true, {SLOW_SECONDS});
-- pg_sleep runs once per refresh (an uncorrelated one-row subquery).
CREATE MATERIALIZED VIEW mv_fault_slow AS
    SELECT u.project_id, count(*) AS upvotes
    FROM project_upvotes u
    CROSS JOIN (SELECT pg_sleep((SELECT seconds FROM fault_flags WHERE name = 'slow'))) s
    GROUP BY u.project_id;
CREATE UNIQUE INDEX ON mv_fault_slow (project_id);
CREATE MATERIALIZED VIEW mv_fault_fail AS
    SELECT c.project_id,
           count(*) / (CASE WHEN (SELECT enabled FROM fault_flags WHERE name = 'fail') THEN 0 ELSE 1 END) AS comments
    FROM project_comments c
    GROUP BY c.project_id;
CREATE UNIQUE INDEX ON mv_fault_fail (project_id);
INSERT INTO mv_registry (view_name, debounce_seconds, max_wait_seconds, refresh_order, description) VALUES
    ('mv_fault_slow', 1, 2, 900, 'fault suite: a slow refresh'),
    ('mv_fault_fail', 1, 2, 901, 'fault suite: a refresh that fails on demand');
INSERT INTO mv_dependencies (view_name, table_name) VALUES
    ('mv_fault_slow', 'project_upvotes'), ('mv_fault_fail', 'project_comments');
SELECT mv_install_request_trigger('project_upvotes');
SELECT mv_install_request_trigger('project_comments');
UPDATE mv_registry SET debounce_seconds = {DEBOUNCE}, max_wait_seconds = {MAX_WAIT};
-- Every view refreshed once, logged: a known generation for the API.
INSERT INTO mv_refresh_requests (view_name) SELECT view_name FROM mv_registry;
SELECT * FROM process_mv_refresh_queue();
"""


def now() -> float:
    return time.time()


# ---------------------------------------------------------------------------
# The stack
# ---------------------------------------------------------------------------


@dataclass
class FaultStack:
    work: Path
    pg: EmbeddedPostgres
    cache_redis: EmbeddedRedis
    broker_redis: EmbeddedRedis
    database_url: str
    env: dict[str, str]
    engine: sa.engine.Engine
    redis: redis_lib.Redis
    app: Celery
    api: Gunicorn | None = None
    workers: dict[str, CeleryProcess] = field(default_factory=dict)
    beats: list[CeleryProcess] = field(default_factory=list)
    first_log_id: int = 0

    @classmethod
    def create(cls, work: Path) -> FaultStack:
        work.mkdir(parents=True, exist_ok=True)
        work.chmod(0o755)
        pg = EmbeddedPostgres(work / "pg", free_port(), settings={
            "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off", "shared_buffers": "64MB"})
        cache_redis = EmbeddedRedis(work / "redis-cache", free_port())
        broker_redis = EmbeddedRedis(work / "redis-broker", free_port())
        pg.start()
        cache_redis.start()
        broker_redis.start()
        with raw_connection(pg.admin_url(), autocommit=True) as conn, conn.cursor() as cur:
            cur.execute('CREATE DATABASE "faults"')
        url = pg.admin_url("faults")
        migrate(url, out=lambda line: None)
        from schema.seed import seed

        seed(url, "demo", seed=42, out=lambda line: None)
        with raw_connection(url) as conn, conn.cursor() as cur:
            cur.execute(FAULT_SCHEMA_SQL)
            conn.commit()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DATABASE_", "REDIS_"))}
        env.update({
            "DATABASE_URL": url,
            "REDIS_URL": cache_redis.url(0),
            "CELERY_BROKER_URL": broker_redis.url(0),
            "CELERY_RESULT_BACKEND": broker_redis.url(1),
            "APP_ENV": "test",
            "JWT_SECRET": SECRET,
            "REFRESH_LOCK_TTL": str(LOCK_TTL),
            "SWEEP_INTERVAL": str(SWEEP_INTERVAL),
            "REFRESH_RETRY_BACKOFF": "0.5",
            "REFRESH_MAX_RETRIES": "2",
            "REFRESH_TIME_LIMIT": str(REFRESH_TIME_LIMIT),
            "STALE_AFTER_SECONDS": str(STALE_AFTER),
            "HEALTH_TIMEOUT": "1.0",
            "RECONCILIATION_JOB_ENABLED": "false",
            "PYTHONUNBUFFERED": "1",
        })
        settings = Settings.from_env(env)
        stack = cls(
            work=work, pg=pg, cache_redis=cache_redis, broker_redis=broker_redis, database_url=url, env=env,
            engine=make_engine(url, pool_size=4, application_name="fault-suite"),
            redis=redis_lib.Redis.from_url(cache_redis.url(0), decode_responses=True, socket_timeout=5),
            app=create_app(settings, main="fault-suite"),
        )
        stack.first_log_id = int(stack.scalar("SELECT coalesce(max(id), 0) FROM mv_refresh_log"))
        return stack

    # -- processes -------------------------------------------------------------

    def start_processes(self) -> None:
        for node in REFRESH_NODES:
            self.start_worker(node, "refresh")
        self.start_worker(DEFAULT_NODE, "default,maintenance")
        self.start_beat("beat")
        api_env = {k: self.env[k] for k in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "STALE_AFTER_SECONDS",
                                            "HEALTH_TIMEOUT", "REFRESH_LOCK_TTL", "SWEEP_INTERVAL",
                                            "RECONCILIATION_JOB_ENABLED")}
        self.api = Gunicorn(self.database_url, self.env["REDIS_URL"], workers=2, threads=4,
                            extra_env=api_env).start(self.work)
        for node in self.workers:
            self.wait_worker(node)

    def start_worker(self, node: str, queues: str) -> CeleryProcess:
        argv = ["worker", "-Q", queues, "-n", node, "-c", "2", "--without-gossip", "--without-mingle", "-l", "INFO"]
        proc = CeleryProcess(name=node, argv=argv, env=self.env, log_path=self.work / "logs" / f"{node}.log").start()
        self.workers[node] = proc
        return proc

    def restart_worker(self, node: str) -> CeleryProcess:
        """What a supervisor does after a worker died: start it again (not waiting for it)."""
        old = self.workers[node]
        old.stop()
        queues = old.argv[old.argv.index("-Q") + 1]
        return self.start_worker(node, queues)

    def wait_worker(self, node: str, timeout: float = 60.0) -> None:
        proc = self.workers[node]

        def answered() -> bool:
            if not proc.alive():
                raise AssertionError(f"worker {node} exited:\n{proc.log_tail()}")
            try:
                replies = self.app.control.ping(destination=[node], timeout=0.5) or []
            except (OSError, redis_lib.RedisError, kombu.exceptions.OperationalError):
                return False  # this client's broker connection died with the broker; it reconnects
            return any(node in reply for reply in replies)

        wait_until(answered, timeout, interval=0.2, what=f"worker {node} to answer ping")

    def start_beat(self, name: str) -> CeleryProcess:
        argv = ["beat", "-l", "INFO", "-s", str(self.work / f"{name}-schedule"), "--pidfile="]
        beat = CeleryProcess(name=name, argv=argv, env=self.env, log_path=self.work / "logs" / f"{name}.log").start()
        self.beats.append(beat)
        return beat

    def worker_child_pid_ok(self, node: str, pid: int) -> bool:
        """The pid is a pool child of our worker process (never signal anything else)."""
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        return self.workers[node].alive() and ppid == self.workers[node].pid

    def gunicorn_workers(self) -> list[int]:
        assert self.api is not None and self.api.proc is not None
        return children_of(self.api.proc.pid)

    def worker_children(self, node: str) -> list[int]:
        """The pool processes of our worker ``node``."""
        return children_of(self.workers[node].pid)

    def redis_pid(self, server: EmbeddedRedis) -> int:
        pid = server.pid()
        assert pid is not None, f"redis on {server.port} is not running"
        return pid

    def stop(self) -> None:
        procs = [*self.beats, *self.workers.values()]
        for proc in procs:  # all at once: each takes a moment to shut down
            proc.kill(signal.SIGTERM)
        for proc in procs:
            proc.stop()
        if self.api is not None:
            self.api.stop()
        self.engine.dispose()
        self.redis.close()
        self.app.close()
        for server in (self.cache_redis, self.broker_redis):
            pid = server.pid()
            if pid is not None:
                os.kill(pid, signal.SIGCONT)  # a stopped (SIGSTOP) server cannot take SIGTERM
            server.stop()
        self.pg.destroy()

    def logs(self, lines: int = 30) -> str:
        procs = [*self.workers.values(), *self.beats]
        parts = [f"--- {p.log_path.name}\n{p.log_tail(lines)}" for p in procs]
        if self.api is not None:
            parts.append(f"--- gunicorn\n{self.api.log()[-3000:]}")
        return "\n".join(parts)

    # -- database --------------------------------------------------------------

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(sa.text(sql), params).scalar()

    def rows(self, sql: str, **params: Any) -> list[sa.Row]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.text(sql), params))

    def execute(self, sql: str, **params: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.text(sql), params)

    def views(self) -> list[str]:
        return [r[0] for r in self.rows("SELECT view_name FROM mv_registry WHERE enabled ORDER BY refresh_order")]

    def set_flag(self, name: str, *, enabled: bool | None = None, seconds: float | None = None) -> None:
        if enabled is not None:
            self.execute("UPDATE fault_flags SET enabled = :e WHERE name = :n", e=enabled, n=name)
        if seconds is not None:
            self.execute("UPDATE fault_flags SET seconds = :s WHERE name = :n", s=seconds, n=name)


def children_of(parent: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            children.append(int(stat.parent.name))
    return sorted(children)


@contextmanager
def fault_stack(work: Path) -> Iterator[FaultStack]:
    stack = FaultStack.create(work)
    try:
        stack.start_processes()
        yield stack
    except BaseException:
        print(stack.logs())
        raise
    finally:
        stack.stop()


# ---------------------------------------------------------------------------
# /health, polled all the time
# ---------------------------------------------------------------------------


@dataclass
class HealthSample:
    started: float
    ended: float
    code: int  # 0: no answer
    status: str
    bad: dict[str, str]  # check name -> its status or error, for checks that are not healthy


class HealthPoller:
    def __init__(self, url: str, interval: float = 0.25) -> None:
        self.url = url
        self.interval = interval
        self.samples: list[HealthSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health-poller", daemon=True)

    def start(self) -> HealthPoller:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = now()
            try:
                r = http("GET", self.url, timeout=5)
                body = r.body if isinstance(r.body, dict) else {}
                bad = {}
                for name, check in (body.get("checks") or {}).items():
                    if isinstance(check, dict) and check.get("status") != "healthy":
                        detail = check.get("error") or ",".join(check.get("failing_views") or []) or ""
                        bad[name] = f"{check.get('status')}{': ' + str(detail)[:80] if detail else ''}"
                sample = HealthSample(started, now(), r.status, str(body.get("status")), bad)
            except OSError as exc:
                sample = HealthSample(started, now(), 0, f"no answer ({type(exc).__name__})", {})
            self.samples.append(sample)
            self._stop.wait(self.interval)

    def between(self, start: float, end: float) -> list[HealthSample]:
        return [s for s in list(self.samples) if start <= s.started <= end]

    def healthy_since(self, t: float) -> HealthSample | None:
        return next((s for s in list(self.samples) if s.started >= t and s.code == 200), None)


# ---------------------------------------------------------------------------
# The load: upvote toggles, comments, project creates and reads through the API
# ---------------------------------------------------------------------------


@dataclass
class Op:
    kind: str
    started: float
    ended: float
    status: int  # HTTP status; 0 when no answer came (connection refused/reset, timeout)

    @property
    def failed(self) -> bool:
        return self.status == 0 or self.status >= 500


WRITE_KINDS = ("toggle", "comment", "create")
OP_WEIGHTS = {"toggle": 30, "comment": 8, "create": 4, "feed": 12, "feed_signed_in": 8, "project": 12,
              "leaderboard": 8, "search": 8, "dashboard": 6, "chains": 4}


class Load:
    """Threads issuing a mixed write and read load, recording what committed.

    Each user belongs to one thread, so one user's toggles are sequential and
    the last answered toggle of a (user, project) pair is its true state. A
    write with no answer or a 5xx may or may not have committed: its pair is
    "unknown" until a later answered toggle settles it (a comment or project
    with no answer is simply not checked).
    """

    def __init__(self, base_url: str, users: list[tuple[str, str]], projects: list[str], *, threads: int = 3,
                 pause: float = 0.03, seed: int = 0) -> None:
        self.base = base_url
        self.users = users  # (user_id, token)
        self.projects = list(projects)
        self.threads = threads
        self.pause_s = pause
        self.rng = random.Random(seed)
        self.ops: list[Op] = []
        self.upvoted: dict[tuple[str, str], bool | None] = {}
        self.projects_created: set[str] = set()
        self.comments: dict[str, str] = {}  # comment id -> project id
        self.unknown_writes = 0
        self._lock = threading.Lock()
        self._running = threading.Event()
        self._stop = threading.Event()
        self._busy = 0
        self._idle = threading.Condition(self._lock)
        self._threads = [threading.Thread(target=self._run, args=(i,), name=f"load-{i}", daemon=True)
                         for i in range(threads)]

    def start(self) -> Load:
        self._running.set()
        for t in self._threads:
            t.start()
        return self

    def pause(self) -> None:
        """Stop issuing requests and wait for the ones in flight."""
        self._running.clear()
        with self._idle:
            self._idle.wait_for(lambda: self._busy == 0, timeout=30)

    def resume(self) -> None:
        self._running.set()

    def stop(self) -> None:
        self._stop.set()
        self._running.set()
        for t in self._threads:
            t.join(timeout=30)

    def _run(self, index: int) -> None:
        rng = random.Random(self.rng.random() + index)
        mine = self.users[index::self.threads]
        kinds, weights = zip(*OP_WEIGHTS.items(), strict=True)
        while not self._stop.is_set():
            self._running.wait()
            if self._stop.is_set():
                return
            with self._lock:
                if not self._running.is_set():
                    continue
                self._busy += 1
            try:
                kind = rng.choices(kinds, weights)[0]
                user_id, token = rng.choice(mine)
                self._one(rng, kind, user_id, token)
            finally:
                with self._idle:
                    self._busy -= 1
                    self._idle.notify_all()
            time.sleep(self.pause_s)

    def _one(self, rng: random.Random, kind: str, user_id: str, token: str) -> None:
        with self._lock:
            project = rng.choice(self.projects)
        method, path, body, auth = "GET", "/api/projects", None, False
        if kind == "toggle":
            method, path, auth = "POST", f"/api/projects/{project}/upvote", True
        elif kind == "comment":
            method, path, auth = "POST", f"/api/projects/{project}/comments", True
            body = {"body": f"fault-suite comment {uuid.uuid4().hex[:8]}"}
        elif kind == "create":
            method, path, auth = "POST", "/api/projects", True
            body = {"title": f"Fault suite project {uuid.uuid4().hex[:8]}", "tags": ["faults"]}
        elif kind == "feed_signed_in":
            path, auth = "/api/projects?sort=newest", True
        elif kind == "project":
            path, auth = f"/api/projects/{project}", rng.random() < 0.5
        elif kind == "leaderboard":
            path = rng.choice(["/api/leaderboard/projects", "/api/leaderboard/builders"])
        elif kind == "search":
            path = "/api/search?q=" + rng.choice(["blockchain", "defi", "fault", "ai", "data"])
        elif kind == "dashboard":
            path, auth = "/api/dashboard", True
        elif kind == "chains":
            path = "/api/chains"
        started = now()
        try:
            r = http(method, self.base + path, headers=bearer(token) if auth else None, body=body, timeout=10)
            status, answer = r.status, r.body
        except OSError:
            status, answer = 0, None
        op = Op(kind, started, now(), status)
        with self._lock:
            self.ops.append(op)
            self._record(kind, user_id, project, status, answer)

    def _record(self, kind: str, user_id: str, project: str, status: int, answer: Any) -> None:
        answered = 200 <= status < 300 and isinstance(answer, dict)
        unknown = status == 0 or status >= 500
        if kind == "toggle":
            if answered:
                self.upvoted[(user_id, project)] = bool(answer["data"]["upvoted"])
            elif unknown:
                self.upvoted[(user_id, project)] = None
                self.unknown_writes += 1
        elif kind == "comment":
            if answered:
                self.comments[str(answer["data"]["id"])] = project
            elif unknown:
                self.unknown_writes += 1
        elif kind == "create":
            if answered:
                pid = str(answer["data"]["id"])
                self.projects_created.add(pid)
                self.projects.append(pid)
            elif unknown:
                self.unknown_writes += 1

    def ops_between(self, start: float, end: float) -> list[Op]:
        with self._lock:
            return [op for op in self.ops if start <= op.started <= end]


def load_users(stack: FaultStack, count: int = 24) -> list[tuple[str, str]]:
    rows = stack.rows("SELECT id::text, role FROM users WHERE NOT is_deleted ORDER BY username LIMIT :n", n=count)
    return [(r[0], issue_token(SECRET, r[0], role=r[1], admin=False, ttl=6 * 3600)) for r in rows]


def load_projects(stack: FaultStack, count: int = 40) -> list[str]:
    return [r[0] for r in stack.rows(
        "SELECT p.id::text FROM projects p JOIN users a ON a.id = p.user_id AND NOT a.is_deleted "
        "WHERE NOT p.is_deleted ORDER BY p.id LIMIT :n", n=count)]


# ---------------------------------------------------------------------------
# Checks after a fault
# ---------------------------------------------------------------------------


def wait_quiescent(stack: FaultStack, timeout: float = 60.0) -> None:
    """No pending request and no refresh running, for every enabled view.

    A queue row that stays in_progress past the deadline fails here, naming it."""
    def quiet() -> bool:
        return not stack.rows(
            "SELECT view_name FROM mv_refresh_queue WHERE enabled AND status IN ('pending', 'in_progress')")

    try:
        wait_until(quiet, timeout, interval=0.2, what="every view refreshed and idle")
    except AssertionError:
        stuck = stack.rows("SELECT view_name, status, pending_requests, last_status, last_error "
                           "FROM mv_refresh_queue WHERE status IN ('pending', 'in_progress')")
        raise AssertionError(f"queue not idle after {timeout:.0f} s: {stuck}") from None


def refresh_every_view(stack: FaultStack, timeout: float = 90.0) -> None:
    """One more refresh of every view, through the engine (manual refresh_view tasks)."""
    pending = set(stack.views())
    deadline = time.monotonic() + timeout
    while pending:
        sent = {v: stack.app.send_task("tasks.refresh_view", args=[v], kwargs={"manual": True}) for v in pending}
        for view, result in sent.items():
            left = max(1.0, deadline - time.monotonic())
            outcome = result.get(timeout=left, propagate=False)
            if isinstance(outcome, dict) and outcome.get("status") == "completed":
                pending.discard(view)
        if pending and time.monotonic() > deadline:
            raise AssertionError(f"views not refreshed: {sorted(pending)}")
        if pending:
            time.sleep(0.3)  # "locked": a sweep refresh of the view was finishing


# Columns a view keeps stale on purpose until its next refresh for another
# reason: 0030 leaves project_upvotes (and the other popularity-only tables) out
# of mv_search_index's dependencies, so votes alone do not re-index search.
LAGGING_BY_DESIGN = {"mv_search_index": ["popularity"]}


def view_differences(stack: FaultStack, *, skip_lagging: bool = False) -> dict[str, int]:
    """Rows that differ between each view and its defining query run now (EXCEPT ALL, both ways).

    ``skip_lagging``: leave out the LAGGING_BY_DESIGN columns (the check with
    nothing pending, before one more refresh). Names come from mv_registry and
    pg_attribute and are quoted by Postgres (format %I, quote_ident)."""
    out = {}
    for view in stack.views():
        sql = stack.scalar(
            # The definition runs once (a materialized CTE), compared both ways.
            "SELECT format('WITH d AS MATERIALIZED (%2$s) SELECT count(*) FROM ((SELECT %3$s FROM %1$I "
            "EXCEPT ALL SELECT %3$s FROM d) UNION ALL (SELECT %3$s FROM d EXCEPT ALL SELECT %3$s FROM %1$I)) x', "
            "r.view_name, "
            "rtrim(pg_get_viewdef(to_regclass(r.view_name)), ';'), "
            "(SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) FROM pg_attribute a "
            " WHERE a.attrelid = to_regclass(r.view_name) AND a.attnum > 0 AND NOT a.attisdropped "
            " AND a.attname <> ALL(CAST(:skip AS text[])))) "
            "FROM mv_registry r WHERE r.view_name = :v",
            v=view, skip=LAGGING_BY_DESIGN.get(view, []) if skip_lagging else [])
        out[view] = int(stack.scalar(sql))
    return {v: n for v, n in out.items() if n}


def reconciliation_found(stack: FaultStack) -> tuple[int, str]:
    """A report-only reconciliation run: discrepancies found (counters and Redis sets vs the base tables)."""
    lines: list[str] = []
    result = run_reconciliation(stack.engine, stack.redis, ReconcileOptions(auto_fix=False, source="cli"),
                                out=lines.append)
    assert result.status == "completed", (result.status, result.detail)
    return result.found, "\n".join(line for line in lines if line.startswith("FOUND"))[:2000]


def stuck_rows(stack: FaultStack) -> list[sa.Row]:
    return stack.rows("SELECT id, view_name, worker, refresh_started_at FROM mv_refresh_log "
                      "WHERE status = 'in_progress'")


def overlapping_refreshes(stack: FaultStack) -> list[sa.Row]:
    """Pairs of refreshes of one view whose [start, end] intervals overlap.

    Counted over every refresh that held the view (completed, failed, skipped);
    abandoned rows are left out because their end is when the sweep noticed
    the dead backend, not when it died."""
    return stack.rows(
        "SELECT a.view_name, a.id AS a_id, b.id AS b_id, a.status AS a_status, b.status AS b_status "
        "FROM mv_refresh_log a JOIN mv_refresh_log b ON b.view_name = a.view_name AND b.id > a.id "
        "WHERE a.id > :since AND b.id > :since "
        "AND a.status IN ('completed', 'failed', 'skipped') AND b.status IN ('completed', 'failed', 'skipped') "
        "AND a.refresh_started_at < b.refresh_completed_at AND b.refresh_started_at < a.refresh_completed_at",
        since=stack.first_log_id)


def early_refreshes(stack: FaultStack, since_id: int) -> list[sa.Row]:
    """Sweep refreshes that broke the debounce rules: started less than the view's
    debounce window after the start of its previous completed refresh.

    Why this is the rule: a sweep refresh runs only once the view is due, i.e.
    its pending requests have been quiet for the window or the oldest has
    waited max_wait (>= the window). Pending requests all came after the
    previous refresh's snapshot, so a due view's refresh starts at least one
    window after the previous one started. A refresh sooner than that was
    enqueued twice (two Beats without the queued marker, a redelivered message)."""
    return stack.rows(
        "WITH done AS (SELECT l.id, l.view_name, l.source, l.refresh_started_at, "
        "  lag(l.refresh_started_at) OVER (PARTITION BY l.view_name ORDER BY l.refresh_started_at) AS prev_start "
        "  FROM mv_refresh_log l WHERE l.status = 'completed' AND l.id > :first) "
        "SELECT d.id, d.view_name, d.refresh_started_at, d.prev_start FROM done d "
        "JOIN mv_registry r ON r.view_name = d.view_name "
        "WHERE d.id > :since AND d.source = 'sweep' AND d.prev_start IS NOT NULL "
        "AND d.refresh_started_at - d.prev_start < make_interval(secs => r.debounce_seconds - :slack)",
        first=stack.first_log_id, since=since_id, slack=DEBOUNCE_SLACK)


def lost_writes(stack: FaultStack, load: Load) -> list[str]:
    """Committed writes (answered 2xx) missing from Postgres, the views or the user's own reads."""
    lost: list[str] = []
    with load._lock:
        created = sorted(load.projects_created)
        comments = dict(load.comments)
        upvoted = {k: v for k, v in load.upvoted.items() if v is not None}
    if created:
        for table in ("projects", "mv_feed_projects", "mv_project_details"):
            # Table names from this constant tuple only.
            present = {r[0] for r in stack.rows(
                f"SELECT id::text FROM {table} WHERE id = ANY(CAST(:ids AS uuid[]))", ids=created)}
            lost += [f"project {p} missing from {table}" for p in created if p not in present]
    if comments:
        present = {r[0] for r in stack.rows(
            "SELECT id::text FROM project_comments WHERE id = ANY(CAST(:ids AS uuid[]))", ids=list(comments))}
        lost += [f"comment {c} missing from project_comments" for c in comments if c not in present]
        per_project = Counter(comments.values())
        counted = dict(stack.rows(
            "SELECT id::text, comment_count FROM mv_feed_projects WHERE id = ANY(CAST(:ids AS uuid[]))",
            ids=list(per_project)))
        lost += [f"project {p}: mv_feed_projects.comment_count {counted.get(p)} < {n} committed comments"
                 for p, n in per_project.items() if (counted.get(p) or 0) < n]
    if upvoted:
        users = sorted({u for u, _ in upvoted})
        rows = stack.rows("SELECT user_id::text, project_id::text FROM project_upvotes "
                          "WHERE user_id = ANY(CAST(:u AS uuid[]))", u=users)
        present = {(r[0], r[1]) for r in rows}
        lost += [f"upvote {u}/{p}: committed {'on' if want else 'off'}, Postgres has it "
                 f"{'on' if (u, p) in present else 'off'}" for (u, p), want in upvoted.items()
                 if ((u, p) in present) != want]
        # What the user reads back: the project page with their overlay (view + Redis set).
        tokens = dict(load.users)
        for (u, p), want in sorted(upvoted.items())[:12]:
            r = http("GET", f"{load.base}/api/projects/{p}", headers=bearer(tokens[u]), timeout=10)
            if r.status != 200 or r.body["data"]["user_has_upvoted"] != want:
                lost.append(f"upvote {u}/{p}: committed {want}, the user reads {r.status} "
                            f"{r.body['data'].get('user_has_upvoted') if r.status == 200 else r.body}")
    return lost


# ---------------------------------------------------------------------------
# One fault's record and the table
# ---------------------------------------------------------------------------


@dataclass
class FaultResult:
    fault: str
    injected: float
    ended: float
    recovered: float | None = None
    requests: int = 0
    failed_requests: int = 0
    lost: int = 0
    duplicates: int = 0
    overlapping: int = 0
    health_seen: str = ""
    problems: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def recovery_seconds(self) -> float | None:
        return None if self.recovered is None else max(0.0, self.recovered - self.ended)

    @property
    def survived(self) -> bool:
        return not self.problems


RESULTS: list[FaultResult] = []
NOTES: list[str] = []  # printed under the table


def fault_table(results: list[FaultResult]) -> str:
    """One row per kind of fault (repeats summed; recovery: median/max), then the totals line."""
    groups: dict[str, list[FaultResult]] = {}
    for r in results:
        groups.setdefault(r.fault, []).append(r)
    header = ("fault", "n", "recovery s (median/max)", "failed requests", "lost", "duplicate refreshes",
              "/health during the fault")
    rows = []
    for name, rs in groups.items():
        rec = [r.recovery_seconds for r in rs if r.recovery_seconds is not None]
        recovery = "not recovered" if len(rec) < len(rs) else (
            f"{rec[0]:.1f}" if len(rec) == 1 else f"{statistics.median(rec):.1f} / {max(rec):.1f}")
        seen = Counter(r.health_seen for r in rs)
        health = "; ".join(f"{k} x{v}" if len(rs) > 1 else k for k, v in seen.most_common())
        rows.append((name, str(len(rs)), recovery, f"{sum(r.failed_requests for r in rs)}/{sum(r.requests for r in rs)}",
                     str(sum(r.lost for r in rs)), str(sum(r.duplicates for r in rs)), health))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows), *NOTES]
    problems = [f"  {r.fault}: {p}" for r in results for p in r.problems]
    if problems:
        out += ["not survived:", *problems]
    survived = sum(r.survived for r in results)
    lost = sum(r.lost for r in results)
    overlapping = max((r.overlapping for r in results), default=0)
    out.append(f"faults: {survived} survived, {lost} lost, {overlapping} overlapping")
    return "\n".join(out)

