"""What ``/metrics`` and ``/status`` read from Postgres, read in one place.

Both are computed when asked (a scrape, a page load), never by a background
loop, so an idle API costs Postgres nothing. Reads run on the monitoring
engine, whose connections carry ``statement_timeout`` = ``HEALTH_TIMEOUT``,
and ``Reader.read`` also bounds the wall time in a thread: a Postgres that is
down, or up but not answering (a stopped process, a full connection table),
makes the read fail fast with ``ReadingsUnavailable`` instead of hanging the
request. The callers then answer anyway (``discovery_database_up 0``, a red
banner).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from schema.db import load_queries
from schema.settings import Settings

log = logging.getLogger(__name__)
QUERIES = load_queries(Path(__file__).with_name("queries.sql"))
REFRESH_OUTCOMES = ("completed", "failed", "skipped", "abandoned")


class ReadingsUnavailable(RuntimeError):
    """Postgres did not answer in time or at all; the message is one line."""


@dataclass
class ViewReading:
    view_name: str
    status: str  # mv_refresh_queue: in_progress | pending | failed | completed
    enabled: bool
    pending_requests: int
    staleness_seconds: float  # age of the oldest unrefreshed request; 0 when none is pending
    last_status: str | None  # last finished refresh: completed | failed | abandoned
    last_error: str | None
    last_started_at: datetime | None
    last_duration_ms: int | None
    last_success_at: datetime | None
    refreshes_24h: dict[str, int]  # outcome -> count
    stale: bool  # pending longer than STALE_AFTER_SECONDS (the guide's health rule)


@dataclass
class ReconciliationRun:
    id: int
    started_at: datetime
    finished_at: datetime | None
    status: str
    auto_fix: bool
    tables: list[str]
    rows_checked: int
    found: int
    fixed: int
    source: str
    parts: dict[str, dict[str, Any]]  # part -> {found, fixed, rows_checked, status, ...}
    error: str | None

    @property
    def unfixed(self) -> int:
        return max(0, self.found - self.fixed)


@dataclass
class Readings:
    taken_at: datetime
    views: list[ViewReading]
    stale_views: int
    last_reconciliation: ReconciliationRun | None  # newest finished run
    last_reconciliation_success_at: datetime | None
    db_cache_hit_ratio: float | None
    recent_refreshes: list[dict[str, Any]] = field(default_factory=list)
    recent_failures: list[dict[str, Any]] = field(default_factory=list)
    reconciliation_history: list[ReconciliationRun] = field(default_factory=list)


def _run(row: Any) -> ReconciliationRun:
    return ReconciliationRun(
        id=row["id"], started_at=row["started_at"], finished_at=row["finished_at"], status=row["status"],
        auto_fix=row["auto_fix"], tables=list(row["tables"] or []), rows_checked=int(row["rows_checked"] or 0),
        found=int(row["discrepancies_found"] or 0), fixed=int(row["discrepancies_fixed"] or 0),
        source=row["source"], parts=dict(row["summary"] or {}), error=row["error"],
    )


def read_readings(conn: sa.Connection, settings: Settings, *, history: int = 0) -> Readings:
    """Every reading, on one connection. ``history`` > 0 adds the lists the status page shows."""
    freshness = {r["view_name"]: r for r in conn.execute(QUERIES["view_freshness"]).mappings()}
    stats = {r["view_name"]: r for r in conn.execute(QUERIES["refresh_stats"]).mappings()}
    views = []
    for name, f in freshness.items():
        s = stats.get(name, {})
        staleness = float(f["staleness_seconds"] or 0.0)
        pending = int(f["pending_requests"] or 0)
        views.append(ViewReading(
            view_name=name, status=f["status"], enabled=bool(f["enabled"]), pending_requests=pending,
            staleness_seconds=max(0.0, staleness) if pending else 0.0,
            last_status=s.get("last_status"), last_error=f["last_error"],
            last_started_at=s.get("last_started_at"), last_duration_ms=s.get("last_duration_ms"),
            last_success_at=s.get("last_success_at"),
            refreshes_24h={o: int(s.get(o) or 0) for o in REFRESH_OUTCOMES},
            stale=pending > 0 and staleness > settings.stale_after_seconds,
        ))
    last = conn.execute(QUERIES["reconciliation_last_finished"]).mappings().first()
    readings = Readings(
        taken_at=datetime.now(UTC),
        views=views,
        stale_views=sum(v.stale for v in views),
        last_reconciliation=_run(last) if last else None,
        last_reconciliation_success_at=conn.execute(QUERIES["reconciliation_last_completed_at"]).scalar(),
        db_cache_hit_ratio=conn.execute(QUERIES["db_cache_hit_ratio"]).scalar(),
    )
    if history > 0:
        readings.recent_refreshes = [dict(r) for r in conn.execute(QUERIES["recent_refreshes"], {"limit": history})
                                     .mappings()]
        readings.recent_failures = [dict(r) for r in conn.execute(QUERIES["recent_failures"], {"limit": history})
                                    .mappings()]
        readings.reconciliation_history = [
            _run(r) for r in conn.execute(QUERIES["reconciliation_runs"], {"limit": min(history, 10)}).mappings()
        ]
    return readings


class Reader:
    """Reads with a wall-clock bound (see the module docstring).

    A read stuck past its deadline keeps its thread until the statement
    timeout or TCP keepalive ends it; the pool is small and its checkout
    timeout short, so stuck reads cannot pile up without bound either.
    """

    def __init__(self, engine: sa.Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        # Deadline: the statement timeout plus room for connecting and the round trips.
        self.timeout = settings.health_timeout + 0.5
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="monitoring-read")

    def _read(self, history: int) -> Readings:
        with self.engine.connect() as conn:
            return read_readings(conn, self.settings, history=history)

    def read(self, history: int = 0) -> Readings:
        future = self._pool.submit(self._read, history)
        try:
            return future.result(timeout=self.timeout)
        except FutureTimeout:
            future.cancel()
            raise ReadingsUnavailable(f"Postgres did not answer within {self.timeout:.1f} s") from None
        except Exception as exc:  # any database failure: the caller reports it, never a 500
            text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            raise ReadingsUnavailable((text[0] if text else type(exc).__name__)[:300]) from None
