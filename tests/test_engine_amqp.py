"""A worker consumes refreshes through an AMQP broker (RabbitMQ) as well as Redis.

Uses the RabbitMQ at AMQP_TEST_URL (default amqp://guest:guest@127.0.0.1:5672//)
in a private virtual host made with rabbitmqctl, so no other worker on that
broker can take the messages. Skipped, saying why, when either is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis as redis_lib

from deploy.embedded import port_open
from schema.db import make_engine
from tasks.celery import create_app

pytest.register_assert_rewrite("engine_helpers")
from engine_helpers import WorkerProcess, engine_env, settings_from_env, wait_until  # noqa: E402

pytest_plugins = ["engine_helpers"]
pytestmark = pytest.mark.slow

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"


def _rabbitmqctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def amqp_vhost_url() -> Iterator[str]:
    base = os.environ.get("AMQP_TEST_URL", AMQP_URL)
    parts = urlsplit(base)
    if not port_open(parts.port or 5672, parts.hostname or "127.0.0.1"):
        pytest.skip(f"no AMQP broker at {parts.hostname}:{parts.port or 5672}")
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl not found: cannot make a private virtual host")
    vhost = f"test_engine_{uuid.uuid4().hex[:8]}"
    made = _rabbitmqctl("add_vhost", vhost)
    if made.returncode != 0:
        pytest.skip(f"rabbitmqctl add_vhost failed: {made.stderr.strip()[:200]}")
    try:
        user = parts.username or "guest"
        perms = _rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        assert perms.returncode == 0, perms.stderr
        yield urlunsplit((parts.scheme, parts.netloc, f"/{vhost}", "", ""))
    finally:
        _rabbitmqctl("delete_vhost", vhost)


def test_worker_consumes_refreshes_over_amqp(engine_database_url: str, redis_url: str, amqp_vhost_url: str,
                                             tmp_path_factory: pytest.TempPathFactory) -> None:
    env = engine_env(engine_database_url, redis_url, CELERY_BROKER_URL=amqp_vhost_url)
    settings = settings_from_env(env)
    assert settings.celery_broker_url.startswith("amqp://")
    app = create_app(settings, main="amqp-test")
    worker = WorkerProcess.create("amqp1", env, tmp_path_factory.mktemp("amqp"))
    engine = make_engine(engine_database_url, pool_size=2)
    redis_lib.Redis.from_url(redis_url).flushdb()
    try:
        worker.start()
        worker.wait_ready(app, timeout=60)
        # A manual refresh sent through RabbitMQ runs and reports back.
        result = app.send_task("tasks.refresh_view", args=["mv_test_items"]).get(timeout=60)
        assert result["status"] == "completed" and result["worker"].startswith("amqp1@")
        # The sweep, also over AMQP, enqueues a due view's refresh (worker to broker to worker).
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE mv_registry SET debounce_seconds = 0 WHERE view_name = 'mv_test_groups'")
            conn.exec_driver_sql("INSERT INTO engine_items VALUES (1, 1, 7) ON CONFLICT (id) DO UPDATE SET val = 7")
        mark_sql = ("SELECT count(*) FROM mv_refresh_log WHERE view_name = 'mv_test_groups' "
                    "AND status = 'completed' AND source = 'sweep'")

        def swept() -> bool:
            app.send_task("tasks.sweep_refresh_queue")
            with engine.connect() as conn:
                return bool(conn.exec_driver_sql(mark_sql).scalar())

        wait_until(swept, 30, interval=0.5, what="a sweep-enqueued refresh over AMQP")
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT total FROM mv_test_groups WHERE grp = 1").scalar() == 7
    except BaseException:
        print(worker.log_tail(80))
        raise
    finally:
        worker.stop()
        redis_lib.Redis.from_url(redis_url).flushdb()
        engine.dispose()
        app.close()
