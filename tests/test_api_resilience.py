"""The API while its Postgres goes away and comes back (a private cluster this test stops).

Claims: pages already cached for the view's last known generation keep
answering 200 while Postgres is down (the view cannot change meanwhile, and
X-Data-Age keeps counting); uncached reads and writes answer 503 JSON with
Retry-After, quickly, never 500; after Postgres restarts, requests succeed
again without restarting the API (dead pooled connections are replaced).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from api_helpers import api_client, bearer, token_for, wait_for

from deploy.embedded import EmbeddedPostgres, free_port
from schema.db import make_engine, raw_connection
from schema.migrate import migrate


@pytest.fixture(scope="module")
def private_pg(work_dir: Path) -> Iterator[tuple[EmbeddedPostgres, str]]:
    pg = EmbeddedPostgres(work_dir / f"pg-resilience-{free_port()}", free_port(),
                          settings={"fsync": "off", "synchronous_commit": "off", "shared_buffers": "64MB"})
    pg.start()
    with raw_connection(pg.admin_url(), autocommit=True) as conn, conn.cursor() as cur:
        cur.execute('CREATE DATABASE "resilience"')
    url = pg.admin_url("resilience")
    migrate(url, out=lambda line: None)
    from schema.seed import seed

    seed(url, "demo", seed=7, out=lambda line: None)
    engine = make_engine(url, pool_size=1)
    with engine.begin() as conn:  # a logged refresh of every view: a known generation
        conn.execute(sa.text("INSERT INTO mv_refresh_requests (view_name) SELECT view_name FROM mv_registry"))
        conn.execute(sa.text("SELECT * FROM process_mv_refresh_queue()"))
    engine.dispose()
    yield pg, url
    pg.destroy()


def test_postgres_down_then_back(private_pg, redis_url):
    pg, url = private_pg
    engine = make_engine(url, pool_size=1)
    token = token_for(engine, "alice")
    engine.dispose()
    with api_client(url, redis_url, memo_ttl=0.2) as (client, _deps):
        feed = client.simulate_get("/api/projects")
        assert feed.status_code == 200 and feed.json["meta"]["as_of"] is not None
        assert client.simulate_get("/api/dashboard", headers=bearer(token)).status_code == 200

        pg.stop("immediate")
        time.sleep(0.3)  # past the generation memo's TTL: the next read tries Postgres
        started = time.monotonic()
        cached = client.simulate_get("/api/projects")
        assert cached.status_code == 200
        assert cached.json == feed.json  # the last known generation's page
        assert int(cached.headers["X-Data-Age"]) >= int(feed.headers["X-Data-Age"])
        for path, headers in [("/api/dashboard", bearer(token)), ("/api/search?q=zzqx", {})]:
            p, _, q = path.partition("?")
            r = client.simulate_get(p, query_string=q, headers=headers)
            assert r.status_code == 503, r.text
            assert r.json["error"]["code"] == "service_unavailable" and r.headers["retry-after"]
        pid = feed.json["data"][0]["id"]
        r = client.simulate_post(f"/api/projects/{pid}/upvote", headers=bearer(token))
        assert r.status_code == 503 and r.json["error"]["code"] == "service_unavailable"
        assert time.monotonic() - started < 30  # bounded by connect timeouts, not a hang

        pg.start()
        wait_for(lambda: client.simulate_get("/api/dashboard", headers=bearer(token)).status_code == 200,
                 timeout=30, interval=0.2, what="the API to use the restarted Postgres")
        assert client.simulate_get("/api/search", params={"q": "blockchain"}).status_code == 200
        r = client.simulate_post(f"/api/projects/{pid}/upvote", headers=bearer(token))
        assert r.status_code == 200, r.text
