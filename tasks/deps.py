"""Per-process dependencies of the refresh engine: settings, engine, Redis client.

Built lazily in the process that uses them. A Celery prefork worker imports
the task modules in the parent and forks children; a connection pool or
socket created before the fork would be shared by every child, so nothing is
connected at import and ``worker_deps()`` rebuilds when it finds itself in a
new process.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import redis as redis_lib
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from schema.db import make_engine
from schema.settings import Settings

# How often a busy backend checks that its client is still there. A worker
# killed with SIGKILL mid-refresh leaves its backend running the REFRESH until
# it notices; with this it notices within seconds and rolls back.
CLIENT_CHECK_INTERVAL = "2s"


@dataclass
class Deps:
    settings: Settings
    engine: Engine
    redis: redis_lib.Redis

    @classmethod
    def connect(cls, settings: Settings, *, application_name: str = "discovery-refresh") -> Deps:
        """Build (lazily connecting) clients for these settings."""
        engine = make_engine(settings.database_url, pool_size=2, application_name=application_name)

        @sa.event.listens_for(engine, "connect")
        def _session_settings(dbapi_conn, _record) -> None:
            with dbapi_conn.cursor() as cur:
                cur.execute("SET client_connection_check_interval = %s", (CLIENT_CHECK_INTERVAL,))
            dbapi_conn.commit()

        client = redis_lib.Redis.from_url(
            settings.redis_url,
            # A hung Redis must not hang a refresh or a sweep: lock calls fail
            # fast and the engine decides what to do (see refresh_engine).
            socket_timeout=2.0,
            socket_connect_timeout=2.0,
            health_check_interval=30,
        )
        return cls(settings=settings, engine=engine, redis=client)

    def close(self) -> None:
        self.engine.dispose()
        self.redis.close()


_lock = threading.Lock()
_deps: Deps | None = None
_deps_pid: int | None = None


def worker_deps() -> Deps:
    """This process's Deps, built on first use after any fork."""
    global _deps, _deps_pid
    pid = os.getpid()
    with _lock:
        if _deps is None or _deps_pid != pid:
            if _deps is not None:
                # Inherited from the parent: drop without closing the parent's sockets.
                _deps.engine.dispose(close=False)
            _deps = Deps.connect(Settings.from_env())
            _deps_pid = pid
        return _deps
