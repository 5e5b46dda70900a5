"""Real Celery worker and Beat processes for the refresh engine tests.

Workers are ``celery -A tasks worker`` subprocesses (STACK.md): each in its
own session so a test can SIGKILL the whole worker (parent and pool children,
like a machine dying), pointed at the session's private Postgres and Redis
through the environment, and ready once ``app.control.ping()`` hears them.

The test database adds small views of its own to the migrated schema
(``engine_schema_sql``): a fast pair, a slow one (pg_sleep, length set in a
flag table) and one that divides by zero when a flag says so, each fed by its
own table so one test's writes do not make another's views due.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis as redis_lib
import sqlalchemy as sa
from celery import Celery

from schema.db import make_engine, raw_connection
from schema.settings import Settings
from tasks.celery import create_app

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")

# Small numbers so crash recovery and debounce fit in seconds.
LOCK_TTL = 5.0
SWEEP_INTERVAL = 0.5
RETRY_BACKOFF = 0.5
MAX_RETRIES = 3

TEST_VIEWS = ("mv_test_groups", "mv_test_items", "mv_test_slow", "mv_test_fail")

ENGINE_SCHEMA_SQL = """
CREATE TABLE engine_items (id bigint PRIMARY KEY, grp int NOT NULL, val int NOT NULL);
CREATE TABLE engine_slow_items (id bigint PRIMARY KEY, val int NOT NULL);
CREATE TABLE engine_fail_items (id bigint PRIMARY KEY, val int NOT NULL);
-- Flags the views read: not a dependency of any view, so flipping one requests nothing.
CREATE TABLE engine_flags (name text PRIMARY KEY, enabled boolean NOT NULL DEFAULT false,
                           seconds float8 NOT NULL DEFAULT 0);
INSERT INTO engine_flags VALUES ('fail', false, 0), ('slow', true, 0);

CREATE MATERIALIZED VIEW mv_test_groups AS
    SELECT grp, count(*) AS n, sum(val) AS total FROM engine_items GROUP BY grp;
CREATE UNIQUE INDEX ON mv_test_groups (grp);
CREATE MATERIALIZED VIEW mv_test_items AS SELECT id, grp, val FROM engine_items;
CREATE UNIQUE INDEX ON mv_test_items (id);
-- pg_sleep runs once per refresh (an uncorrelated one-row subquery).
CREATE MATERIALIZED VIEW mv_test_slow AS
    SELECT i.id, i.val
    FROM engine_slow_items i
    CROSS JOIN (SELECT pg_sleep((SELECT seconds FROM engine_flags WHERE name = 'slow'))) s;
CREATE UNIQUE INDEX ON mv_test_slow (id);
CREATE MATERIALIZED VIEW mv_test_fail AS
    SELECT i.id,
           i.val / (CASE WHEN (SELECT enabled FROM engine_flags WHERE name = 'fail') THEN 0 ELSE 1 END) AS val
    FROM engine_fail_items i;
CREATE UNIQUE INDEX ON mv_test_fail (id);

INSERT INTO mv_registry (view_name, debounce_seconds, max_wait_seconds, refresh_order, description) VALUES
    ('mv_test_groups', 1.0, 3.0, 900, 'test: groups'),
    ('mv_test_items', 1.0, 3.0, 901, 'test: items'),
    ('mv_test_slow', 0.3, 3.0, 902, 'test: slow refresh'),
    ('mv_test_fail', 0.3, 3.0, 903, 'test: failing refresh');
INSERT INTO mv_dependencies (view_name, table_name) VALUES
    ('mv_test_groups', 'engine_items'), ('mv_test_items', 'engine_items'),
    ('mv_test_slow', 'engine_slow_items'), ('mv_test_fail', 'engine_fail_items');
SELECT mv_install_request_trigger('engine_items');
SELECT mv_install_request_trigger('engine_slow_items');
SELECT mv_install_request_trigger('engine_fail_items');
-- The migrated views refresh within seconds in tests.
UPDATE mv_registry SET debounce_seconds = 1.0, max_wait_seconds = 3.0 WHERE view_name NOT LIKE 'mv_test_%';
"""


def prepare_engine_database(url: str) -> None:
    """Add the test views to a migrated database."""
    with raw_connection(url) as conn, conn.cursor() as cur:
        cur.execute(ENGINE_SCHEMA_SQL)
        conn.commit()


def wait_until(predicate: Callable[[], T], timeout: float, interval: float = 0.1, what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what} (last value: {last!r})")
        time.sleep(interval)


def engine_env(database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    """Environment for worker/Beat subprocesses: this session's servers, small timings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DATABASE_", "REDIS_"))}
    env.update({
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "APP_ENV": "test",
        "JWT_SECRET": "test-secret-" + "x" * 32,
        "REFRESH_LOCK_TTL": str(LOCK_TTL),
        "SWEEP_INTERVAL": str(SWEEP_INTERVAL),
        "REFRESH_RETRY_BACKOFF": str(RETRY_BACKOFF),
        "REFRESH_MAX_RETRIES": str(MAX_RETRIES),
        "REFRESH_TIME_LIMIT": "60",
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


def settings_from_env(env: dict[str, str]) -> Settings:
    return Settings.from_env(env)


@dataclass
class CeleryProcess:
    """A ``celery -A tasks ...`` subprocess in its own session, output in a log file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None
    supervised: bool = False  # under deploy/supervise.py, as `make up` runs it (restarted if it dies)

    def start(self) -> CeleryProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        prefix = [sys.executable, "-m", "deploy.supervise", "--name", self.name, "--"] if self.supervised else []
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "celery", "-A", "tasks", *self.argv],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (parent and pool children)."""
        if self.alive():
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 10.0) -> None:
        if not self.alive():
            return
        self.kill(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)  # type: ignore[union-attr]
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)
            self.proc.wait(timeout=5)  # type: ignore[union-attr]

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


