"""Hypothesis through the app: search input and pagination parameters never cause a 5xx.

Claims: for any search text (any Unicode, control characters, NUL, operators of
tsquery and LIKE, very long), any type, limit and offset (numbers out of range,
text, repeated parameters), any sort and any cursor (random text, random
base64, and well-formed cursors of every listing carrying values of the wrong
type, out of range, NaN, far-off dates), on every paginated route, anonymous
and signed in, the answer is a 2xx page ``{data, meta}`` or a 4xx error
``{"error": {"code", "message"}}``, never a 5xx. A page that answers 200 is
bounded by its limit.

The same inputs reach the SQL only as bound parameters (tests/test_api_sql_safety.py).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from urllib.parse import urlencode

import pytest
import sqlalchemy as sa
from api_helpers import api_client, bearer, token_for
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from api.pagination import KEY_TYPES, MAX_LIMIT
from schema.db import make_engine

EXAMPLES = 150
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def engine(demo_database_url: str) -> Iterator[sa.Engine]:
    eng = make_engine(demo_database_url, pool_size=2)
    yield eng
    eng.dispose()


@pytest.fixture(scope="module")
def client(demo_database_url: str, redis_url: str):
    with api_client(demo_database_url, redis_url) as (c, _deps):
        yield c


@pytest.fixture(scope="module")
def token(engine: sa.Engine) -> str:
    return token_for(engine, "alice")


@pytest.fixture(scope="module")
def listings(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        chain = conn.execute(sa.text("SELECT chain_id FROM mv_chain_posts GROUP BY chain_id "
                                     "ORDER BY count(*) DESC LIMIT 1")).scalar()
    return ["/api/projects", "/api/leaderboard/projects", "/api/leaderboard/builders", "/api/chains",
            f"/api/chains/{chain}/posts", "/api/investors", "/api/conversations"]


def check(r, limit: object = None) -> None:
    event(f"status {r.status_code}")
    assert r.status_code < 500, (r.status_code, r.text[:500])
    body = r.json
    if r.status_code >= 400:
        assert set(body) == {"error"} and body["error"]["code"] and body["error"]["message"], body
    else:
        assert set(body) == {"data", "meta"}, body
        if isinstance(body["data"], list):
            cap = int(limit) if isinstance(limit, str) and limit.isdigit() and int(limit) <= MAX_LIMIT else MAX_LIMIT
            assert len(body["data"]) <= cap


ANY_TEXT = st.text(max_size=300)
NUMBERISH = st.one_of(st.integers(-(10**30), 10**30).map(str), st.floats().map(str),
                      st.sampled_from(["", " 5", "5 ", "0x10", "1e3", "٣", "+7", "-0", "NaN", "Infinity"]))
# Mostly absent or in range, so that many requests get past validation to the query.
VALID_LIMIT = st.integers(1, 100).map(str)
LIMIT = st.one_of(st.none(), st.none(), VALID_LIMIT, VALID_LIMIT, st.integers(-5, 130).map(str), NUMBERISH)
OFFSET = st.one_of(st.none(), st.none(), st.integers(0, 99).map(str), st.integers(-5, 130).map(str), NUMBERISH)
KINDS = ["project", "builder", "chain", "post", "investor"]
JSON_VALUE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(10**25), 10**25), st.floats(allow_nan=True),
              st.text(max_size=40),
              st.sampled_from(["0001-01-01T00:00:00+00:00", "9999-12-31T23:59:59.999999+14:00",
                               "2024-02-30T00:00:00+00:00", "2024-01-01", "2024-01-01T00:00:00",
                               "00000000-0000-0000-0000-000000000000", "1e400", "-0.0"])),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=2),
    max_leaves=6,
)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


CURSOR = st.one_of(
    ANY_TEXT,
    st.binary(max_size=200).map(_b64),
    # Well-formed cursors of every listing, with arbitrary values in the key positions.
    st.tuples(st.sampled_from(sorted(KEY_TYPES)), st.lists(JSON_VALUE, max_size=4)).map(
        lambda kv: _b64(json.dumps([kv[0], *kv[1]]).encode())),
    st.lists(JSON_VALUE, max_size=4).map(lambda v: _b64(json.dumps(v).encode())),
)
SORT = st.one_of(st.sampled_from(["trending", "newest", "members", "activity", "TRENDING", ""]), ANY_TEXT)


@FUZZ
@given(q=st.one_of(ANY_TEXT, st.text(alphabet="&|!():*<->'\"\\%_ \t\x00", max_size=60)),
       kind=st.one_of(st.none(), st.none(), st.sampled_from(KINDS), ANY_TEXT),
       limit=LIMIT, offset=OFFSET, signed_in=st.booleans())
def test_search_never_5xx(client, token, q, kind, limit, offset, signed_in) -> None:
    params = {k: v for k, v in {"q": q, "type": kind, "limit": limit, "offset": offset}.items() if v is not None}
    r = client.simulate_get("/api/search", query_string=urlencode(params), headers=bearer(token) if signed_in else {})
    check(r, limit)


@FUZZ
@given(index=st.integers(0, 6), limit=LIMIT, cursor=st.one_of(st.none(), CURSOR),
       sort=st.one_of(st.none(), st.none(), st.none(), SORT), signed_in=st.booleans())
def test_pagination_never_5xx(client, token, listings, index, limit, cursor, sort, signed_in) -> None:
    path = listings[index]
    params = {k: v for k, v in {"limit": limit, "cursor": cursor, "sort": sort}.items() if v is not None}
    signed_in = signed_in or path == "/api/conversations"
    r = client.simulate_get(path, query_string=urlencode(params), headers=bearer(token) if signed_in else {})
    check(r, limit)


@FUZZ
@given(index=st.integers(0, 7), raw=st.text(max_size=200))
def test_raw_query_strings_never_5xx(client, token, listings, index, raw) -> None:
    """Whatever the query string: bad percent-escapes, repeated keys, no values."""
    path = [*listings, "/api/search"][index]
    # The test client refuses a leading "?" (it is not part of a query string).
    r = client.simulate_get(path, query_string=raw.lstrip("?"), headers=bearer(token))
    check(r)


def test_a_real_next_cursor_still_works_after_the_fuzzing(client, listings) -> None:
    """Positive control: the same routes page normally (the fuzzing did not only see errors)."""
    first = client.simulate_get("/api/projects", params={"limit": 3})
    assert first.status_code == 200 and len(first.json["data"]) == 3
    nxt = client.simulate_get("/api/projects", params={"limit": 3, "cursor": first.json["meta"]["next_cursor"]})
    assert nxt.status_code == 200 and nxt.json["data"][0]["id"] != first.json["data"][0]["id"]
