"""Prometheus counters and histograms of the API process (exposed by ``/metrics``).

Module-level on purpose: prometheus_client registers collectors globally once
per process. Under gunicorn each worker writes its values to files in
``PROMETHEUS_MULTIPROC_DIR`` (set by api/gunicorn_conf.py before the workers
fork) and ``/metrics`` (monitoring/metrics.py) reports the sums over workers.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram, disable_created_metrics

# No ``*_created`` series: multiprocess mode (gunicorn) never exports them, so
# without this the single-process answer would carry series the served one lacks.
disable_created_metrics()

USER_CACHE_HITS = Counter(
    "discovery_user_cache_hits_total",
    "Per-user upvote lookups answered from a complete Redis set",
)
USER_CACHE_MISSES = Counter(
    "discovery_user_cache_misses_total",
    "Per-user upvote lookups that found no complete Redis set (rebuilt from Postgres)",
)
USER_CACHE_REBUILDS = Counter(
    "discovery_user_cache_rebuilds_total",
    "Redis upvote sets installed from a Postgres snapshot",
    ["outcome"],  # installed | raced (a write landed meanwhile; not installed)
)
USER_CACHE_FALLBACKS = Counter(
    "discovery_user_cache_fallbacks_total",
    "Lookups answered from Postgres because Redis was unreachable",
)
USER_CACHE_WRITE_ERRORS = Counter(
    "discovery_user_cache_write_errors_total",
    "Committed upvote changes that could not be applied to Redis (the user's set is invalidated later)",
)
RESPONSE_CACHE = Counter(
    "discovery_response_cache_total",
    "Anonymous view pages: from the per-process response cache, from the shared (Redis) one, or computed",
    ["view", "result"],  # hit | shared_hit | miss
)

# Buckets around the guide's targets: reads < 200 ms (its load test: 98.5% under
# 200 ms), dashboard 50 ms, leaderboard 80 ms; the tail up to a slow 10 s.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.08, 0.12, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0)
REQUEST_LATENCY = Histogram(
    "discovery_http_request_duration_seconds",
    "Time to produce a response, by route template (never the raw path), method and status code",
    ["route", "method", "status"],
    buckets=LATENCY_BUCKETS,
)
