"""The API served by a real gunicorn (as `make up` runs it) against real Postgres and Redis.

Claims: every endpoint answers on demo data over HTTP; 50 concurrent upvote
toggles by different users on one project leave upvote_count exact after a
refresh and every user's user_has_upvoted right; a user's concurrent double
click ends with Postgres and Redis agreeing; with the API's Redis stopped,
reads still answer 200 with user_has_upvoted from Postgres.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis as redis_lib
import sqlalchemy as sa
from api_helpers import SECRET, Gunicorn, bearer, http, refresh_all, token_for, wait_for

from api.auth import issue_token
from deploy.embedded import EmbeddedRedis, free_port
from schema.db import make_engine


@pytest.fixture(scope="module")
def engine(demo_database_url: str) -> Iterator[sa.Engine]:
    eng = make_engine(demo_database_url, pool_size=4)
    yield eng
    eng.dispose()


@pytest.fixture(scope="module")
def server(demo_database_url: str, redis_url: str, tmp_path_factory) -> Iterator[Gunicorn]:
    g = Gunicorn(demo_database_url, redis_url, workers=2, threads=4).start(tmp_path_factory.mktemp("gunicorn"))
    yield g
    g.stop()


def q1(engine: sa.Engine, sql: str, **params: object) -> object:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar()


def test_every_read_endpoint_answers_over_http(server, engine):
    token = token_for(engine, "alice")
    chain = q1(engine, "SELECT chain_id FROM mv_chain_posts GROUP BY chain_id ORDER BY count(*) DESC LIMIT 1")
    pid = q1(engine, "SELECT id FROM mv_project_details ORDER BY id LIMIT 1")
    paths = ["/api/projects", "/api/projects?sort=newest", f"/api/projects/{pid}", "/api/leaderboard/projects",
             "/api/leaderboard/builders", "/api/search?q=blockchain", "/api/search?q=defi&type=project",
             "/api/chains", f"/api/chains/{chain}/posts", "/api/investors", "/openapi.json"]
    for path in paths:
        for headers in ({}, bearer(token)):
            r = http("GET", server.url(path), headers=headers)
            assert r.status == 200, (path, r.body)
            assert r.headers["content-type"].startswith("application/json")
            if path != "/openapi.json":
                assert set(r.body) == {"data", "meta"}
    for path in ["/api/dashboard", "/api/conversations", "/api/intros/stats"]:
        assert http("GET", server.url(path)).status == 401
        r = http("GET", server.url(path), headers=bearer(token))
        assert r.status == 200, (path, r.body)
        assert set(r.body) == {"data", "meta"}
    r = http("GET", server.url("/apidoc/swagger"))
    assert r.status == 200


def test_every_write_endpoint_answers_over_http(server, engine, redis_url):
    """POST happy paths through gunicorn: create a project, comment on it, upvote it, admin refresh."""
    token = token_for(engine, "alice")
    r = http("POST", server.url("/api/projects"), headers=bearer(token),
             body={"title": "Over HTTP", "description": "made through gunicorn", "tags": ["http"]})
    assert r.status == 201, r.body
    pid = r.body["data"]["id"]
    assert r.headers["location"] == f"/api/projects/{pid}"
    assert http("GET", server.url(f"/api/projects/{pid}")).body["data"]["title"] == "Over HTTP"
    r = http("POST", server.url(f"/api/projects/{pid}/comments"), headers=bearer(token), body={"body": "first"})
    assert r.status == 201, r.body
    r = http("POST", server.url(f"/api/projects/{pid}/upvote"), headers=bearer(token))
    assert r.status == 200 and r.body["data"]["upvoted"] is True, r.body
    assert q1(engine, "SELECT count(*) FROM project_comments WHERE project_id = :p", p=pid) == 1
    assert q1(engine, "SELECT count(*) FROM project_upvotes WHERE project_id = :p", p=pid) == 1
    admin = token_for(engine, "admin", admin=True)
    rds = redis_lib.Redis.from_url(redis_url)
    queued = rds.llen("refresh")
    r = http("POST", server.url("/api/admin/refresh/mv_feed_projects"), headers=bearer(admin))
    assert r.status == 202 and r.body["data"]["task_id"], r.body
    assert rds.llen("refresh") == queued + 1  # on the broker, for a worker to take
    rds.delete("refresh")
    rds.close()


def test_errors_over_http_are_json(server, engine):
    cases = [("GET", "/api/nope", 404), ("DELETE", "/api/projects", 405), ("GET", "/api/projects?limit=500", 422),
             ("GET", f"/api/projects/{uuid.uuid4()}", 404), ("GET", "/api/projects/12", 404),
             ("GET", "/api/dashboard", 401), ("GET", "/api/search", 422), ("GET", "/api/projects?cursor=bogus", 400)]
    for method, path, status in cases:
        r = http(method, server.url(path))
        assert r.status == status, (path, r.body)
        assert set(r.body) == {"error"} and {"code", "message"} <= set(r.body["error"])
    r = http("DELETE", server.url("/api/projects"))
    assert "GET" in r.headers["allow"] and "POST" in r.headers["allow"]
    token = token_for(engine, "carol")
    r = http("POST", server.url("/api/admin/refresh/mv_feed_projects"), headers=bearer(token))
    assert r.status == 403
    big = {"title": "x", "description": "y" * 70_000}
    r = http("POST", server.url("/api/projects"), headers=bearer(token), body=big)
    assert r.status == 413 and r.body["error"]["code"] == "payload_too_large"


def test_fifty_concurrent_toggles_leave_the_count_exact(server, engine, redis_url):
    """50 users upvote one project at once while Redis is flushed under them; the count is
    exact after a refresh, every user's user_has_upvoted is right at every read, and a
    flush before or after the refresh changes no answer."""
    with engine.connect() as conn:
        users = [str(u) for u in conn.execute(sa.text(
            "SELECT id FROM users WHERE NOT is_deleted ORDER BY id DESC LIMIT 50")).scalars()]
        pid = str(conn.execute(sa.text(
            "SELECT f.id FROM mv_feed_projects f WHERE NOT EXISTS (SELECT 1 FROM project_upvotes pu "
            "WHERE pu.project_id = f.id AND pu.user_id = ANY(CAST(:u AS uuid[]))) ORDER BY f.id LIMIT 1"),
            {"u": users}).scalar())
    refresh_all(engine)
    before = q1(engine, "SELECT upvote_count FROM mv_feed_projects WHERE id = :p", p=pid)
    tokens = {u: issue_token(SECRET, u, role="member", admin=False) for u in users}
    rds = redis_lib.Redis.from_url(redis_url)

    def details(u: str):
        return http("GET", server.url(f"/api/projects/{pid}"), headers=bearer(tokens[u])).body["data"]

    def everyone(fn):
        with ThreadPoolExecutor(max_workers=10) as pool:
            return list(pool.map(fn, users))

    # Every user's set is loaded (complete) before the burst, so the toggles update live sets.
    assert not any(d["user_has_upvoted"] for d in everyone(details))
    assert all(rds.exists(f"user:upvotes:{u}:complete") for u in users)
    barrier = threading.Barrier(len(users) + 1)
    flushes = 0

    def toggle(u: str):
        barrier.wait()
        return http("POST", server.url(f"/api/projects/{pid}/upvote"), headers=bearer(tokens[u]))

    with ThreadPoolExecutor(max_workers=len(users)) as pool:
        futures = [pool.submit(toggle, u) for u in users]
        barrier.wait()
        while not all(f.done() for f in futures):  # Redis flushed again and again mid-burst
            rds.flushdb()
            flushes += 1
            time.sleep(0.005)
        answers = [f.result() for f in futures]
    assert flushes >= 1
    assert all(a.status == 200 for a in answers), [a.body for a in answers if a.status != 200]
    assert all(a.body["data"]["upvoted"] is True for a in answers)
    counts = sorted(a.body["data"]["upvote_count"] for a in answers)
    assert counts[-1] == before + 50  # the last committer saw every vote
    assert q1(engine, "SELECT count(*) FROM project_upvotes WHERE project_id = :p", p=pid) == before + 50
    # Whatever Redis kept or rebuilt equals Postgres, and every user sees their vote.
    assert all(d["user_has_upvoted"] is True for d in everyone(details))
    for u in users:
        if rds.exists(f"user:upvotes:{u}:complete"):
            assert rds.sismember(f"user:upvotes:{u}", pid), u
    seen = [d["user_has_upvoted"] for d in everyone(details)]
    rds.flushdb()
    assert [d["user_has_upvoted"] for d in everyone(details)] == seen  # a flush changes no answer

    refresh_all(engine)
    assert q1(engine, "SELECT upvote_count FROM mv_feed_projects WHERE id = :p", p=pid) == before + 50
    assert q1(engine, "SELECT upvote_count FROM project_stats_live WHERE project_id = :p", p=pid) == before + 50

    def everyone_sees_exact_count():
        seen = everyone(details)
        assert all(d["user_has_upvoted"] is True for d in seen)  # right at every moment
        return all(d["upvote_count"] == before + 50 for d in seen)

    # Each worker re-reads the view's generation at most every 0.5 s; once it has,
    # nobody's own vote is counted twice (view count + own adjustment).
    wait_for(everyone_sees_exact_count, timeout=5, what="every user to see the refreshed count")
    settled = [(d["upvote_count"], d["user_has_upvoted"]) for d in everyone(details)]
    rds.flushdb()
    assert [(d["upvote_count"], d["user_has_upvoted"]) for d in everyone(details)] == settled
    anon = http("GET", server.url(f"/api/projects/{pid}")).body["data"]
    assert anon["upvote_count"] == before + 50
    rds.close()


def test_double_click_ends_consistent_between_postgres_and_redis(server, engine, redis_url):
    token = token_for(engine, "admin")
    uid = q1(engine, "SELECT id::text FROM users WHERE username = 'admin'")
    with engine.connect() as conn:
        projects = [str(p) for p in conn.execute(sa.text(
            "SELECT id FROM mv_feed_projects ORDER BY id DESC LIMIT 20")).scalars()]
    # Warm the user's set so the clicks go through the Redis update path.
    http("GET", server.url("/api/projects"), headers=bearer(token))
    for pid in projects:
        barrier = threading.Barrier(2)

        def click(_: int, pid: str = pid, barrier: threading.Barrier = barrier):
            barrier.wait()
            return http("POST", server.url(f"/api/projects/{pid}/upvote"), headers=bearer(token))

        with ThreadPoolExecutor(max_workers=2) as pool:
            a, b = pool.map(click, range(2))
        assert a.status == b.status == 200
        assert {a.body["data"]["upvoted"], b.body["data"]["upvoted"]} == {True, False}  # serialized
    r = redis_lib.Redis.from_url(redis_url, decode_responses=True)
    with engine.connect() as conn:
        truth = {str(p) for p in conn.execute(sa.text(
            "SELECT project_id FROM project_upvotes WHERE user_id = :u"), {"u": uid}).scalars()}
    assert r.exists(f"user:upvotes:{uid}:complete")
    assert r.smembers(f"user:upvotes:{uid}") == truth
    for pid in projects:
        d = http("GET", server.url(f"/api/projects/{pid}"), headers=bearer(token)).body["data"]
        assert d["user_has_upvoted"] is (pid in truth)
    r.close()


def test_reads_answer_from_postgres_when_redis_is_stopped(demo_database_url, engine, tmp_path_factory):
    work = Path(tmp_path_factory.mktemp("redis-stop"))
    redis_server = EmbeddedRedis(work, free_port())
    redis_server.start()
    g = Gunicorn(demo_database_url, redis_server.url(0), workers=2, threads=2).start(work)
    try:
        token = token_for(engine, "alice")
        uid = q1(engine, "SELECT id::text FROM users WHERE username = 'alice'")
        warm = http("GET", g.url("/api/projects?limit=100"), headers=bearer(token))
        assert warm.status == 200
        redis_server.stop()
        with engine.connect() as conn:
            truth = {str(p) for p in conn.execute(sa.text(
                "SELECT project_id FROM project_upvotes WHERE user_id = :u"), {"u": uid}).scalars()}
        for path in ["/api/projects?limit=100", "/api/leaderboard/projects?limit=100"]:
            r = http("GET", g.url(path), headers=bearer(token))
            assert r.status == 200, r.body
            for d in r.body["data"]:
                assert d["user_has_upvoted"] is (d["id"] in truth)
        # A write still commits (Postgres is the truth) and the next read shows it.
        pid = warm.body["data"][0]["id"]
        t = http("POST", g.url(f"/api/projects/{pid}/upvote"), headers=bearer(token))
        assert t.status == 200
        d = http("GET", g.url(f"/api/projects/{pid}"), headers=bearer(token)).body["data"]
        assert d["user_has_upvoted"] is t.body["data"]["upvoted"]
        assert http("GET", g.url("/api/projects?limit=5")).status == 200  # anonymous too
    finally:
        g.stop()
        redis_server.stop()
