"""A refresh worker survives its broker going away mid-refresh (tasks/consumer.py).

Claims: with a refresh running (its message unacknowledged, acks_late), the
broker Redis stopped and started again: the worker process stays up,
reconnects, the running refresh completes and is logged, and the worker takes
new work. Without tasks/consumer.py the worker exited on the first try
("Unrecoverable error: AttributeError ... 'hostname'"), then on the late ack.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import kombu.exceptions
import pytest
import redis as redis_lib
import sqlalchemy as sa

from deploy.embedded import EmbeddedRedis, free_port
from schema.db import make_engine
from schema.settings import Settings
from tasks.celery import create_app

pytest.register_assert_rewrite("engine_helpers")
from engine_helpers import WorkerProcess, engine_env, wait_until  # noqa: E402

pytest_plugins = ["engine_helpers"]
pytestmark = pytest.mark.slow


@pytest.fixture()
def broker(work_dir: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(work_dir / f"broker-{free_port()}", free_port())
    server.start()
    yield server
    server.stop()


def test_worker_survives_the_broker_restarting_during_a_refresh(engine_database_url: str, redis_url: str,
                                                                broker: EmbeddedRedis, tmp_path: Path) -> None:
    env = engine_env(engine_database_url, redis_url, CELERY_BROKER_URL=broker.url(0),
                     CELERY_RESULT_BACKEND=broker.url(1))
    app = create_app(Settings.from_env(env), main="broker-loss")
    engine = make_engine(engine_database_url, pool_size=2)
    worker = WorkerProcess.create("brokerloss", env, tmp_path, queues="refresh", concurrency=2).start()

    def scalar(sql: str, **params: object) -> object:
        with engine.connect() as conn:
            return conn.execute(sa.text(sql), params).scalar()

    def execute(sql: str) -> None:
        with engine.begin() as conn:
            conn.execute(sa.text(sql))

    try:
        worker.wait_ready(app)
        execute("UPDATE engine_flags SET seconds = 5 WHERE name = 'slow'")
        mark = scalar("SELECT coalesce(max(id), 0) FROM mv_refresh_log")
        app.send_task("tasks.refresh_view", args=["mv_test_slow"], kwargs={"manual": True})
        log_id = wait_until(lambda: scalar(
            "SELECT id FROM mv_refresh_log WHERE id > :m AND view_name = 'mv_test_slow' AND status = 'in_progress'",
            m=mark), 30, what="the slow refresh to start")

        broker.stop()  # the running refresh's message is unacknowledged (acks_late)
        time.sleep(1.5)
        broker.start()  # back, and empty

        # The refresh carried on and committed; the worker is still there and serving.
        wait_until(lambda: scalar("SELECT status FROM mv_refresh_log WHERE id = :i", i=log_id) == "completed", 30,
                   what="the interrupted refresh to complete")
        time.sleep(1.0)  # its late acknowledgement went through the dead channel: no crash
        assert worker.alive(), worker.log_tail()
        execute("UPDATE engine_flags SET seconds = 0 WHERE name = 'slow'")

        def answers() -> bool:
            try:
                return any(worker.name in name for reply in app.control.ping(timeout=0.5) or [] for name in reply)
            except (redis_lib.RedisError, OSError, kombu.exceptions.OperationalError):
                return False  # this test's own pooled connection died with the broker; the next try reconnects

        wait_until(answers, 60, interval=0.3, what="the worker to answer after the broker came back")
        outcome = app.send_task("tasks.refresh_view", args=["mv_test_slow"], kwargs={"manual": True}).get(timeout=60)
        assert outcome["status"] == "completed"
        assert worker.alive() and "Unrecoverable error" not in worker.log_tail(200)
    finally:
        worker.stop()
        execute("UPDATE engine_flags SET seconds = 0 WHERE name = 'slow'")
        engine.dispose()
        app.close()
