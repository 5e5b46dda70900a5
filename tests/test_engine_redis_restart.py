"""The refresh engine recovers by itself when Redis (broker, locks, markers) restarts empty.

A private redis-server of this module's own (so stopping it disturbs no other
test), one real ``celery -A tasks worker`` and one real Beat pointed at it,
each under deploy/supervise.py as ``make up`` runs them.
Redis is stopped while writes keep committing to Postgres, then started again
on the same port with nothing in it (no persistence, as a crashed cache would
come back). Requests live in Postgres, so without anyone's help the worker
and Beat reconnect, the sweep finds the pending requests, and the views catch
up with every write.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_lib

from deploy.embedded import EmbeddedRedis, free_port
from schema.db import make_engine
from tasks.celery import create_app

pytest.register_assert_rewrite("engine_helpers")
from engine_helpers import (  # noqa: E402
    EngineCluster,
    engine_env,
    settings_from_env,
    wait_until,
)

pytest_plugins = ["engine_helpers"]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def private_redis() -> Iterator[EmbeddedRedis]:
    work = Path(tempfile.mkdtemp(prefix="engine-redis-restart-"))
    server = EmbeddedRedis(work, free_port())
    server.start()
    yield server
    server.stop()
    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(engine_database_url: str, private_redis: EmbeddedRedis,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineCluster]:
    env = engine_env(engine_database_url, private_redis.url(0))
    app = create_app(settings_from_env(env), main="redis-restart-tests")
    client = redis_lib.Redis.from_url(private_redis.url(0))
    c = EngineCluster(engine_database_url, private_redis.url(0), env, tmp_path_factory.mktemp("restart"), app,
                      make_engine(engine_database_url, pool_size=2), client)
    try:
        # As `make up` runs them: under deploy/supervise.py. A worker can die on the outage
        # (kombu: "Unrecoverable error: AttributeError ... 'hostname'" when a late ack meets
        # the closed connection); the supervisor starts it again.
        c.start_worker("rr1", supervised=True).wait_ready(app)
        c.start_beat("beat-rr", supervised=True)
        yield c
    except BaseException:
        print(c.logs())
        raise
    finally:
        c.stop_all()
        c.engine.dispose()
        client.close()
        app.close()


def items_in_view(c: EngineCluster, first: int, last: int) -> int:
    return int(c.scalar("SELECT count(*) FROM mv_test_items WHERE id BETWEEN :a AND :b", a=first, b=last))


def test_engine_recovers_after_redis_restarts_empty(cluster: EngineCluster, private_redis: EmbeddedRedis) -> None:
    c = cluster
    try:
        # Working before: a write is refreshed by the sweep.
        c.execute("INSERT INTO engine_items (id, grp, val) VALUES (1, 1, 1)")
        wait_until(lambda: items_in_view(c, 1, 1) == 1, 30, what="the first write to reach the view")

        private_redis.stop()
        assert not private_redis.running()
        for i in range(2, 12):  # writes keep committing to Postgres while Redis is gone
            c.execute("INSERT INTO engine_items (id, grp, val) VALUES (:i, 1, 1)", i=i)
        assert c.scalar("SELECT status FROM mv_refresh_queue WHERE view_name = 'mv_test_items'") == "pending"

        private_redis.start()  # same port, empty: queues, locks and markers are gone
        wait_until(lambda: items_in_view(c, 1, 11) == 11, 90, interval=0.5,
                   what="the writes made while Redis was down to reach the view")
        c.wait_quiescent(60)
        # A write after the restart goes the normal way too.
        mark = c.max_log_id()
        c.execute("INSERT INTO engine_items (id, grp, val) VALUES (12, 1, 1)")
        wait_until(lambda: c.completed_since(mark, "mv_test_items"), 30, what="a refresh after the restart")
        assert items_in_view(c, 1, 12) == 12
        assert c.workers["rr1"].alive() and all(b.alive() for b in c.beats)
        restarts = c.workers["rr1"].log_path.read_text().count("restarting in")
        print(f"worker restarted {restarts} time(s) by its supervisor")
    except BaseException:
        print(c.logs())
        raise
