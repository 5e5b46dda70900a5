"""``GET /health`` over the app: the guide's shape and status codes.

Claims: with Postgres and Redis up but no Celery worker answering, /health is
503 ``degraded`` and names the workers check, while the database, redis and
materialized_views checks are healthy; the liveness and readiness probes
answer 200; the body carries the guide's keys.
"""

from __future__ import annotations

from api_helpers import api_client


def test_health_has_the_guide_shape_and_names_the_missing_worker(demo_database_url, redis_url):
    with api_client(demo_database_url, redis_url) as (client, _deps):
        r = client.simulate_get("/health")
        body = r.json
        assert r.status_code == 503, body
        assert body["status"] == "degraded"
        assert {"status", "timestamp", "checks"} <= set(body)
        checks = body["checks"]
        assert checks["database"]["status"] == "healthy"
        assert checks["redis"]["status"] == "healthy"
        assert checks["materialized_views"]["status"] in ("healthy", "degraded")
        assert isinstance(checks["materialized_views"]["stale_views"], int)
        assert checks["workers"]["status"] == "degraded"
        assert checks["workers"]["error"] == "no worker answered"
        assert r.headers["cache-control"] == "no-store"
        assert client.simulate_get("/health/live").status_code == 200
        ready = client.simulate_get("/health/ready")
        assert ready.status_code == 200, ready.json
