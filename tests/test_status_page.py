"""``GET /status`` in a real headless Chromium against a real gunicorn.

Claims: the page loads with no console error, no uncaught exception and no
failed load; it is self-contained (every resource the browser fetched is the
page itself: no CDN, font or image); it shows every view registered in
mv_registry with its state (a failed refresh red, a pending request amber),
the failure with its error, the queue depth and the reconciliation history;
and it refreshes itself in place: a request made after it loaded shows up
without a reload. A full-page screenshot is kept as tests/artifacts/status-page.png.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from api_helpers import Gunicorn, http
from chromium import Chromium

from api.cache import make_redis_client
from tasks.reconciliation import ReconcileOptions, run_reconciliation

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def stack(demo_database_url: str, demo_engine: sa.Engine, redis_url: str,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gunicorn, Path]]:
    """Views refreshed, one refresh failed, one view pending, two reconciliation runs (report, then fix)."""
    with demo_engine.begin() as conn:
        conn.execute(sa.text("SELECT * FROM process_mv_refresh_queue()"))
        log_id = conn.execute(sa.text("SELECT mv_refresh_begin('mv_investors_directory', 'manual', 'test')")).scalar()
    with demo_engine.begin() as conn:
        conn.execute(sa.text("SELECT mv_refresh_fail(:id, 'boom: injected by the status page test')"), {"id": log_id})
    with demo_engine.begin() as conn:
        conn.execute(sa.text("UPDATE user_dashboard_stats SET total_upvotes_received = total_upvotes_received + 3 "
                             "WHERE user_id = (SELECT user_id FROM user_dashboard_stats ORDER BY user_id LIMIT 1)"))
    client = make_redis_client(redis_url)
    try:
        for auto_fix in (False, True):
            run_reconciliation(demo_engine, client, ReconcileOptions(auto_fix=auto_fix, tables=("user_dashboard_stats",)),
                               out=lambda line: None)
    finally:
        client.close()
    with demo_engine.begin() as conn:
        conn.execute(sa.text("SELECT mv_request_refresh('mv_chains_discovery')"))
    logs = tmp_path_factory.mktemp("status-page")
    api = Gunicorn(demo_database_url, redis_url, workers=1).start(logs)
    try:
        yield api, logs
    finally:
        api.stop()


def test_status_page_in_headless_chromium(stack, demo_engine, artifacts_dir):
    api, logs = stack
    with demo_engine.connect() as conn:
        registered = set(conn.execute(sa.text("SELECT view_name FROM mv_registry")).scalars())
    assert len(registered) >= 8

    with Chromium(logs) as browser:
        browser.navigate(api.url("/status?refresh=2"))
        shown = browser.evaluate("[...document.querySelectorAll('#views tr[data-view]')].map(e => e.dataset.view)")
        assert set(shown) == registered and len(shown) == len(registered)
        states = browser.evaluate(
            "Object.fromEntries([...document.querySelectorAll('#views tr[data-view]')]"
            ".map(e => [e.dataset.view, e.dataset.state]))")
        assert states["mv_investors_directory"] == "failed"
        assert states["mv_chains_discovery"] == "pending"
        assert states["mv_feed_projects"] == "fresh"
        # Colour by state: the failed view's badge is red, the fresh one's green.
        colours = browser.evaluate(
            "Object.fromEntries(['mv_investors_directory', 'mv_feed_projects'].map(v => [v, "
            "getComputedStyle(document.querySelector(`tr[data-view='${v}'] .b`)).backgroundColor]))")
        assert colours["mv_investors_directory"] == "rgb(198, 40, 40)"
        assert colours["mv_feed_projects"] == "rgb(26, 127, 55)"
        failures = browser.evaluate("document.querySelector('#failures').innerText")
        assert "boom: injected by the status page test" in failures
        assert browser.evaluate("document.querySelectorAll('#reconciliation tbody tr').length") == 2
        recon = browser.evaluate("document.querySelector('#reconciliation').innerText")
        assert "report only" in recon and "fix" in recon
        pending_cell = browser.evaluate(
            "document.querySelector(\"tr[data-view='mv_chains_discovery'] td.n\").innerText")
        assert int(pending_cell) >= 1

        browser.screenshot(artifacts_dir / "status-page.png")

        # Auto-refresh in place: a request made now appears without navigating.
        with demo_engine.begin() as conn:
            conn.execute(sa.text("SELECT mv_request_refresh('mv_feed_projects')"))
        browser.wait_for("document.querySelector(\"tr[data-view='mv_feed_projects']\").dataset.state === 'pending'",
                         timeout=20, what="the page to refresh itself and show mv_feed_projects pending")
        assert int(browser.evaluate("document.body.dataset.updates")) >= 1
        # Self-contained: the browser fetched nothing but this page.
        resources = browser.evaluate("performance.getEntriesByType('resource').map(e => e.name)")
        assert all(name.startswith(api.url("/status")) for name in resources), resources
        assert browser.console_errors() == []

    png = (artifacts_dir / "status-page.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


def test_status_page_rejects_a_bad_refresh_interval(stack):
    api, _ = stack
    r = http("GET", api.url("/status?refresh=1"))
    assert r.status == 400
    assert r.body["error"]["code"] and "refresh" in r.body["error"]["message"]
