"""Time limits: a refresh that outlives its task's soft limit is stopped in Postgres too.

One real worker with REFRESH_TIME_LIMIT=4 (soft limit 2 s) and no retries; the
slow test view sleeps 8 s. The refresh transaction carries a statement_timeout
just under the soft limit, so Postgres cancels the REFRESH instead of working
on after the task gave up.
"""

from __future__ import annotations

import pytest
import redis as redis_lib
import sqlalchemy as sa

from schema.db import make_engine
from tasks.celery import create_app

pytest.register_assert_rewrite("engine_helpers")
from engine_helpers import WorkerProcess, engine_env, settings_from_env, wait_until  # noqa: E402

pytest_plugins = ["engine_helpers"]
pytestmark = pytest.mark.slow


def test_soft_time_limit_cancels_the_refresh_statement(engine_database_url: str, redis_url: str,
                                                       tmp_path_factory: pytest.TempPathFactory) -> None:
    env = engine_env(engine_database_url, redis_url, REFRESH_TIME_LIMIT="4", REFRESH_MAX_RETRIES="0")
    app = create_app(settings_from_env(env), main="limits-test")
    worker = WorkerProcess.create("limits1", env, tmp_path_factory.mktemp("limits"), queues="refresh")
    engine = make_engine(engine_database_url, pool_size=2)
    redis_lib.Redis.from_url(redis_url).flushdb()
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO engine_slow_items VALUES (1, 1) ON CONFLICT DO NOTHING"))
            conn.execute(sa.text("UPDATE engine_flags SET enabled = true, seconds = 8 WHERE name = 'slow'"))
        worker.start()
        worker.wait_ready(app, timeout=60)
        result = app.send_task("tasks.refresh_view", args=["mv_test_slow"])
        wait_until(result.ready, 30, what="the refresh task to end")
        assert result.state == "FAILURE"
        assert "statement timeout" in str(result.result)
        with engine.connect() as conn:
            status, error = conn.execute(sa.text(
                "SELECT status, error FROM mv_refresh_log WHERE view_name = 'mv_test_slow' ORDER BY id DESC LIMIT 1"
            )).one()
            assert status == "failed" and "statement timeout" in error
            # Nothing is still refreshing the view in Postgres.
            running = conn.execute(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%mv_refresh_run%' "
                "AND pid <> pg_backend_pid()")).scalar()
            assert running == 0
            # The requests are still pending: the next sweep will try again.
            assert conn.execute(sa.text(
                "SELECT status FROM mv_refresh_queue WHERE view_name = 'mv_test_slow'")).scalar() == "pending"
    except BaseException:
        print(worker.log_tail(80))
        raise
    finally:
        worker.stop()
        redis_lib.Redis.from_url(redis_url).flushdb()
        engine.dispose()
        app.close()
