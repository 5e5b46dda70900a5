"""The signed-in user's pages: dashboard, conversations, intro stats (phase 1 tables).

Claims: each answers the signed-in user's own exact numbers (checked against
counts from the base tables), never another user's rows, with X-Data-Age 0.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from api_helpers import api_client, bearer, token_for, user_row

from schema.db import make_engine


@pytest.fixture(scope="module")
def engine(demo_database_url: str) -> Iterator[sa.Engine]:
    eng = make_engine(demo_database_url, pool_size=2)
    yield eng
    eng.dispose()


@pytest.fixture(scope="module")
def client(demo_database_url: str, redis_url: str):
    with api_client(demo_database_url, redis_url) as (c, _deps):
        yield c


def q1(engine: sa.Engine, sql: str, **params: object) -> object:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar()


@pytest.mark.parametrize("username", ["alice", "bob", "carol", "admin"])
def test_dashboard_is_the_users_exact_numbers(client, engine, username):
    uid = user_row(engine, username).id
    r = client.simulate_get("/api/dashboard", headers=bearer(token_for(engine, username)))
    assert r.status_code == 200, r.text
    assert r.headers["X-Data-Age"] == "0"
    d = r.json["data"]
    assert d["user_id"] == uid and d["username"] == username
    assert d["project_count"] == q1(engine, "SELECT count(*) FROM projects WHERE user_id = :u", u=uid)
    assert d["chains_joined"] == q1(engine, "SELECT count(*) FROM chain_members WHERE user_id = :u", u=uid)
    assert d["total_upvotes_received"] == q1(engine, """
        SELECT count(*) FROM project_upvotes pu JOIN projects p ON p.id = pu.project_id
        WHERE p.user_id = :u AND NOT p.is_deleted""", u=uid)
    sent = q1(engine, "SELECT count(*) FROM intro_requests WHERE requester_id = :u AND NOT is_deleted", u=uid)
    assert d["intro_requests"]["requests_sent"] == sent


def test_conversations_are_only_the_users_own_and_page_through_all(client, engine):
    uid = user_row(engine, "bob").id
    token = token_for(engine, "bob")
    seen, cursor = [], None
    for _ in range(100):
        params = {"limit": 7, **({"cursor": cursor} if cursor else {})}
        r = client.simulate_get("/api/conversations", params=params, headers=bearer(token))
        assert r.status_code == 200, r.text
        seen += r.json["data"]
        cursor = r.json["meta"]["next_cursor"]
        if not cursor:
            break
    ids = [c["conversation_id"] for c in seen]
    assert len(ids) == len(set(ids))
    with engine.connect() as conn:
        mine = {str(x) for x in conn.execute(sa.text(
            "SELECT id FROM conversations WHERE (user1_id = :u OR user2_id = :u) AND NOT is_deleted"),
            {"u": uid}).scalars()}
    assert set(ids) == mine and mine
    stamps = [c["last_message_at"] or "" for c in seen]
    assert stamps == sorted(stamps, reverse=True) or "" in stamps
    for c in seen:
        assert c["other_user_id"] != uid
        n = q1(engine, "SELECT count(*) FROM messages WHERE conversation_id = :c AND NOT is_deleted",
               c=c["conversation_id"])
        assert c["message_count"] == n


def test_intro_stats_match_the_base_table(client, engine):
    uid = user_row(engine, "bob").id  # bob is an investor: requests received
    r = client.simulate_get("/api/intros/stats", headers=bearer(token_for(engine, "bob")))
    assert r.status_code == 200
    d = r.json["data"]
    assert d["user_id"] == uid
    received = q1(engine, """
        SELECT count(*) FROM intro_requests ir JOIN investors i ON i.id = ir.investor_id
        WHERE i.user_id = :u AND NOT ir.is_deleted AND ir.status <> 'withdrawn'""", u=uid)
    assert received > 0
    assert d["requests_received"] == received
    assert d["requests_received"] == d["received_pending"] + d["received_accepted"] + d["received_declined"]
