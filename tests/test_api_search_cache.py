"""Search pages shared between API processes through Redis, and computed once at a time.

Claims: a search page computed by one process is served by another from Redis
without a query (same bytes); a flushed or unreachable Redis only means the page
is computed again (same answer, never an error); a refresh of mv_search_index
(new generation) is never answered with the old page; concurrent misses for one
page in a process run the query once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import falcon.testing
import pytest
import redis as redis_lib
import sqlalchemy as sa
from api_helpers import api_client
from prometheus_client import REGISTRY

from api.freshness import ResponseCache
from api.resources.common import ViewPages
from deploy.embedded import free_port
from schema.db import make_engine

VIEW = "mv_search_index"
PATH = "/api/search"


def counted(result: str) -> float:
    return REGISTRY.get_sample_value("discovery_response_cache_total", {"view": VIEW, "result": result}) or 0.0


@pytest.fixture(scope="module")
def engine(demo_database_url: str) -> Iterator[sa.Engine]:
    eng = make_engine(demo_database_url, pool_size=2)
    yield eng
    eng.dispose()


def search(client: falcon.testing.TestClient, q: str) -> falcon.testing.Result:
    r = client.simulate_get(PATH, params={"q": q})
    assert r.status_code == 200, r.text
    return r


def test_a_page_computed_by_one_process_is_served_to_another_from_redis(demo_database_url, redis_url):
    with api_client(demo_database_url, redis_url) as (a, _), api_client(demo_database_url, redis_url) as (b, _):
        misses, shared = counted("miss"), counted("shared_hit")
        first = search(a, "blockchain")
        assert first.json["data"], "demo data has blockchain projects"
        assert (counted("miss"), counted("shared_hit")) == (misses + 1, shared)
        second = search(b, "blockchain")
        assert second.content == first.content
        assert (counted("miss"), counted("shared_hit")) == (misses + 1, shared + 1)
        assert second.headers.get("X-Data-Age") is not None


def test_flushed_or_unreachable_redis_recomputes_the_same_answer(demo_database_url, redis_url):
    with api_client(demo_database_url, redis_url) as (a, _):
        expected = search(a, "web3").content
    redis_lib.Redis.from_url(redis_url).flushdb()
    with api_client(demo_database_url, redis_url) as (b, _):
        misses = counted("miss")
        assert search(b, "web3").content == expected
        assert counted("miss") == misses + 1
    dead = f"redis://127.0.0.1:{free_port()}/0"
    with api_client(demo_database_url, dead) as (c, _):
        assert search(c, "web3").content == expected
        assert search(c, "web3").content == expected  # now from the process's own cache


def test_a_new_index_generation_is_not_served_the_old_page(demo_database_url, redis_url, engine):
    word = "zyxwvutsrq"
    with api_client(demo_database_url, redis_url) as (a, deps_a), api_client(demo_database_url, redis_url) as (b, deps_b):
        assert search(a, word).json["data"] == []
        with engine.begin() as conn:
            owner = conn.execute(sa.text("SELECT id FROM users WHERE NOT is_deleted ORDER BY username LIMIT 1")).scalar()
            conn.execute(sa.text("INSERT INTO projects (user_id, title, description) VALUES (:u, :t, 'x')"),
                         {"u": owner, "t": f"The {word} project"})
        with engine.begin() as conn:
            conn.execute(sa.text("SELECT * FROM process_mv_refresh_queue()")).all()
        for deps in (deps_a, deps_b):
            deps.freshness.invalidate()
        titles = [d["title"] for d in search(b, word).json["data"]]
        assert titles == [f"The {word} project"]
        assert [d["title"] for d in search(a, word).json["data"]] == titles


def test_concurrent_misses_of_one_page_run_the_query_once(demo_database_url, redis_url):
    with api_client(demo_database_url, redis_url) as (_, deps):
        pages = ViewPages(deps, ResponseCache())
        calls = 0
        calls_lock = threading.Lock()

        def fetch(db: object) -> tuple[list, dict]:
            nonlocal calls
            with calls_lock:
                calls += 1
            time.sleep(0.2)  # an expensive query: the others arrive while it runs
            return [{"n": 1}], {}

        req = falcon.testing.create_req()
        req.context.db = None
        bodies: list[bytes] = []
        threads = [threading.Thread(target=lambda: bodies.append(pages.page(req, VIEW, ("same",), fetch).body))
                   for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert calls == 1
        assert len(bodies) == 8 and len(set(bodies)) == 1
        pages.page(req, VIEW, ("other",), fetch)
        assert calls == 2
