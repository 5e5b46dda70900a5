"""Errors and authentication through falcon.testing against the demo database.

Claims: every error is {"error": {"code", "message"}} with the right status and
headers (401 + WWW-Authenticate, 405 + Allow); only HS256 tokens with exp and a
user-id subject are accepted; protected routes need a token, admin routes an
admin token; JSON bodies only, bounded, and a rejected request writes nothing;
`python -m api token` looks the user up.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import jwt
import pytest
import redis as redis_lib
import sqlalchemy as sa
from api_helpers import ROOT, SECRET, api_client, bearer, token_for, user_row

from api.auth import issue_token
from schema.db import make_engine

# The HS384/HS512 tokens below are forged on purpose with a short key.
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")


@pytest.fixture(scope="module")
def engine(demo_database_url: str) -> Iterator[sa.Engine]:
    eng = make_engine(demo_database_url, pool_size=2)
    yield eng
    eng.dispose()


@pytest.fixture(scope="module")
def client(demo_database_url: str, redis_url: str):
    with api_client(demo_database_url, redis_url, settings={"max_body_bytes": 4096}) as (c, _deps):
        yield c


@pytest.fixture(scope="module")
def alice(engine) -> str:
    return token_for(engine, "alice")


@pytest.fixture(scope="module")
def project_id(engine) -> str:
    with engine.connect() as conn:
        return str(conn.execute(sa.text("SELECT id FROM mv_feed_projects ORDER BY id LIMIT 1")).scalar())


def counts(engine: sa.Engine) -> tuple[int, ...]:
    """Rows of every table a write could touch, refresh requests included (any write
    to a base table inserts one in the same transaction, so a rejected request that
    wrote anything anywhere shows here)."""
    with engine.connect() as conn:
        return tuple(conn.execute(sa.text(
            "SELECT (SELECT count(*) FROM projects), (SELECT count(*) FROM project_comments), "
            "(SELECT count(*) FROM project_upvotes), (SELECT count(*) FROM mv_refresh_requests), "
            "(SELECT count(*) FROM user_dashboard_stats_deltas)")).one())


def assert_error(r, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert set(r.json) == {"error"}
    assert r.json["error"]["code"] == code
    assert isinstance(r.json["error"]["message"], str) and r.json["error"]["message"]


# -- Falcon's own errors in our shape ------------------------------------------------


def test_unknown_path_is_404_json(client):
    assert_error(client.simulate_get("/api/nope"), 404, "not_found")
    assert_error(client.simulate_get("/"), 404, "not_found")


def test_wrong_method_is_405_json_with_allow(client):
    r = client.simulate_delete("/api/projects")
    assert_error(r, 405, "method_not_allowed")
    assert set(r.headers["allow"].replace(" ", "").split(",")) >= {"GET", "POST"}
    r = client.simulate_put("/api/leaderboard/projects")
    assert_error(r, 405, "method_not_allowed")
    assert "GET" in r.headers["allow"]


# -- authentication ------------------------------------------------------------------


PROTECTED = [("GET", "/api/dashboard"), ("GET", "/api/conversations"), ("GET", "/api/intros/stats"),
             ("POST", "/api/projects"), ("POST", "/api/admin/refresh/mv_feed_projects")]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_protected_route_without_token_is_401_with_challenge(client, method, path):
    r = client.simulate_request(method, path)
    assert_error(r, 401, "unauthorized")
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_upvote_and_comment_need_a_token(client, project_id):
    assert_error(client.simulate_post(f"/api/projects/{project_id}/upvote"), 401, "unauthorized")
    assert_error(client.simulate_post(f"/api/projects/{project_id}/comments", json={"body": "x"}), 401, "unauthorized")


def _forge(header: dict, claims: dict, key: bytes = b"") -> str:
    def b64(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    sig = base64.urlsafe_b64encode(key).decode().rstrip("=")
    return f"{b64(header)}.{b64(claims)}.{sig}"


def bad_tokens(user_id: str) -> dict[str, str]:
    now = int(time.time())
    good = {"sub": user_id, "role": "builder", "admin": False, "exp": now + 600}
    return {
        "alg_none": _forge({"alg": "none", "typ": "JWT"}, good),
        "alg_none_upper": _forge({"alg": "None", "typ": "JWT"}, good),
        "hs512": jwt.encode(good, SECRET, algorithm="HS512"),
        "hs384": jwt.encode(good, SECRET, algorithm="HS384"),
        "wrong_secret": jwt.encode(good, "another-secret-" + "y" * 32, algorithm="HS256"),
        "expired": jwt.encode({**good, "exp": now - 3600}, SECRET, algorithm="HS256"),
        "no_exp": jwt.encode({k: v for k, v in good.items() if k != "exp"}, SECRET, algorithm="HS256"),
        "no_sub": jwt.encode({k: v for k, v in good.items() if k != "sub"}, SECRET, algorithm="HS256"),
        "sub_not_uuid": jwt.encode({**good, "sub": "alice"}, SECRET, algorithm="HS256"),
        "garbage": "not.a.token",
        "empty_parts": "..",
        "tampered": jwt.encode(good, SECRET, algorithm="HS256")[:-2] + "xx",
    }


TOKEN_KINDS = ["alg_none", "alg_none_upper", "empty_parts", "expired", "garbage", "hs384", "hs512", "no_exp",
               "no_sub", "sub_not_uuid", "tampered", "wrong_secret"]


def test_token_kinds_cover_every_forgery():
    assert sorted(bad_tokens(str(uuid.uuid4()))) == TOKEN_KINDS


@pytest.mark.parametrize("kind", TOKEN_KINDS)
def test_bad_token_is_401_everywhere(client, engine, kind):
    token = bad_tokens(user_row(engine, "alice").id)[kind]
    for method, path in [("GET", "/api/dashboard"), ("GET", "/api/projects")]:
        r = client.simulate_request(method, path, headers=bearer(token))
        assert_error(r, 401, "unauthorized")
        assert "invalid_token" in r.headers["www-authenticate"]


@pytest.mark.parametrize("header", ["Basic YWxpY2U6cHc=", "Bearer", "Bearer ", "Token abc", "bearer"])
def test_malformed_authorization_header_is_401(client, header):
    r = client.simulate_get("/api/dashboard", headers={"Authorization": header})
    assert_error(r, 401, "unauthorized")
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_rs256_token_is_refused_even_with_the_secret_as_key(client, engine):
    # Algorithm confusion: a token claiming RS256/ES256 must never be checked with the HMAC secret.
    uid = user_row(engine, "alice").id
    token = _forge({"alg": "RS256", "typ": "JWT"}, {"sub": uid, "exp": int(time.time()) + 600}, b"sig")
    assert_error(client.simulate_get("/api/dashboard", headers=bearer(token)), 401, "unauthorized")


def test_valid_token_works_on_a_protected_route(client, engine, alice):
    r = client.simulate_get("/api/conversations", headers=bearer(alice))
    assert r.status_code == 200, r.text


def test_lowercase_bearer_scheme_is_accepted(client, alice):
    r = client.simulate_get("/api/conversations", headers={"Authorization": f"bearer {alice}"})
    assert r.status_code == 200


def test_admin_route_with_member_token_is_403(client, alice):
    assert_error(client.simulate_post("/api/admin/refresh/mv_feed_projects", headers=bearer(alice)),
                 403, "forbidden")


def test_rejected_admin_refresh_enqueues_nothing(client, engine, alice, redis_url):
    queue = redis_lib.Redis.from_url(redis_url)
    try:
        before = queue.llen("refresh")
        assert_error(client.simulate_post("/api/admin/refresh/mv_feed_projects", headers=bearer(alice)),
                     403, "forbidden")
        assert_error(client.simulate_post("/api/admin/refresh/mv_feed_projects"), 401, "unauthorized")
        admin = token_for(engine, "admin", admin=True)
        assert_error(client.simulate_post("/api/admin/refresh/users", headers=bearer(admin)), 404, "not_found")
        assert queue.llen("refresh") == before
    finally:
        queue.close()


# -- one user's data is never another's ---------------------------------------------------


@pytest.mark.parametrize("path", ["/api/dashboard", "/api/intros/stats", "/api/conversations"])
def test_another_users_data_is_never_readable(client, engine, alice, path):
    """Only the token's subject decides whose data a /me route reads: query
    parameters and headers naming another user change nothing, and a token
    naming that user but not signed with the server's secret is refused."""
    me, bob = user_row(engine, "alice").id, user_row(engine, "bob").id
    own = client.simulate_get(path, headers=bearer(alice))
    assert own.status_code == 200, own.text
    for query in [f"user_id={bob}", f"user={bob}", "username=bob", f"sub={bob}", f"id={bob}"]:
        r = client.simulate_get(path, query_string=query,
                                headers={**bearer(alice), "X-User-Id": bob, "X-Forwarded-User": "bob"})
        assert r.status_code in (200, 422), r.text
        if r.status_code == 200:
            assert r.json["data"] == own.json["data"]
    if path == "/api/conversations":
        assert all(c["other_user_id"] != me for c in own.json["data"])
    else:
        assert own.json["data"]["user_id"] == me
    forged = jwt.encode({"sub": bob, "role": "builder", "admin": False, "exp": int(time.time()) + 600},
                        "not-the-server-secret-" + "z" * 32, algorithm="HS256")
    assert_error(client.simulate_get(path, headers=bearer(forged)), 401, "unauthorized")


