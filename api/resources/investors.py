"""The investors directory."""

from __future__ import annotations

import falcon

from api.db import RequestDb
from api.deps import Deps
from api.pagination import decode_cursor, page_meta
from api.resources.common import ViewPages, send_page
from api.spec import InvestorsResponse, PageQuery, api_spec, responses
from schema.db import queries

VIEW = "mv_investors_directory"


class InvestorsResource:
    """GET /api/investors"""

    def __init__(self, deps: Deps) -> None:
        self._deps = deps
        self._pages = ViewPages(deps)
        self._reads = queries("api_reads")

    @api_spec.validate(query=PageQuery, resp=responses(InvestorsResponse), tags=["investors"])
    def on_get(self, req: falcon.Request, resp: falcon.Response, query: PageQuery) -> None:
        """Investors from mv_investors_directory, most intro requests received first."""
        after = decode_cursor("investors", query.cursor)
        limit = query.limit

        def fetch(db: RequestDb) -> tuple[list[dict], dict]:
            params = {"after_n": after[0] if after else None, "after_id": after[1] if after else None,
                      "lim": limit + 1}
            rows = db.rows(self._reads["investors"], params)
            next_cursor = page_meta(rows, limit, "investors", lambda r: (r["intro_requests_received"], r["id"]))
            rows = rows[:limit]
            return rows, {"count": len(rows), "limit": limit, "next_cursor": next_cursor}

        page = self._pages.page(req, VIEW, (limit, query.cursor or ""), fetch)
        send_page(self._deps, req, resp, page)
