"""What the API needs from the outside world, built once per process.

``create_app`` takes a ``Deps``; tests build their own (a private Redis, a test
database, a sender pointed at a dead broker...). ``Deps.connect`` is the
default for the bare ``gunicorn 'api:create_app()'`` call. Nothing connects
here: the engine, the Redis pool and the Celery producer all open their
connections on first use, i.e. inside the gunicorn worker after fork (preload
is off), so no socket is ever shared between processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis as redis_lib
from sqlalchemy.engine import Engine

from api.cache import RedisUserCache, make_redis_client
from api.db import make_read_engine, make_write_engine
from api.freshness import ResponseCache, ViewFreshness
from api.sender import CelerySender, TaskSender
from schema.settings import Settings


@dataclass
class Deps:
    engine: Engine  # reads: AUTOCOMMIT, no pre-ping (api/db.py)
    write_engine: Engine  # writes: transactions
    redis: redis_lib.Redis
    user_cache: RedisUserCache
    sender: TaskSender
    freshness: ViewFreshness
    response_cache: ResponseCache

    @classmethod
    def connect(cls, settings: Settings, *, sender: TaskSender | None = None) -> Deps:
        engine = make_read_engine(settings)
        client = make_redis_client(settings.redis_url)
        return cls(
            engine=engine,
            write_engine=make_write_engine(settings),
            redis=client,
            user_cache=RedisUserCache(client, engine),
            sender=sender or CelerySender(settings.celery_broker_url),
            freshness=ViewFreshness(engine),
            response_cache=ResponseCache(),
        )

    def close(self) -> None:
        """Release pools (tests; gunicorn workers just exit)."""
        self.engine.dispose()
        self.write_engine.dispose()
        self.redis.close()
        close = getattr(self.sender, "close", None)
        if close:
            close()
