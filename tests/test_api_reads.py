"""Read endpoints through falcon.testing against the demo database and a real Redis.

Claims: every read answers {data, meta} from its view on demo data; pagination is
bounded (limit 1..100) and cursors walk a listing without gaps or repeats;
freshness (meta.as_of, X-Data-Age) comes from mv_refresh_log; validation errors
are 422/400 in the error shape.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from api_helpers import api_client, bearer, refresh_all, token_for, wait_for

from schema.db import make_engine


@pytest.fixture(scope="module")
def engine(demo_database_url: str) -> Iterator[sa.Engine]:
    eng = make_engine(demo_database_url, pool_size=2)
    yield eng
    eng.dispose()


@pytest.fixture(scope="module")
def client(demo_database_url: str, redis_url: str):
    with api_client(demo_database_url, redis_url) as (c, deps):
        yield c


def scalar(engine: sa.Engine, sql: str, **params: object) -> object:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar()


LISTS = [
    ("/api/projects", "mv_feed_projects"),
    ("/api/projects?sort=newest", "mv_feed_projects"),
    ("/api/leaderboard/projects", "mv_leaderboard_projects"),
    ("/api/leaderboard/builders", "mv_leaderboard_builders"),
    ("/api/chains", "mv_chains_discovery"),
    ("/api/chains?sort=activity", "mv_chains_discovery"),
    ("/api/investors", "mv_investors_directory"),
]


@pytest.mark.parametrize(("path", "view"), LISTS)
def test_list_reads_a_full_default_page_from_its_view(client, engine, path, view):
    p, _, q = path.partition("?")
    r = client.simulate_get(p, query_string=q)
    assert r.status_code == 200, r.text
    body = r.json
    assert set(body) == {"data", "meta"}
    assert body["meta"]["view"] == view
    total = scalar(engine, f"SELECT count(*) FROM {view}")  # view names are constants of this test
    assert body["meta"]["count"] == len(body["data"]) == min(20, total)
    assert body["meta"]["limit"] == 20


def test_feed_is_ordered_by_trending_score_and_matches_the_view(client, engine):
    r = client.simulate_get("/api/projects", params={"limit": 10})
    data = r.json["data"]
    scores = [d["trending_score"] for d in data]
    assert scores == sorted(scores, reverse=True)
    with engine.connect() as conn:
        top = [str(x) for x in conn.execute(sa.text(
            "SELECT id FROM mv_feed_projects ORDER BY trending_score DESC, id DESC LIMIT 10")).scalars()]
    assert [d["id"] for d in data] == top
    assert "user_has_upvoted" not in data[0]  # anonymous


@pytest.mark.parametrize("sort", ["trending", "newest"])
def test_feed_names_its_authors_and_chains(client, engine, sort):
    """The view keeps author and chain ids; the page carries their names (looked up by key)."""
    data = client.simulate_get("/api/projects", params={"sort": sort, "limit": 100}).json["data"]
    assert any(d["chain_id"] for d in data), "demo data should put some of these projects in a chain"
    with engine.connect() as conn:
        truth = {str(r.id): r for r in conn.execute(sa.text(
            "SELECT p.id, u.username, u.name, c.name AS chain_name FROM projects p JOIN users u ON u.id = p.user_id "
            "LEFT JOIN chains c ON c.id = p.chain_id WHERE p.id = ANY(CAST(:ids AS uuid[]))"),
            {"ids": [d["id"] for d in data]})}
    assert len(truth) == len(data)
    for d in data:
        t = truth[d["id"]]
        assert (d["author_username"], d["author_name"]) == (t.username, t.name)
        assert d["chain_name"] == (t.chain_name if d["chain_id"] else None)


def test_newest_feed_is_ordered_by_creation_time(client):
    data = client.simulate_get("/api/projects", params={"sort": "newest", "limit": 50}).json["data"]
    created = [d["created_at"] for d in data]
    assert created == sorted(created, reverse=True)


@pytest.mark.parametrize("path", ["/api/projects", "/api/projects?sort=newest", "/api/leaderboard/projects",
                                  "/api/leaderboard/builders", "/api/chains", "/api/chains?sort=activity",
                                  "/api/investors"])
def test_cursor_walks_every_row_once(client, engine, path):
    p, _, q = path.partition("?")
    view = client.simulate_get(p, query_string=q).json["meta"]["view"]
    id_key = "user_id" if view == "mv_leaderboard_builders" else "id"
    seen: list[str] = []
    cursor = None
    for _ in range(200):
        params = {"limit": "100"}
        if cursor:
            params["cursor"] = cursor
        r = client.simulate_get(p, query_string=q + ("&" if q else "") + "&".join(f"{k}={v}" for k, v in params.items()))
        assert r.status_code == 200, r.text
        seen += [d[id_key] for d in r.json["data"]]
        cursor = r.json["meta"]["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen))
    assert len(seen) == scalar(engine, f"SELECT count(*) FROM {view}")


@pytest.mark.parametrize("limit", ["0", "-1", "101", "1000", "abc", "1.5"])
def test_limit_outside_1_to_100_is_422(client, limit):
    r = client.simulate_get("/api/projects", params={"limit": limit})
    assert r.status_code == 422
    assert r.json["error"]["code"] == "validation_error"
    assert "limit" in r.json["error"]["message"]


@pytest.mark.parametrize("limit", ["1", "100"])
def test_limit_bounds_are_inclusive(client, limit):
    r = client.simulate_get("/api/leaderboard/projects", params={"limit": limit})
    assert r.status_code == 200
    assert len(r.json["data"]) == int(limit)


def _cursor(*parts: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(parts)).encode()).decode().rstrip("=")


@pytest.mark.parametrize("cursor", [
    "not-a-cursor",
    _cursor("lb_projects", 20),                      # another listing's cursor
    _cursor("feed_newest", "2026-01-01T00:00:00+00:00", str(uuid.uuid4())),  # another ordering's
    _cursor("feed_trending", "NaN", str(uuid.uuid4())),
    _cursor("feed_trending", 1.5, "x' OR 1=1 --"),
    _cursor("feed_trending", 1.5),
])
def test_bad_or_foreign_cursor_is_400(client, cursor):
    r = client.simulate_get("/api/projects", params={"cursor": cursor})
    assert r.status_code == 400
    assert r.json["error"]["code"] == "bad_request"
    assert "cursor" in r.json["error"]["message"]


def test_unknown_sort_is_422(client):
    assert client.simulate_get("/api/projects", params={"sort": "random"}).status_code == 422
    assert client.simulate_get("/api/chains", params={"sort": "newest"}).status_code == 422


def test_project_details_from_mv_project_details_with_live_counts(client, engine):
    pid = str(scalar(engine, "SELECT id FROM mv_feed_projects ORDER BY upvote_count DESC, id LIMIT 1"))
    r = client.simulate_get(f"/api/projects/{pid}")
    assert r.status_code == 200
    data = r.json["data"]
    assert data["id"] == pid
    assert data["title"] == scalar(engine, "SELECT title FROM mv_project_details WHERE id = :i", i=pid)
    assert data["upvote_count"] == scalar(engine, "SELECT count(*) FROM project_upvotes WHERE project_id = :i", i=pid)
    assert data["comment_count"] == scalar(
        engine, "SELECT count(*) FROM project_comments WHERE project_id = :i AND NOT is_deleted", i=pid)
    assert isinstance(data["tags"], list) and isinstance(data["description"], str)
    assert r.json["meta"]["view"] == "mv_project_details"


@pytest.mark.parametrize("bad", ["123", "not-a-uuid", "00000000-0000-0000-0000-00000000000g", "%00"])
def test_malformed_project_id_is_404_json(client, bad):
    r = client.simulate_get(f"/api/projects/{bad}")
    assert r.status_code == 404
    assert r.json["error"]["code"] == "not_found"


def test_unknown_project_id_is_404_json(client):
    r = client.simulate_get(f"/api/projects/{uuid.uuid4()}")
    assert r.status_code == 404
    assert "not found" in r.json["error"]["message"]


def test_chain_posts_pinned_first_then_trending(client, engine):
    chain = str(scalar(engine, "SELECT chain_id FROM mv_chain_posts GROUP BY chain_id ORDER BY count(*) DESC LIMIT 1"))
    r = client.simulate_get(f"/api/chains/{chain}/posts", params={"limit": 100})
    assert r.status_code == 200
    data = r.json["data"]
    assert data and all(d["chain_id"] == chain for d in data)
    keys = [(d["is_pinned"], d["trending_score"]) for d in data]
    assert keys == sorted(keys, reverse=True)
    with engine.connect() as conn:
        expected = [str(x) for x in conn.execute(sa.text(
            "SELECT id FROM mv_chain_posts WHERE chain_id = :c ORDER BY is_pinned DESC, trending_score DESC LIMIT 100"),
            {"c": chain}).scalars()]
    assert [d["id"] for d in data] == expected


def test_posts_of_unknown_chain_is_404(client):
    r = client.simulate_get(f"/api/chains/{uuid.uuid4()}/posts")
    assert r.status_code == 404
    assert r.json["error"]["code"] == "not_found"


def test_search_finds_a_project_by_title_word(client, engine):
    title = str(scalar(engine, "SELECT title FROM mv_feed_projects ORDER BY upvote_count DESC LIMIT 1"))
    word = max(title.split(), key=len)
    r = client.simulate_get("/api/search", params={"q": word, "type": "project"})
    assert r.status_code == 200, r.text
    assert r.json["data"], r.json
    assert all(d["kind"] == "project" for d in r.json["data"])
    assert any(word.lower() in d["title"].lower() for d in r.json["data"])
    assert r.json["meta"]["q"] == word and r.json["meta"]["type"] == "project"


def test_search_all_kinds_and_offset_paging(client):
    first = client.simulate_get("/api/search", params={"q": "a", "limit": 5})
    assert first.status_code == 200
    r1 = client.simulate_get("/api/search", params={"q": "blockchain", "limit": 5})
    r2 = client.simulate_get("/api/search", params={"q": "blockchain", "limit": 5, "offset": 5})
    both = client.simulate_get("/api/search", params={"q": "blockchain", "limit": 10})
    assert [d["id"] for d in r1.json["data"] + r2.json["data"]] == [d["id"] for d in both.json["data"]]
    if len(both.json["data"]) == 10:
        assert r1.json["meta"]["next_offset"] == 5


@pytest.mark.parametrize(("params", "status"), [
    ({}, 422),                                  # q required
    ({"q": ""}, 422),
    ({"q": "   \t "}, 422),                     # blank after trimming
    ({"q": "\x00\x00"}, 422),                   # only NUL
    ({"q": "x" * 201}, 422),
    ({"q": "ok", "type": "user"}, 422),         # type from a fixed set
    ({"q": "ok", "offset": "100"}, 422),
    ({"q": "ok", "limit": "101"}, 422),
])
def test_search_validation(client, params, status):
    r = client.simulate_get("/api/search", params=params)
    assert r.status_code == status, r.text
    assert r.json["error"]["code"] == "validation_error"


def test_search_strips_nul_and_trims(client):
    r = client.simulate_get("/api/search", params={"q": "  block\x00chain  "})
    assert r.status_code == 200
    assert r.json["meta"]["q"] == "blockchain"
    assert client.simulate_get("/api/search", params={"q": "x" * 200}).status_code == 200


@pytest.mark.parametrize("q", ["'); DROP TABLE users; --", "a & b | !c", "<->:*", "\\", "%_%", "-", "\"unclosed"])
def test_search_takes_any_text_without_error(client, q):
    r = client.simulate_get("/api/search", params={"q": q})
    assert r.status_code == 200, r.text


def test_freshness_comes_from_the_refresh_log(client, engine, demo_database_url):
    # A logged refresh (the guide's SQL fallback) gives the view a new generation.
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE projects SET updated_at = now() WHERE id = (SELECT id FROM projects LIMIT 1)"))
    refresh_all(engine)
    completed = scalar(engine, "SELECT max(refresh_completed_at) FROM mv_refresh_log "
                               "WHERE view_name = 'mv_feed_projects' AND status = 'completed'")
    assert completed is not None

    def fresh():
        r = client.simulate_get("/api/projects", params={"limit": 1})
        return r if r.json["meta"]["as_of"] == completed.isoformat() else None

    # The per-process generation memo is re-read at most every 0.5 s.
    r = wait_for(fresh, timeout=5, what="the memo to see the new refresh")
    age = int(r.headers["X-Data-Age"])
    assert 0 <= age <= 5


def test_signed_in_feed_carries_user_has_upvoted(client, engine):
    token = token_for(engine, "alice")
    with engine.connect() as conn:
        upvoted = {str(x) for x in conn.execute(sa.text(
            "SELECT project_id FROM project_upvotes pu JOIN users u ON u.id = pu.user_id "
            "WHERE u.username = 'alice'")).scalars()}
    r = client.simulate_get("/api/projects", params={"limit": 100}, headers=bearer(token))
    assert r.status_code == 200
    for d in r.json["data"]:
        assert d["user_has_upvoted"] is (d["id"] in upvoted)
    r = client.simulate_get("/api/leaderboard/projects", params={"limit": 100}, headers=bearer(token))
    for d in r.json["data"]:
        assert d["user_has_upvoted"] is (d["id"] in upvoted)


def test_every_response_is_json_with_data_and_meta(client):
    for path in ["/api/projects", "/api/leaderboard/builders", "/api/chains", "/api/investors"]:
        r = client.simulate_get(path)
        assert r.headers["content-type"].startswith("application/json")
        assert isinstance(r.json["data"], list) and isinstance(r.json["meta"], dict)