def test_admin_claim_for_a_user_is_403_without_it(client, engine):
    # The admin user's token minted WITHOUT --admin is a member token.
    token = token_for(engine, "admin", admin=False)
    assert_error(client.simulate_post("/api/admin/refresh/mv_feed_projects", headers=bearer(token)),
                 403, "forbidden")


def test_token_for_a_deleted_or_unknown_user_cannot_write(client, engine, project_id):
    ghost = issue_token(SECRET, str(uuid.uuid4()), role="member", admin=False)
    before = counts(engine)
    assert_error(client.simulate_post(f"/api/projects/{project_id}/upvote", headers=bearer(ghost)),
                 401, "unauthorized")
    assert_error(client.simulate_post("/api/projects", json={"title": "x"}, headers=bearer(ghost)),
                 401, "unauthorized")
    assert counts(engine) == before


# -- request bodies -------------------------------------------------------------------


def test_non_json_body_is_415_and_writes_nothing(client, engine, alice, project_id):
    before = counts(engine)
    for ctype in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None]:
        headers = {**bearer(alice)}
        if ctype:
            headers["Content-Type"] = ctype
        r = client.simulate_post("/api/projects", body='{"title": "sneaky"}', headers=headers)
        assert_error(r, 415, "unsupported_media_type")
        r = client.simulate_post(f"/api/projects/{project_id}/comments", body='{"body": "sneaky"}', headers=headers)
        assert_error(r, 415, "unsupported_media_type")
    assert counts(engine) == before


