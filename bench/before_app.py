"""The "Before" column of ``make bench``: the same pages computed from the base tables.

A bench-only Falcon app, served by the same gunicorn config as the product
(``gunicorn -c api/gunicorn_conf.py 'bench.before_app:create_app()'``, same
workers and threads), on the same paths as the API so one wrk input file
drives both. It answers as an unoptimized platform would, with no
materialized view, no trigger-kept table, no Redis and no page cache:

  GET /api/projects               trending top 20 counted from project_upvotes and
                                  project_comments, plus user_has_upvoted when signed in
  GET /api/leaderboard/projects   top 20 projects by upvotes counted per request, the same
  GET /api/dashboard              the user's counters from the base tables (signed in)
  GET /api/search?q=              ILIKE over titles and bodies, ranked by upvotes

The SQL is the benchmarks' one definition of "before": bench/read_models.py's
READS and DASHBOARD truth functions, bench/search_latency.py's BEFORE_SQL, and
the API's own per-user upvote query (schema/queries/api_user_cache.sql). Phase 4
indexes exist on the base tables, so this "before" is a generous one.
"""

from __future__ import annotations

import json
from typing import Any

import falcon
import sqlalchemy as sa

from api.auth import bearer_token, decode_token
from bench.read_models import READS
from bench.search_latency import BEFORE_SQL, _like_pattern
from schema.db import make_engine, queries
from schema.settings import Settings

FEED_SQL = dict((name, before) for name, _after, before in READS)["feed: trending, top 20"]
LEADERBOARD_SQL = dict((name, before) for name, _after, before in READS)["leaderboard: projects, top 20"]


def _dumps(value: Any) -> bytes:
    return json.dumps(value, default=str).encode()


class _Page:
    def __init__(self, engine: sa.Engine, secret: str) -> None:
        self._engine = engine
        self._secret = secret
        self._cache_q = queries("api_user_cache")
        self._truth = queries("phase1_truth")

    def _user(self, req: falcon.Request, required: bool) -> str | None:
        token = bearer_token(req)
        if token is None:
            if required:
                raise falcon.HTTPUnauthorized(description="sign in")
            return None
        return decode_token(self._secret, token).user_id

    def _overlay(self, conn: sa.Connection, user: str | None, rows: list[dict]) -> None:
        if user is None or not rows:
            return
        ids = [str(r["id"]) for r in rows]
        upvoted = set(conn.execute(self._cache_q["user_upvoted_among"], {"user_id": user, "ids": ids}).scalars())
        for r in rows:
            r["user_has_upvoted"] = str(r["id"]) in upvoted

    def _ranked(self, req: falcon.Request, resp: falcon.Response, sql: str, columns: tuple[str, ...]) -> None:
        user = self._user(req, required=False)
        with self._engine.connect() as conn:
            rows = [dict(zip(columns, r, strict=True)) for r in conn.exec_driver_sql(sql, {}).all()]
            self._overlay(conn, user, rows)
        resp.data = _dumps({"data": rows, "meta": {"source": "base tables", "count": len(rows)}})


class Feed(_Page):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._ranked(req, resp, FEED_SQL, ("id", "title", "author_username", "chain_name", "upvote_count",
                                           "comment_count"))


class Leaderboard(_Page):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._ranked(req, resp, LEADERBOARD_SQL, ("id", "upvote_count"))


class Dashboard(_Page):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        user = self._user(req, required=True)
        with self._engine.connect() as conn:
            stats = conn.execute(self._truth["user_dashboard_stats_truth"], {"ids": [user]}).mappings().first()
            intros = conn.execute(self._truth["intro_request_stats_truth"], {"ids": [user]}).mappings().first()
        if stats is None:
            raise falcon.HTTPNotFound(description="no such user")
        data = dict(stats)
        data["intro_requests"] = dict(intros) if intros else {}
        resp.data = _dumps({"data": data, "meta": {"source": "base tables"}})


class Search(_Page):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        q = (req.get_param("q") or "").strip()
        if not q:
            raise falcon.HTTPBadRequest(description="q is required")
        with self._engine.connect() as conn:
            rows = [{"kind": k, "id": i, "title": t}
                    for k, i, t in conn.exec_driver_sql(BEFORE_SQL, {"pat": _like_pattern(q)}).all()]
        resp.data = _dumps({"data": rows, "meta": {"source": "base tables", "q": q}})


def create_app(settings: Settings | None = None) -> falcon.App:
    settings = settings or Settings.from_env()
    # Pool sized like the API's (one connection per gunicorn thread, plus overflow).
    engine = make_engine(settings.database_url, pool_size=settings.gunicorn_threads, application_name="bench-before")
    app = falcon.App()
    app.add_route("/api/projects", Feed(engine, settings.jwt_secret))
    app.add_route("/api/leaderboard/projects", Leaderboard(engine, settings.jwt_secret))
    app.add_route("/api/dashboard", Dashboard(engine, settings.jwt_secret))
    app.add_route("/api/search", Search(engine, settings.jwt_secret))
    return app
