"""Writes through falcon.testing: upvote toggle, new projects, comments, admin refresh.

Claims: the toggle follows the guide (upvote, or remove if already upvoted),
decided by Postgres; the user's own change shows at once (user_has_upvoted and
their upvote_count) before the view refreshes, and is neither lost nor counted
twice after it; created things answer 201, are readable at once and reach the
views with the next refresh; the admin refresh goes to the broker by task name
(503 quickly when the broker is down).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest
import redis as redis_lib
import sqlalchemy as sa
from api_helpers import api_client, bearer, refresh_all, token_for, user_row, wait_for

from schema.db import make_engine


@pytest.fixture(scope="module")
def engine(demo_database_url: str) -> Iterator[sa.Engine]:
    eng = make_engine(demo_database_url, pool_size=2)
    yield eng
    eng.dispose()


@pytest.fixture(scope="module")
def client(demo_database_url: str, redis_url: str):
    # memo_ttl 0: every request sees the newest generation (the tests refresh views by hand).
    with api_client(demo_database_url, redis_url, memo_ttl=0.0) as (c, _deps):
        yield c


def q1(engine: sa.Engine, sql: str, **params: object) -> object:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar()


def pick_project(engine: sa.Engine, username: str, upvoted: bool) -> str:
    """A feed project the user has (or has not) upvoted."""
    cond = "EXISTS" if upvoted else "NOT EXISTS"
    return str(q1(engine, f"""
        SELECT f.id FROM mv_feed_projects f
        WHERE {cond} (SELECT 1 FROM project_upvotes pu JOIN users u ON u.id = pu.user_id
                      WHERE u.username = :u AND pu.project_id = f.id)
        ORDER BY f.upvote_count DESC, f.id LIMIT 1""", u=username))


def feed_item(client, pid: str, headers: dict | None = None) -> dict:
    r = client.simulate_get(f"/api/projects/{pid}", headers=headers or {})
    assert r.status_code == 200, r.text
    return r.json["data"]


def test_upvote_toggle_project_page_counts_are_exact_at_once_for_everyone(client, engine):
    """The project page reads its counts live (project_stats_live): no refresh needed, the
    same count for every reader, and only user_has_upvoted is per user."""
    token = token_for(engine, "carol")
    pid = pick_project(engine, "carol", upvoted=False)
    refresh_all(engine)
    count = q1(engine, "SELECT count(*) FROM project_upvotes WHERE project_id = :p", p=pid)
    assert feed_item(client, pid)["upvote_count"] == count

    r = client.simulate_post(f"/api/projects/{pid}/upvote", headers=bearer(token))
    assert r.status_code == 200, r.text
    assert r.json["data"] == {"project_id": pid, "upvoted": True, "upvote_count": count + 1}

    # Before any refresh: everyone sees the new count; the voter also sees the flag.
    mine = feed_item(client, pid, bearer(token))
    assert mine["user_has_upvoted"] is True and mine["upvote_count"] == count + 1
    anon = feed_item(client, pid)
    assert anon["upvote_count"] == count + 1 and "user_has_upvoted" not in anon
    other = feed_item(client, pid, bearer(token_for(engine, "bob")))
    assert other["upvote_count"] == count + 1

    refresh_all(engine)
    assert feed_item(client, pid)["upvote_count"] == count + 1
    mine = feed_item(client, pid, bearer(token))
    assert mine["user_has_upvoted"] is True and mine["upvote_count"] == count + 1  # not counted twice

    # Toggle back: removed, right before and after the refresh.
    r = client.simulate_post(f"/api/projects/{pid}/upvote", headers=bearer(token))
    assert r.json["data"] == {"project_id": pid, "upvoted": False, "upvote_count": count}
    mine = feed_item(client, pid, bearer(token))
    assert mine["user_has_upvoted"] is False and mine["upvote_count"] == count
    refresh_all(engine)
    mine = feed_item(client, pid, bearer(token))
    assert mine["user_has_upvoted"] is False and mine["upvote_count"] == count


def test_feed_page_reflects_own_upvote_immediately(client, engine):
    token = token_for(engine, "alice")
    refresh_all(engine)
    page = client.simulate_get("/api/projects", params={"limit": 50}, headers=bearer(token)).json["data"]
    target = next(p for p in page if not p["user_has_upvoted"])
    r = client.simulate_post(f"/api/projects/{target['id']}/upvote", headers=bearer(token))
    assert r.json["data"]["upvoted"] is True
    page2 = client.simulate_get("/api/projects", params={"limit": 50}, headers=bearer(token)).json["data"]
    after = next(p for p in page2 if p["id"] == target["id"])
    assert after["user_has_upvoted"] is True
    assert after["upvote_count"] == target["upvote_count"] + 1
    lb = client.simulate_get("/api/leaderboard/projects", params={"limit": 100}, headers=bearer(token)).json["data"]
    for row in lb:
        if row["id"] == target["id"]:
            assert row["user_has_upvoted"] is True


def test_toggle_matches_postgres_when_redis_was_flushed(client, engine, redis_url):
    token = token_for(engine, "bob")
    uid = user_row(engine, "bob").id
    pid = pick_project(engine, "bob", upvoted=True)
    r = redis_lib.Redis.from_url(redis_url)
    r.flushdb()
    resp = client.simulate_post(f"/api/projects/{pid}/upvote", headers=bearer(token))
    assert resp.json["data"]["upvoted"] is False  # decided by Postgres: it was upvoted
    assert q1(engine, "SELECT count(*) FROM project_upvotes WHERE user_id = :u AND project_id = :p",
              u=uid, p=pid) == 0
    r.flushdb()
    assert feed_item(client, pid, bearer(token))["user_has_upvoted"] is False
    r.close()


def test_redis_flushed_mid_test_changes_no_answer(client, engine, redis_url):
    users = ["alice", "bob", "carol", "admin"]
    tokens = {u: token_for(engine, u) for u in users}

    def answers() -> dict:
        out = {}
        for u in users:
            for path in ("/api/projects", "/api/leaderboard/projects"):
                data = client.simulate_get(path, params={"limit": 100}, headers=bearer(tokens[u])).json["data"]
                out[(u, path)] = [(d["id"], d["upvote_count"], d["user_has_upvoted"]) for d in data]
        return out

    before = answers()
    r = redis_lib.Redis.from_url(redis_url)
    r.flushdb()
    r.close()
    assert answers() == before


def test_create_project_is_readable_at_once_and_reaches_the_feed(client, engine):
    token = token_for(engine, "alice")
    chain = str(q1(engine, "SELECT id FROM chains WHERE NOT is_deleted ORDER BY id LIMIT 1"))
    title = f"Test project {uuid.uuid4().hex[:6]}"
    r = client.simulate_post("/api/projects", headers=bearer(token), json={
        "title": f"  {title}  ", "description": "A description", "tags": ["rust", "db"],
        "url": "https://example.com/x", "chain_id": chain})
    assert r.status_code == 201, r.text
    created = r.json["data"]
    assert created["title"] == title and created["tags"] == ["rust", "db"] and created["chain_id"] == chain
    assert r.headers["location"] == f"/api/projects/{created['id']}"
    # Readable at once, from the base row until the view catches up.
    r = client.simulate_get(f"/api/projects/{created['id']}", headers=bearer(token))
    assert r.status_code == 200
    assert r.json["meta"]["source"] == "live"
    assert r.json["data"]["title"] == title and r.json["data"]["user_has_upvoted"] is False
    assert q1(engine, "SELECT count(*) FROM mv_refresh_queue WHERE view_name = 'mv_feed_projects' "
                      "AND status = 'pending'") == 1
    refresh_all(engine)
    r = client.simulate_get(f"/api/projects/{created['id']}")
    assert r.json["meta"]["source"] == "view"
    newest = client.simulate_get("/api/projects", params={"sort": "newest", "limit": 5}).json["data"]
    assert newest[0]["id"] == created["id"]


def test_comment_is_counted_after_refresh(client, engine):
    token = token_for(engine, "bob")
    pid = pick_project(engine, "bob", upvoted=False)
    refresh_all(engine)
    before = feed_item(client, pid)["comment_count"]
    r = client.simulate_post(f"/api/projects/{pid}/comments", headers=bearer(token), json={"body": "Nice work!"})
    assert r.status_code == 201, r.text
    assert r.json["data"]["body"] == "Nice work!" and r.json["data"]["project_id"] == pid
    refresh_all(engine)
    assert feed_item(client, pid)["comment_count"] == before + 1


def test_admin_refresh_enqueues_by_task_name_on_the_refresh_queue(client, engine, redis_url):
    r = redis_lib.Redis.from_url(redis_url)
    r.delete("refresh")
    token = token_for(engine, "admin", admin=True)
    resp = client.simulate_post("/api/admin/refresh/mv_leaderboard_projects", headers=bearer(token))
    assert resp.status_code == 202, resp.text
    data = resp.json["data"]
    assert data["view"] == "mv_leaderboard_projects" and data["queue"] == "refresh"
    messages = [json.loads(m) for m in r.lrange("refresh", 0, -1)]
    assert len(messages) == 1
    headers = messages[0]["headers"]
    assert headers["task"] == "tasks.refresh_view" and headers["id"] == data["task_id"]
    assert headers["argsrepr"] == "['mv_leaderboard_projects']" and headers["kwargsrepr"] == "{'manual': True}"
    r.delete("refresh")
    r.close()


def test_admin_refresh_of_unknown_view_is_404_naming_known_views(client, engine, redis_url):
    token = token_for(engine, "admin", admin=True)
    for name in ["mv_nope", "users", "mv_feed_projects; DROP TABLE users", "%27"]:
        resp = client.simulate_post(f"/api/admin/refresh/{name}", headers=bearer(token))
        assert resp.status_code == 404, resp.text
        assert "mv_feed_projects" in resp.json["error"]["message"]
        assert "mv_feed_projects" in resp.json["error"]["details"]["known_views"]


def test_admin_refresh_with_broker_down_is_503_fast(demo_database_url, redis_url, engine):
    with api_client(demo_database_url, redis_url, broker_url="redis://127.0.0.1:1/0") as (c, _deps):
        token = token_for(engine, "admin", admin=True)
        started = time.monotonic()
        resp = c.simulate_post("/api/admin/refresh/mv_feed_projects", headers=bearer(token))
        assert resp.status_code == 503, resp.text
        assert resp.json["error"]["code"] == "service_unavailable"
        assert "broker" in resp.json["error"]["message"]
        assert time.monotonic() - started < 5  # generous bound: "not a hang", not a timing target


def test_dashboard_reflects_a_new_project_at_once(client, engine):
    token = token_for(engine, "carol")
    r = client.simulate_get("/api/dashboard", headers=bearer(token))
    assert r.status_code == 200, r.text
    before = r.json["data"]["project_count"]
    client.simulate_post("/api/projects", headers=bearer(token), json={"title": "Carol's project"})
    after = wait_for(lambda: client.simulate_get("/api/dashboard", headers=bearer(token)).json["data"],
                     what="dashboard")
    assert after["project_count"] == before + 1
