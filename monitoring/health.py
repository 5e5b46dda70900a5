"""Health checks behind ``GET /health``.

Each dependency is checked in its own thread with a deadline, so a hung
Postgres, Redis or broker cannot hang the endpoint: a check that does not
answer in time is reported ``unhealthy`` with ``error: "timeout"``.

Status rules (the guide's shape, with its 200/503 rule: 200 only when healthy):
- ``unhealthy``: the database (the source of truth) is unreachable.
- ``degraded``: anything else is wrong (Redis, broker, no refresh worker,
  stale or failing views, unfixed reconciliation discrepancies). Reads still
  answer correctly, but something needs attention.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis as redis_lib
import sqlalchemy as sa
from kombu import Connection

from schema.db import load_queries
from schema.settings import Settings

QUERIES = load_queries(Path(__file__).with_name("queries.sql"))
HEALTHY, DEGRADED, UNHEALTHY = "healthy", "degraded", "unhealthy"

Check = Callable[[], dict[str, Any]]


@dataclass
class HealthDeps:
    """What the checks need; built once per API process."""

    settings: Settings
    engine: sa.engine.Engine
    redis: redis_lib.Redis
    ping_workers: Callable[[float], list[str]] | None = None  # returns names of workers that answered


def _timed(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        result = fn()
    except Exception as exc:  # a check reports its failure; it never raises
        result = {"status": UNHEALTHY, "error": _one_line(exc)}
    result.setdefault("latency_ms", round((time.perf_counter() - started) * 1000, 1))
    return result


def _one_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def check_database(deps: HealthDeps) -> dict[str, Any]:
    timeout_ms = int(deps.settings.health_timeout * 1000)
    with deps.engine.connect() as conn:
        conn.execute(sa.text("SET LOCAL statement_timeout = :t").bindparams(t=f"{timeout_ms}ms"))
        conn.execute(QUERIES["database_ping"])
    return {"status": HEALTHY}


def check_redis(deps: HealthDeps) -> dict[str, Any]:
    deps.redis.ping()
    info = deps.redis.info("memory")
    return {"status": HEALTHY, "used_memory": info.get("used_memory_human")}


def check_broker(deps: HealthDeps) -> dict[str, Any]:
    url = deps.settings.celery_broker_url
    with Connection(url, connect_timeout=deps.settings.health_timeout) as conn:
        conn.ensure_connection(max_retries=1, timeout=deps.settings.health_timeout)
    return {"status": HEALTHY, "transport": url.split(":", 1)[0]}


def check_workers(deps: HealthDeps) -> dict[str, Any]:
    if deps.ping_workers is None:
        return {"status": HEALTHY, "seen": [], "note": "worker ping not configured"}
    seen = sorted(deps.ping_workers(min(1.0, deps.settings.health_timeout * 0.6)))
    if not deps.settings.mv_refresh_worker_enabled:
        return {"status": HEALTHY, "seen": seen, "note": "refresh worker disabled (MV_REFRESH_WORKER_ENABLED=false)"}
    status = HEALTHY if any(name.startswith("refresh@") for name in seen) else DEGRADED
    result: dict[str, Any] = {"status": status, "seen": seen}
    if status != HEALTHY:
        result["error"] = "no refresh worker answered" if seen else "no worker answered"
    return result


def check_materialized_views(deps: HealthDeps) -> dict[str, Any]:
    with deps.engine.connect() as conn:
        conn.execute(sa.text("SET LOCAL statement_timeout = :t").bindparams(t=f"{int(deps.settings.health_timeout * 1000)}ms"))
        stale = conn.execute(QUERIES["stale_view_count"], {"stale_after": deps.settings.stale_after_seconds}).scalar()
        failing = conn.execute(QUERIES["failing_views"]).mappings().all()
        views = conn.execute(QUERIES["view_freshness"]).mappings().all()
    result: dict[str, Any] = {
        "status": HEALTHY if stale == 0 and not failing else DEGRADED,
        "stale_views": int(stale),
        "failing_views": [row["view_name"] for row in failing],
        "views": {
            row["view_name"]: {
                "status": row["status"],
                "pending_requests": int(row["pending_requests"] or 0),
                "staleness_seconds": _round(row["staleness_seconds"]),
                "last_refresh_age_seconds": _round(row["last_refresh_age_seconds"]),
            }
            for row in views
        },
    }
    if failing:
        result["errors"] = {row["view_name"]: row["last_error"] for row in failing}
    return result


def check_reconciliation(deps: HealthDeps) -> dict[str, Any]:
    with deps.engine.connect() as conn:
        exists = conn.execute(sa.text("SELECT to_regclass('reconciliation_runs') IS NOT NULL")).scalar()
        if not exists:
            return {"status": HEALTHY, "last_run": None}
        row = conn.execute(sa.text(
            "SELECT started_at, finished_at, status, discrepancies_found, discrepancies_fixed, auto_fix "
            "FROM reconciliation_runs ORDER BY started_at DESC LIMIT 1"
        )).mappings().first()
    if row is None:
        return {"status": HEALTHY, "last_run": None, "note": "no reconciliation has run yet"}
    unfixed = (row["discrepancies_found"] or 0) - (row["discrepancies_fixed"] or 0)
    status = HEALTHY if row["status"] in ("completed", "running") and unfixed <= 0 else DEGRADED
    return {
        "status": status,
        "last_run": row["started_at"].isoformat(),
        "last_status": row["status"],
        "found": row["discrepancies_found"],
        "fixed": row["discrepancies_fixed"],
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 1)


class HealthChecker:
    """Runs every check concurrently with a deadline; caches the answer briefly.

    The short cache keeps a load balancer polling every instance from turning
    /health into load on Postgres and the broker.
    """

    def __init__(self, deps: HealthDeps, cache_seconds: float = 1.0) -> None:
        self.deps = deps
        self.cache_seconds = cache_seconds
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="health")
        self._cached: tuple[float, dict[str, Any]] | None = None

    def checks(self) -> dict[str, Check]:
        d = self.deps
        return {
            "database": lambda: check_database(d),
            "redis": lambda: check_redis(d),
            "materialized_views": lambda: check_materialized_views(d),
            "broker": lambda: check_broker(d),
            "workers": lambda: check_workers(d),
            "reconciliation": lambda: check_reconciliation(d),
        }

    def run(self) -> dict[str, Any]:
        now = time.monotonic()
        if self._cached and now - self._cached[0] < self.cache_seconds:
            return self._cached[1]
        deadline = now + self.deps.settings.health_timeout + 0.3
        futures = {name: self._pool.submit(_timed, fn) for name, fn in self.checks().items()}
        checks: dict[str, dict[str, Any]] = {}
        for name, future in futures.items():
            try:
                checks[name] = future.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                checks[name] = {"status": UNHEALTHY, "error": "timeout",
                                "latency_ms": round(self.deps.settings.health_timeout * 1000)}
        if checks["database"]["status"] != HEALTHY:
            overall = UNHEALTHY
        elif any(c["status"] != HEALTHY for c in checks.values()):
            overall = DEGRADED
        else:
            overall = HEALTHY
        body = {"status": overall, "timestamp": datetime.now(UTC).isoformat(), "checks": checks}
        self._cached = (time.monotonic(), body)
        return body