class WorkerProcess(CeleryProcess):
    @classmethod
    def create(cls, name: str, env: dict[str, str], log_dir: Path, queues: str = "refresh,default,maintenance",
               concurrency: int = 2) -> WorkerProcess:
        argv = ["worker", "-Q", queues, "-n", f"{name}@%h", "-c", str(concurrency),
                "--without-gossip", "--without-mingle", "-l", "INFO"]
        return cls(name=name, argv=argv, env=env, log_path=log_dir / f"worker-{name}.log")

    def wait_ready(self, app: Celery, timeout: float = 30.0) -> None:
        def answered() -> bool:
            if not self.alive():
                raise AssertionError(f"worker {self.name} exited:\n{self.log_tail()}")
            replies = app.control.ping(timeout=0.5) or []
            return any(name.startswith(f"{self.name}@") for reply in replies for name in reply)

        wait_until(answered, timeout, interval=0.2, what=f"worker {self.name} to answer ping")


class BeatProcess(CeleryProcess):
    @classmethod
    def create(cls, name: str, env: dict[str, str], log_dir: Path) -> BeatProcess:
        argv = ["beat", "-l", "INFO", "-s", str(log_dir / f"{name}-schedule"), "--pidfile="]
        return cls(name=name, argv=argv, env=env, log_path=log_dir / f"{name}.log")


@dataclass
class EngineCluster:
    """Workers, Beats, the database and the clients a test needs to watch them."""

    database_url: str
    redis_url: str
    env: dict[str, str]
    log_dir: Path
    app: Celery
    engine: sa.engine.Engine
    redis: redis_lib.Redis
    workers: dict[str, WorkerProcess] = field(default_factory=dict)
    beats: list[BeatProcess] = field(default_factory=list)

    def start_worker(self, name: str, supervised: bool = False, **kwargs: Any) -> WorkerProcess:
        worker = WorkerProcess.create(name, self.env, self.log_dir, **kwargs)
        worker.supervised = supervised
        worker.start()
        self.workers[name] = worker
        return worker

    def start_beat(self, name: str = "beat", supervised: bool = False) -> BeatProcess:
        beat = BeatProcess.create(name, self.env, self.log_dir)
        beat.supervised = supervised
        beat.start()
        self.beats.append(beat)
        return beat

    def restart_worker(self, name: str) -> WorkerProcess:
        old = self.workers[name]
        old.stop()
        worker = self.start_worker(name)
        worker.wait_ready(self.app)
        return worker

    def stop_all(self) -> None:
        for proc in [*self.beats, *self.workers.values()]:
            proc.stop()

    def logs(self) -> str:
        workers = [f"--- {p.log_path.name}\n{p.log_tail(40)}" for p in self.workers.values()]
        beats = [f"--- {p.log_path.name}\n{p.log_tail(5)}" for p in self.beats]
        return "\n".join(workers + beats)

    # -- database helpers --------------------------------------------------

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(sa.text(sql), params).scalar()

    def rows(self, sql: str, **params: Any) -> list[sa.Row]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.text(sql), params))

    def execute(self, sql: str, **params: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.text(sql), params)

    def max_log_id(self) -> int:
        return int(self.scalar("SELECT coalesce(max(id), 0) FROM mv_refresh_log"))

    def quiescent(self) -> bool:
        """No pending request and no refresh running, for every enabled view."""
        return not self.rows(
            "SELECT view_name FROM mv_refresh_queue WHERE enabled AND status IN ('pending', 'in_progress')"
        )

    def wait_quiescent(self, timeout: float = 30.0) -> None:
        wait_until(self.quiescent, timeout, what="every view refreshed and idle")

    def completed_since(self, log_id: int, view: str) -> list[sa.Row]:
        return self.rows(
            "SELECT id, refresh_started_at, refresh_completed_at, duration_ms, requests_cleared, source, worker "
            "FROM mv_refresh_log WHERE id > :id AND view_name = :v AND status = 'completed' "
            "ORDER BY refresh_started_at", id=log_id, v=view,
        )


@pytest.fixture(scope="module")
def engine_database_url(create_database: Callable[..., str], migrated_template: str) -> str:
    """A migrated database with the engine's test views, one per test module."""
    url = create_database(template=migrated_template, prefix="engine")
    prepare_engine_database(url)
    return url


@pytest.fixture(scope="module")
def engine_cluster(engine_database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[EngineCluster]:
    """Two real workers (w1, w2) and two real Beats sweeping every 0.5 s.

    Two Beats on purpose: running two by mistake (celery #2856) must not add
    refreshes, and every test in the module runs under that condition.
    """
    log_dir = tmp_path_factory.mktemp("celery")
    env = engine_env(engine_database_url, redis_url)
    settings = settings_from_env(env)
    client = redis_lib.Redis.from_url(redis_url)
    client.flushdb()
    app = create_app(settings, main="engine-tests")
    engine = make_engine(engine_database_url, pool_size=4)
    cluster = EngineCluster(engine_database_url, redis_url, env, log_dir, app, engine, client)
    try:
        w1, w2 = cluster.start_worker("w1"), cluster.start_worker("w2")
        w1.wait_ready(app)
        w2.wait_ready(app)
        cluster.start_beat("beat-a")
        cluster.start_beat("beat-b")
        yield cluster
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.stop_all()
        # Leave no queued messages, locks or markers for later modules' workers.
        client.flushdb()
        engine.dispose()
        client.close()
        app.close()
