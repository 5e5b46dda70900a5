"""Prometheus counters of the API's caches (exposed by the /metrics endpoint).

Module-level on purpose: prometheus_client registers collectors globally once
per process. Under gunicorn each worker counts for itself; the /metrics owner
aggregates workers with ``PROMETHEUS_MULTIPROC_DIR`` if it wants totals.
"""

from __future__ import annotations

from prometheus_client import Counter

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
    "Anonymous view pages served from the per-process response cache",
    ["view", "result"],  # hit | miss
)
