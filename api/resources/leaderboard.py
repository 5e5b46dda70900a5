"""Leaderboards: top projects and top builders, read from their views by rank."""

from __future__ import annotations

import falcon

from api.db import RequestDb
from api.deps import Deps
from api.pagination import decode_cursor, page_meta
from api.resources.common import ViewPages, send_page
from api.spec import LeaderboardBuildersResponse, LeaderboardProjectsResponse, PageQuery, api_spec, responses
from schema.db import queries


class _RankedResource:
    view = ""
    kind = ""
    query_name = ""
    overlay = False

    def __init__(self, deps: Deps) -> None:
        self._deps = deps
        self._pages = ViewPages(deps)
        self._reads = queries("api_reads")

    def _answer(self, req: falcon.Request, resp: falcon.Response, query: PageQuery) -> None:
        after = decode_cursor(self.kind, query.cursor)
        limit = query.limit

        def fetch(db: RequestDb) -> tuple[list[dict], dict]:
            rows = db.rows(self._reads[self.query_name], {"after_rank": after[0] if after else 0, "lim": limit + 1})
            next_cursor = page_meta(rows, limit, self.kind, lambda r: (r["rank"],))
            rows = rows[:limit]
            return rows, {"count": len(rows), "limit": limit, "next_cursor": next_cursor}

        page = self._pages.page(req, self.view, (limit, query.cursor or ""), fetch)
        send_page(self._deps, req, resp, page, user_overlay=self.overlay)


class LeaderboardProjectsResource(_RankedResource):
    """GET /api/leaderboard/projects"""

    view = "mv_leaderboard_projects"
    kind = "lb_projects"
    query_name = "leaderboard_projects"
    overlay = True

    @api_spec.validate(query=PageQuery, resp=responses(LeaderboardProjectsResponse), tags=["leaderboards"])
    def on_get(self, req: falcon.Request, resp: falcon.Response, query: PageQuery) -> None:
        """Top 1000 projects by upvotes (rank 1 first). Signed in: `user_has_upvoted` per row."""
        self._answer(req, resp, query)


class LeaderboardBuildersResource(_RankedResource):
    """GET /api/leaderboard/builders"""

    view = "mv_leaderboard_builders"
    kind = "lb_builders"
    query_name = "leaderboard_builders"

    @api_spec.validate(query=PageQuery, resp=responses(LeaderboardBuildersResponse), tags=["leaderboards"])
    def on_get(self, req: falcon.Request, resp: falcon.Response, query: PageQuery) -> None:
        """Top 1000 builders by upvotes received on their live projects."""
        self._answer(req, resp, query)
