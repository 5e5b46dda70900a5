"""``GET /metrics`` over the app (one process): every series, with values that match Postgres.

Claims: the answer parses with prometheus_client's own parser; the database
series report what the bookkeeping tables hold (a pending request shows as
queue depth and staleness, a failed refresh as the view's last status and in
its 24 h failure count, a reconciliation's discrepancies by part); the user
cache counters move with signed-in reads; request latency is labelled by the
route template (never the raw path, so two project ids make one series) and
unknown paths fall into one "unmatched" series.
(Summed over gunicorn workers, and with Postgres stopped: test_ops_faults.py.)
"""

from __future__ import annotations

import re
import socket
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from api_helpers import api_client, bearer, token_for
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from api.cache import make_redis_client
from monitoring.metrics import scrape_registry
from monitoring.readings import Reader
from schema.db import make_engine
from schema.settings import Settings
from tasks.reconciliation import ReconcileOptions, run_reconciliation

README = Path(__file__).resolve().parent.parent / "README.md"

SERIES = (
    "discovery_database_up",
    "discovery_view_staleness_seconds",
    "discovery_view_pending_requests",
    "discovery_view_last_refresh_duration_seconds",
    "discovery_view_last_refresh_status",
    "discovery_view_last_success_timestamp_seconds",
    "discovery_view_refreshes_24h",
    "discovery_stale_views",
    "discovery_reconciliation_discrepancies",
    "discovery_reconciliation_last_run_status",
    "discovery_reconciliation_last_run_timestamp_seconds",
    "discovery_user_cache_hits",  # the parser drops the _total suffix of counter families
    "discovery_user_cache_misses",
    "discovery_http_request_duration_seconds",
)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample, keyed by (sample name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def families(text: str) -> set[str]:
    return {f.name for f in text_string_to_metric_families(text)}


def value(parsed: dict, name: str, **labels: str) -> float:
    return parsed[(name, tuple(sorted(labels.items())))]


@pytest.fixture(scope="module")
def prepared(demo_database_url: str, demo_engine: sa.Engine, redis_url: str) -> dict:
    """One refresh completed, one failed, one view with a pending request, one reconciliation run
    that found (and did not fix) a corrupted counter."""
    with demo_engine.begin() as conn:
        conn.execute(sa.text("SELECT * FROM process_mv_refresh_queue()"))
        # A real failure through the engine's own bookkeeping functions.
        log_id = conn.execute(sa.text("SELECT mv_refresh_begin('mv_investors_directory', 'manual', 'test')")).scalar()
    with demo_engine.begin() as conn:
        conn.execute(sa.text("SELECT mv_refresh_fail(:id, 'boom: injected by the test')"), {"id": log_id})
    with demo_engine.begin() as conn:
        conn.execute(sa.text("SELECT mv_request_refresh('mv_chains_discovery')"))
        user_id = conn.execute(sa.text("SELECT user_id FROM user_dashboard_stats ORDER BY user_id LIMIT 1")).scalar()
        conn.execute(sa.text("UPDATE user_dashboard_stats SET total_upvotes_received = total_upvotes_received + 7 "
                             "WHERE user_id = :u"), {"u": user_id})
    client = make_redis_client(redis_url)
    try:
        result = run_reconciliation(demo_engine, client, ReconcileOptions(auto_fix=False, tables=("user_dashboard_stats",)),
                                    out=lambda line: None)
    finally:
        client.close()
    assert result.found == 1, result.as_dict()
    return {"reconcile": result}


def test_metrics_parse_and_report_the_bookkeeping(prepared, demo_database_url, demo_engine, redis_url):
    with api_client(demo_database_url, redis_url) as (client, _deps):
        r = client.simulate_get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    parsed = samples(r.text)
    names = families(r.text)
    missing = [s for s in SERIES if s not in names and s != "discovery_http_request_duration_seconds"]
    assert not missing, missing
    assert value(parsed, "discovery_database_up") == 1.0

    with demo_engine.connect() as conn:
        queue = {row.view_name: row for row in conn.execute(sa.text(
            "SELECT view_name, pending_requests, refresh_requested_at FROM mv_refresh_queue"))}
        registered = set(conn.execute(sa.text("SELECT view_name FROM mv_registry")).scalars())
    for view in registered:
        assert value(parsed, "discovery_view_pending_requests", view=view) == queue[view].pending_requests
    assert value(parsed, "discovery_view_pending_requests", view="mv_chains_discovery") >= 1
    assert value(parsed, "discovery_view_staleness_seconds", view="mv_chains_discovery") > 0
    assert value(parsed, "discovery_view_staleness_seconds", view="mv_feed_projects") == 0

    assert value(parsed, "discovery_view_last_refresh_status", view="mv_investors_directory", status="failed") == 1
    assert value(parsed, "discovery_view_last_refresh_status", view="mv_investors_directory", status="completed") == 0
    assert value(parsed, "discovery_view_refreshes_24h", view="mv_investors_directory", status="failed") == 1
    assert value(parsed, "discovery_view_last_refresh_status", view="mv_feed_projects", status="completed") == 1
    assert value(parsed, "discovery_view_refreshes_24h", view="mv_feed_projects", status="completed") >= 1
    assert value(parsed, "discovery_view_last_refresh_duration_seconds", view="mv_feed_projects") >= 0
    assert value(parsed, "discovery_stale_views") == 0

    part = "user_dashboard_stats"
    assert value(parsed, "discovery_reconciliation_discrepancies", part=part, result="found") == 1
    assert value(parsed, "discovery_reconciliation_discrepancies", part=part, result="fixed") == 0
    assert value(parsed, "discovery_reconciliation_discrepancies", part=part, result="unfixed") == 1
    assert value(parsed, "discovery_reconciliation_last_run_status", status="completed") == 1


def test_user_cache_counters_move_with_signed_in_reads(prepared, demo_database_url, demo_engine, redis_url):
    with api_client(demo_database_url, redis_url) as (client, _deps):
        before = samples(client.simulate_get("/metrics").text)
        headers = bearer(token_for(demo_engine, "alice"))
        for _ in range(3):
            assert client.simulate_get("/api/projects", headers=headers).status_code == 200
        after = samples(client.simulate_get("/metrics").text)
    hits = value(after, "discovery_user_cache_hits_total") - value(before, "discovery_user_cache_hits_total")
    misses = value(after, "discovery_user_cache_misses_total") - value(before, "discovery_user_cache_misses_total")
    # The first read may find alice's set cold (a miss that rebuilds it); then it is complete.
    assert hits + misses == 3 and hits >= 2, (hits, misses)


def test_latency_is_labelled_by_route_template_not_raw_path(prepared, demo_database_url, demo_engine, redis_url):
    with demo_engine.connect() as conn:
        ids = list(conn.execute(sa.text("SELECT id::text FROM projects ORDER BY id LIMIT 2")).scalars())
    route = "/api/projects/{project_id:uuid}"
    with api_client(demo_database_url, redis_url) as (client, _deps):
        before = samples(client.simulate_get("/metrics").text)
        for pid in ids:
            assert client.simulate_get(f"/api/projects/{pid}").status_code == 200
        assert client.simulate_get(f"/api/projects/{uuid.uuid4()}").status_code == 404
        probes = [f"/no/such/path/{uuid.uuid4()}" for _ in range(3)]
        for path in probes:
            assert client.simulate_get(path).status_code == 404
        text = client.simulate_get("/metrics").text
    after = samples(text)

    def count(parsed: dict, **labels: str) -> float:
        return parsed.get(("discovery_http_request_duration_seconds_count", tuple(sorted(labels.items()))), 0.0)

    assert count(after, route=route, method="GET", status="200") - count(before, route=route, method="GET",
                                                                          status="200") == 2
    assert count(after, route=route, method="GET", status="404") - count(before, route=route, method="GET",
                                                                          status="404") == 1
    assert count(after, route="unmatched", method="GET", status="404") - count(
        before, route="unmatched", method="GET", status="404") == 3
    # No raw path (ids, probes) ever becomes a label value.
    for (name, labels), _ in after.items():
        if name.startswith("discovery_http_request_duration_seconds"):
            route_label = dict(labels)["route"]
            assert all(pid not in route_label for pid in ids)
            assert not route_label.startswith("/no/such/path")
    # The guide's 200 ms target is a bucket boundary, so "share under 200 ms" is exact.
    assert ("discovery_http_request_duration_seconds_bucket",
            tuple(sorted({"route": route, "method": "GET", "status": "200", "le": "0.2"}.items()))) in after


def test_every_series_is_documented_in_the_readme(prepared, demo_database_url, redis_url):
    """README "Monitoring" names each discovery_* series /metrics serves, and nothing it does not serve."""
    text = README.read_text()
    section = text[text.index("## Monitoring"):]
    section = section[:section.index("\n## ", 1)]
    documented = {re.sub(r"_total$", "", name) for name in re.findall(r"`(discovery_[a-z0-9_]+)", section)}
    with api_client(demo_database_url, redis_url) as (client, _deps):
        served = {re.sub(r"_total$", "", name) for name in families(client.simulate_get("/metrics").text)
                  if name.startswith("discovery_")}
    assert served - documented == set(), "served but not documented"
    assert documented - served == set(), "documented but not served"


def test_a_postgres_that_never_answers_costs_a_bounded_scrape_with_database_up_0(redis_url):
    """A listening socket that never speaks: connect succeeds (the kernel's backlog) and the
    Postgres handshake hangs, as with a stopped or wedged server. The scrape's own deadline ends it."""
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(16)
        port = hole.getsockname()[1]
        settings = Settings.from_env({"DATABASE_URL": f"postgresql://x@127.0.0.1:{port}/db", "REDIS_URL": redis_url,
                                      "HEALTH_TIMEOUT": "0.3"})
        engine = make_engine(settings.database_url, pool_size=1, connect_timeout=5)
        try:
            registry = scrape_registry(settings, Reader(engine, settings))
            started = time.monotonic()
            text = generate_latest(registry).decode()
            took = time.monotonic() - started
        finally:
            engine.dispose()
    parsed = samples(text)
    assert parsed[("discovery_database_up", ())] == 0.0
    assert not any(name.startswith("discovery_view_") for name, _ in parsed)
    assert took < 2.0, took  # the 0.8 s deadline, not the 5 s connect timeout
