"""``GET /metrics``: Prometheus text format for the whole product.

Two sources, one answer:

* **process counters and histograms** (api/metrics.py: user cache hits and
  misses, response cache, request latency per route). Under gunicorn these
  are summed over every worker from ``PROMETHEUS_MULTIPROC_DIR`` (see
  api/gunicorn_conf.py), so any worker answering a scrape gives the totals;
  in a single process (tests, ``python -m``) they come from the default
  registry.
* **database series**, computed at scrape time from the refresh bookkeeping
  and reconciliation tables (monitoring/readings.py), with a short statement
  timeout and a wall-clock bound. When Postgres does not answer, the scrape
  still answers 200 with ``discovery_database_up 0`` and without the
  database series (absent, not zero: "unknown" must not read as "fresh").

Each series, its meaning and the alert the guide implies: README.md, "Monitoring".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import datetime

import falcon
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from monitoring.readings import REFRESH_OUTCOMES, Reader, Readings, ReadingsUnavailable
from schema.settings import Settings

log = logging.getLogger(__name__)
LAST_STATUSES = ("completed", "failed", "abandoned")
RECONCILIATION_STATUSES = ("completed", "partial", "failed", "abandoned")


def _epoch(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def database_families(r: Readings) -> Iterator[Metric]:
    """The series derived from one set of readings."""
    staleness = GaugeMetricFamily(
        "discovery_view_staleness_seconds",
        "Age of the oldest refresh request not yet in the view (0 when nothing is pending)", labels=["view"])
    pending = GaugeMetricFamily(
        "discovery_view_pending_requests", "Refresh requests waiting for the view (queue depth)", labels=["view"])
    duration = GaugeMetricFamily(
        "discovery_view_last_refresh_duration_seconds", "Duration of the view's last finished refresh",
        labels=["view"])
    last_status = GaugeMetricFamily(
        "discovery_view_last_refresh_status",
        "1 for the outcome of the view's last finished refresh (completed, failed, abandoned), 0 for the others",
        labels=["view", "status"])
    last_success = GaugeMetricFamily(
        "discovery_view_last_success_timestamp_seconds", "Unix time the view's last successful refresh completed",
        labels=["view"])
    refreshes = GaugeMetricFamily(
        "discovery_view_refreshes_24h", "Refreshes of the view started in the last 24 h, by outcome",
        labels=["view", "status"])
    for v in r.views:
        staleness.add_metric([v.view_name], v.staleness_seconds)
        pending.add_metric([v.view_name], v.pending_requests)
        if v.last_duration_ms is not None:
            duration.add_metric([v.view_name], v.last_duration_ms / 1000.0)
        if v.last_status is not None:
            for status in LAST_STATUSES:
                last_status.add_metric([v.view_name, status], 1.0 if v.last_status == status else 0.0)
        if v.last_success_at is not None:
            last_success.add_metric([v.view_name], v.last_success_at.timestamp())
        for outcome in REFRESH_OUTCOMES:
            refreshes.add_metric([v.view_name, outcome], v.refreshes_24h[outcome])
    yield from (staleness, pending, duration, last_status, last_success, refreshes)
    yield GaugeMetricFamily(
        "discovery_stale_views", "Views with a request pending longer than STALE_AFTER_SECONDS (the guide's health rule)",
        value=r.stale_views)
    if r.db_cache_hit_ratio is not None:
        yield GaugeMetricFamily(
            "discovery_db_cache_hit_ratio", "Share of table block reads served from shared buffers (pg_statio_user_tables)",
            value=r.db_cache_hit_ratio)

    run = r.last_reconciliation
    if run is not None:
        yield GaugeMetricFamily(
            "discovery_reconciliation_last_run_timestamp_seconds", "Unix time the last finished reconciliation ended",
            value=_epoch(run.finished_at or run.started_at))
        status = GaugeMetricFamily(
            "discovery_reconciliation_last_run_status", "1 for the status of the last finished reconciliation",
            labels=["status"])
        for s in RECONCILIATION_STATUSES:
            status.add_metric([s], 1.0 if run.status == s else 0.0)
        yield status
        found = GaugeMetricFamily(
            "discovery_reconciliation_discrepancies",
            "Discrepancies the last finished reconciliation found, fixed and left unfixed, by part",
            labels=["part", "result"])
        for part in run.tables:
            summary = run.parts.get(part, {})
            part_found, part_fixed = int(summary.get("found") or 0), int(summary.get("fixed") or 0)
            found.add_metric([part, "found"], part_found)
            found.add_metric([part, "fixed"], part_fixed)
            found.add_metric([part, "unfixed"], max(0, part_found - part_fixed))
        yield found
        yield GaugeMetricFamily(
            "discovery_reconciliation_last_run_rows_checked", "Keys the last finished reconciliation compared",
            value=run.rows_checked)
    if r.last_reconciliation_success_at is not None:
        yield GaugeMetricFamily(
            "discovery_reconciliation_last_success_timestamp_seconds",
            "Unix time the last completed reconciliation ended", value=r.last_reconciliation_success_at.timestamp())


class DatabaseCollector(Collector):
    """Collected on every scrape; never raises (a raise would turn the scrape into a 500)."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader

    def describe(self) -> list[Metric]:
        return []  # nothing is read at registration; names are checked at scrape

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        try:
            readings = self.reader.read()
            families = list(database_families(readings))
            up = 1.0
        except ReadingsUnavailable as exc:
            log.warning("/metrics: database series skipped: %s", exc)
            families, up = [], 0.0
        except Exception:  # a bug in a family must not cost the whole scrape
            log.exception("/metrics: database series failed")
            families, up = [], 0.0
        yield GaugeMetricFamily(
            "discovery_database_up", "1 when this scrape could read Postgres, 0 when not (database series absent)",
            value=up)
        yield GaugeMetricFamily(
            "discovery_metrics_database_seconds", "Time this scrape spent reading Postgres",
            value=time.perf_counter() - started)
        yield from families


class _DefaultRegistry(Collector):
    """The process's own registry (single-process mode)."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def scrape_registry(settings: Settings, reader: Reader) -> CollectorRegistry:
    """Process metrics (summed over gunicorn workers when multiprocess) plus the database series."""
    registry = CollectorRegistry(auto_describe=False)
    if settings.prometheus_multiproc_dir:
        MultiProcessCollector(registry, path=settings.prometheus_multiproc_dir)
    else:
        registry.register(_DefaultRegistry())
    registry.register(DatabaseCollector(reader))
    return registry


class MetricsResource:
    """``GET /metrics`` (Prometheus text, or OpenMetrics when the scraper asks for it)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        encoder, content_type = choose_encoder(req.get_header("Accept") or "")
        resp.data = encoder(self._registry)
        resp.content_type = content_type
        resp.set_header("Cache-Control", "no-store")
