"""The operations routes the API process serves: ``/health`` (and its probes),
``/metrics`` (monitoring/metrics.py) and ``/status`` (monitoring/status.py).

``api.create_app`` picks up ``routes(deps, settings)`` from this module, so the
API package never imports monitoring code (DESIGN.md: monitoring reads
everything and is imported by none).

``GET /health`` is the guide's contract: ``{status, timestamp, checks:
{database, redis, materialized_views: {status, stale_views}, broker, workers,
reconciliation}}``, 200 only when every check is healthy, 503 otherwise (the
body names what is degraded or unhealthy). Two probes for load balancers and
orchestrators, which must not pull an instance out of service because a
dependency it can live without is down:

* ``GET /health/live``: the process answers (always 200).
* ``GET /health/ready``: 200 unless the database, the source of truth, is
  unreachable (reads then answer from Postgres even with Redis down).
"""

from __future__ import annotations

import threading
from typing import Any

import falcon

from monitoring.health import HEALTHY, UNHEALTHY, HealthChecker, HealthDeps, check_database
from monitoring.metrics import MetricsResource, scrape_registry
from monitoring.readings import Reader
from monitoring.status import StatusResource
from schema.db import make_engine
from schema.settings import Settings


class CeleryPinger:
    """Names of the Celery workers that answer a broadcast ping within the timeout.

    A control-only Celery app, built on first use (in the gunicorn worker,
    after fork) with connection retries off, so a dead broker fails the check
    quickly instead of hanging it.
    """

    def __init__(self, broker_url: str, connect_timeout: float) -> None:
        self._broker_url = broker_url
        self._connect_timeout = connect_timeout
        self._app: Any = None
        self._lock = threading.Lock()

    def _celery(self) -> Any:
        if self._app is None:
            with self._lock:
                if self._app is None:
                    from celery import Celery

                    app = Celery("discovery-health", broker=self._broker_url, set_as_current=False)
                    app.conf.update(
                        broker_connection_retry=False,
                        broker_connection_retry_on_startup=False,
                        broker_connection_timeout=self._connect_timeout,
                        broker_connection_max_retries=0,
                        broker_transport_options={
                            "socket_connect_timeout": self._connect_timeout,
                            "socket_timeout": self._connect_timeout,
                            "max_retries": 0,
                        },
                    )
                    self._app = app
        return self._app

    def __call__(self, timeout: float) -> list[str]:
        replies = self._celery().control.ping(timeout=timeout) or []
        return [name for reply in replies for name in reply]


class HealthResource:
    """``GET /health``: every check, each bounded by HEALTH_TIMEOUT."""

    def __init__(self, checker: HealthChecker) -> None:
        self._checker = checker

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = self._checker.run()
        resp.media = body
        resp.status = falcon.HTTP_200 if body["status"] == HEALTHY else falcon.HTTP_503
        resp.set_header("Cache-Control", "no-store")


class LiveResource:
    """``GET /health/live``: the process is up and serving."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": HEALTHY}
        resp.set_header("Cache-Control", "no-store")


class ReadyResource:
    """``GET /health/ready``: the database answers (Redis, broker and workers are optional for reads)."""

    def __init__(self, health_deps: HealthDeps) -> None:
        self._deps = health_deps

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            check_database(self._deps)
            resp.media = {"status": HEALTHY}
        except Exception as exc:  # any failure to reach the database means not ready
            resp.media = {"status": UNHEALTHY, "error": str(getattr(exc, "orig", None) or exc).strip()[:300]}
            resp.status = falcon.HTTP_503
        resp.set_header("Cache-Control", "no-store")


def monitoring_engine(settings: Settings) -> Any:
    """Health, metrics and the status page get their own small pool with short
    timeouts: a hung or exhausted API pool must not hide (or be worsened by)
    them, and none of their statements may run longer than HEALTH_TIMEOUT."""
    return make_engine(
        settings.database_url,
        pool_size=3,  # /health's three database checks run at once
        application_name="discovery-monitoring",
        statement_timeout_ms=int(settings.health_timeout * 1000),
        connect_timeout=max(1, int(settings.health_timeout)),
    )


def health_deps(deps: Any, settings: Settings, engine: Any = None) -> HealthDeps:
    return HealthDeps(
        settings=settings,
        engine=engine if engine is not None else monitoring_engine(settings),
        redis=deps.redis,
        ping_workers=CeleryPinger(settings.celery_broker_url, settings.health_timeout),
    )


def routes(deps: Any, settings: Settings) -> list[tuple[str, object]]:
    """(path, resource) pairs for ``api.create_app``."""
    engine = monitoring_engine(settings)
    hdeps = health_deps(deps, settings, engine)
    reader = Reader(engine, settings)
    return [
        ("/health", HealthResource(HealthChecker(hdeps))),
        ("/health/live", LiveResource()),
        ("/health/ready", ReadyResource(hdeps)),
        ("/metrics", MetricsResource(scrape_registry(settings, reader))),
        ("/status", StatusResource(reader, settings)),
    ]