def test_json_with_charset_is_accepted(client, alice, project_id):
    r = client.simulate_post(f"/api/projects/{project_id}/comments", body=json.dumps({"body": "charset ok"}),
                             headers={**bearer(alice), "Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 201, r.text


def test_oversized_body_is_413_and_writes_nothing(client, engine, alice, project_id):
    before = counts(engine)
    big = json.dumps({"body": "x" * 5000})
    r = client.simulate_post(f"/api/projects/{project_id}/comments", body=big,
                             headers={**bearer(alice), "Content-Type": "application/json"})
    assert_error(r, 413, "payload_too_large")
    r = client.simulate_post("/api/projects", body=json.dumps({"title": "t", "description": "d" * 5000}),
                             headers={**bearer(alice), "Content-Type": "application/json"})
    assert_error(r, 413, "payload_too_large")
    assert counts(engine) == before


@pytest.mark.parametrize("body", ['{"title": ', "{'title': 'x'}", "[1, 2", "\xff\xfe", "nul\x00"])
def test_malformed_json_is_400_and_writes_nothing(client, engine, alice, body):
    before = counts(engine)
    r = client.simulate_post("/api/projects", body=body.encode("latin-1"),
                             headers={**bearer(alice), "Content-Type": "application/json"})
    assert_error(r, 400, "bad_request")
    assert counts(engine) == before


@pytest.mark.parametrize("payload", [
    {"title": 5},
    {"title": ["x"]},
    {"title": None},
    {},
    {"title": "   "},
    {"title": "\x00"},
    {"title": "x" * 201},
    {"title": "ok", "tags": "not-a-list"},
    {"title": "ok", "tags": [""]},
    {"title": "ok", "tags": ["t"] * 11},
    {"title": "ok", "url": "javascript:alert(1)"},
    {"title": "ok", "chain_id": "not-a-uuid"},
    {"title": "ok", "unexpected": 1},
    {"title": "\ud800"},
    [1, 2],
    "just a string",
])
def test_wrong_types_are_422_and_write_nothing(client, engine, alice, payload):
    before = counts(engine)
    r = client.simulate_post("/api/projects", body=json.dumps(payload),
                             headers={**bearer(alice), "Content-Type": "application/json"})
    assert_error(r, 422, "validation_error")
    assert r.json["error"]["details"]
    assert counts(engine) == before


def test_unknown_ids_in_writes_are_404_and_write_nothing(client, engine, alice):
    before = counts(engine)
    missing = str(uuid.uuid4())
    assert_error(client.simulate_post(f"/api/projects/{missing}/upvote", headers=bearer(alice)), 404, "not_found")
    assert_error(client.simulate_post(f"/api/projects/{missing}/comments", json={"body": "x"}, headers=bearer(alice)),
                 404, "not_found")
    assert_error(client.simulate_post("/api/projects", json={"title": "x", "chain_id": missing},
                                      headers=bearer(alice)), 404, "not_found")
    assert counts(engine) == before


def test_nul_in_comment_body_is_stripped(client, engine, alice, project_id):
    r = client.simulate_post(f"/api/projects/{project_id}/comments", json={"body": "a\x00b"}, headers=bearer(alice))
    assert r.status_code == 201
    assert r.json["data"]["body"] == "ab"


# -- the token command ------------------------------------------------------------------


def run_token(database_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": database_url, "JWT_SECRET": SECRET, "APP_ENV": "test",
           "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "api", "token", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_token_command_prints_a_token_for_a_known_user(demo_database_url, engine, client):
    out = run_token(demo_database_url, "--user", "alice", "--ttl", "120")
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["sub"] == user_row(engine, "alice").id
    assert claims["admin"] is False and claims["role"] == "builder"
    assert 100 <= claims["exp"] - time.time() <= 130
    assert client.simulate_get("/api/dashboard", headers=bearer(token)).status_code == 200


def test_token_command_admin(demo_database_url, client):
    out = run_token(demo_database_url, "--user", "admin", "--admin")
    assert out.returncode == 0, out.stderr
    assert jwt.decode(out.stdout.strip(), SECRET, algorithms=["HS256"])["admin"] is True


def test_token_command_refuses_unknown_user_and_non_admin(demo_database_url):
    out = run_token(demo_database_url, "--user", "nobody_here")
    assert out.returncode == 1 and out.stdout == ""
    assert "no user named 'nobody_here'" in out.stderr
    out = run_token(demo_database_url, "--user", "carol", "--admin")
    assert out.returncode == 1 and "not an admin" in out.stderr


def test_token_command_with_database_down_is_one_line(tmp_path):
    out = run_token("postgresql://postgres@127.0.0.1:1/nothing", "--user", "alice")
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "cannot connect to PostgreSQL" in out.stderr


def test_token_cache_still_enforces_expiry():
    from api.auth import Principal, TokenCache
    from api.errors import ApiError

    cache = TokenCache()
    who = Principal(str(uuid.uuid4()), "member", False)
    cache.put("t-live", who, int(time.time()) + 60)
    cache.put("t-dead", who, int(time.time()) - 60)
    assert cache.get("t-live") == who
    assert cache.get("unknown") is None
    with pytest.raises(ApiError) as err:
        cache.get("t-dead")
    assert err.value.status_code == 401


def test_a_cached_token_with_one_byte_changed_is_verified_again(client, alice):
    assert client.simulate_get("/api/conversations", headers=bearer(alice)).status_code == 200
    forged = alice[:-1] + ("A" if alice[-1] != "A" else "B")
    assert_error(client.simulate_get("/api/conversations", headers=bearer(forged)), 401, "unauthorized")


def test_database_down_is_503_json_not_500(redis_url):
    dead = "postgresql://postgres@127.0.0.1:1/nothing"
    with api_client(dead, redis_url) as (c, _deps):
        token = issue_token(SECRET, str(uuid.uuid4()), role="member", admin=False)
        for path, headers in [("/api/projects", {}), ("/api/dashboard", bearer(token)),
                              ("/api/search?q=x", {}), (f"/api/projects/{uuid.uuid4()}", {})]:
            p, _, q = path.partition("?")
            r = c.simulate_get(p, query_string=q, headers=headers)
            assert_error(r, 503, "service_unavailable")
            assert "database" in r.json["error"]["message"]
            assert r.headers["retry-after"]
