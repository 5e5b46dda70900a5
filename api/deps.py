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
from api.freshness import ResponseCache, ViewFreshness
from api.sender import CelerySender, TaskSender
from schema.db import make_engine
from schema.settings import Settings


@dataclass
class Deps:
    engine: Engine
    redis: redis_lib.Redis
    user_cache: RedisUserCache
    sender: TaskSender
    freshness: ViewFreshness
    response_cache: ResponseCache

    @classmethod
    def connect(cls, settings: Settings, *, sender: TaskSender | None = None) -> Deps:
        engine = make_engine(
            settings.database_url,
            pool_size=settings.db_pool_size,
            application_name="discovery-api",
            statement_timeout_ms=settings.db_statement_timeout_ms,
            connect_timeout=3,
        )
        client = make_redis_client(settings.redis_url)
        return cls(
            engine=engine,
            redis=client,
            user_cache=RedisUserCache(client, engine),
            sender=sender or CelerySender(settings.celery_broker_url),
            freshness=ViewFreshness(engine),
            response_cache=ResponseCache(),
        )

    def close(self) -> None:
        """Release pools (tests; gunicorn workers just exit)."""
        self.engine.dispose()
        self.redis.close()
        close = getattr(self.sender, "close", None)
        if close:
            close()
