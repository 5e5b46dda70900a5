"""The OpenAPI document and schemathesis against a real gunicorn.

Claims: /openapi.json documents every /api route with its parameters, request
bodies, every response status and the error shape (422 included); schemathesis
(`st run --checks all`, a few hundred generated requests, as the admin so every
operation is reachable) finds no 5xx and no response that breaks the document.

One allowance, scoped to the listings with a `cursor` parameter: a made-up
cursor is a schema-valid string but is answered 400 by design (cursors are
opaque), so for those operations schemathesis' positive-data check accepts 400.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from api_helpers import ROOT, Gunicorn, api_client, http, token_for

from schema.db import make_engine

SCHEMATHESIS_CONFIG = """
[[operations]]
include-method = "GET"
include-path-regex = "^/api/(projects|leaderboard/projects|leaderboard/builders|chains|chains/\\\\{chain_id\\\\}/posts|investors|conversations)$"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404"]
"""


@pytest.fixture(scope="module")
def engine(demo_database_url: str) -> Iterator[sa.Engine]:
    eng = make_engine(demo_database_url, pool_size=2)
    yield eng
    eng.dispose()


@pytest.fixture(scope="module")
def server(demo_database_url: str, redis_url: str, tmp_path_factory) -> Iterator[Gunicorn]:
    g = Gunicorn(demo_database_url, redis_url, workers=2, threads=4).start(tmp_path_factory.mktemp("st"))
    yield g
    g.stop()


def test_document_covers_every_api_route_with_the_error_shape(demo_database_url, redis_url):
    with api_client(demo_database_url, redis_url) as (client, _deps):
        doc = client.simulate_get("/openapi.json").json
    assert doc["openapi"].startswith("3.")
    paths = doc["paths"]
    expected = {
        "/api/projects": {"get", "post"}, "/api/projects/{project_id}": {"get"},
        "/api/projects/{project_id}/upvote": {"post"}, "/api/projects/{project_id}/comments": {"post"},
        "/api/leaderboard/projects": {"get"}, "/api/leaderboard/builders": {"get"},
        "/api/dashboard": {"get"}, "/api/conversations": {"get"}, "/api/intros/stats": {"get"},
        "/api/search": {"get"}, "/api/chains": {"get"}, "/api/chains/{chain_id}/posts": {"get"},
        "/api/investors": {"get"}, "/api/admin/refresh/{view_name}": {"post"},
    }
    for path, methods in expected.items():
        assert path in paths, path
        assert set(paths[path]) >= methods, path
        for method in methods:
            op = paths[path][method]
            assert "200" in op["responses"] or "201" in op["responses"] or "202" in op["responses"]
            for code in ("400", "401", "503"):
                assert code in op["responses"], (path, method, code)
            err = op["responses"]["401"]["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
            assert doc["components"]["schemas"][err]["required"] == ["error"]
    search = {p["name"]: p for p in paths["/api/search"]["get"]["parameters"]}
    assert search["q"]["required"] is True
    assert search["type"]["schema"]["anyOf"][0]["enum"] == ["project", "builder", "chain", "post", "investor"]
    assert "422" in paths["/api/search"]["get"]["responses"]
    assert paths["/api/dashboard"]["get"]["security"] == [{"bearerAuth": []}]
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


def test_schemathesis_finds_no_server_error_and_no_schema_violation(server, engine, tmp_path: Path):
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    token = token_for(engine, "admin", admin=True)
    assert http("GET", server.url("/api/dashboard"), headers={"Authorization": f"Bearer {token}"}).status == 200
    cmd = [str(Path(sys.executable).parent / "st"), "--config-file", str(config), "--no-color", "run",
           server.url("/openapi.json"), "--checks", "all", "-H", f"Authorization: Bearer {token}",
           "--max-examples", os.environ.get("API_SCHEMATHESIS_EXAMPLES", "25"), "--seed", "20261101",
           "--request-timeout", "10", "--continue-on-failure", "--warnings", "off"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    summary = out.stdout[-6000:]
    generated = re.search(r"(\d+) generated", out.stdout)
    assert generated, summary
    assert int(generated.group(1)) >= 300, summary  # "a few hundred" at least
    assert out.returncode == 0, summary
    assert "Traceback" not in server.log() and "unhandled error" not in server.log(), server.log()
