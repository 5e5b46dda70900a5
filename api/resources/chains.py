"""Chains (communities): the discovery list and a chain's forum."""

from __future__ import annotations

import uuid

import falcon

from api.db import RequestDb
from api.deps import Deps
from api.errors import not_found
from api.pagination import decode_cursor, page_meta
from api.resources.common import ViewPages, send_page
from api.spec import ChainPostsResponse, ChainsQuery, ChainsResponse, PageQuery, api_spec, responses
from schema.db import queries

CHAINS_VIEW = "mv_chains_discovery"
POSTS_VIEW = "mv_chain_posts"


class ChainsResource:
    """GET /api/chains"""

    def __init__(self, deps: Deps) -> None:
        self._deps = deps
        self._pages = ViewPages(deps)
        self._reads = queries("api_reads")

    @api_spec.validate(query=ChainsQuery, resp=responses(ChainsResponse), tags=["chains"])
    def on_get(self, req: falcon.Request, resp: falcon.Response, query: ChainsQuery) -> None:
        """Chains from mv_chains_discovery, by members (default) or by activity."""
        kind = f"chains_{query.sort}"
        after = decode_cursor(kind, query.cursor)
        limit = query.limit
        count_col = "member_count" if query.sort == "members" else "activity_count"

        def fetch(db: RequestDb) -> tuple[list[dict], dict]:
            params = {"after_n": after[0] if after else None, "after_id": after[1] if after else None,
                      "lim": limit + 1}
            rows = db.rows(self._reads[f"chains_by_{query.sort}"], params)
            next_cursor = page_meta(rows, limit, kind, lambda r: (r[count_col], r["id"]))
            rows = rows[:limit]
            return rows, {"count": len(rows), "limit": limit, "next_cursor": next_cursor, "sort": query.sort}

        page = self._pages.page(req, CHAINS_VIEW, (query.sort, limit, query.cursor or ""), fetch)
        send_page(self._deps, req, resp, page)


class ChainPostsResource:
    """GET /api/chains/{chain_id}/posts"""

    def __init__(self, deps: Deps) -> None:
        self._deps = deps
        self._pages = ViewPages(deps)
        self._reads = queries("api_reads")

    @api_spec.validate(query=PageQuery, resp=responses(ChainPostsResponse, 404), tags=["chains"])
    def on_get(self, req: falcon.Request, resp: falcon.Response, chain_id: uuid.UUID, query: PageQuery) -> None:
        """A chain's forum from mv_chain_posts: pinned posts first, then trending."""
        cid = str(chain_id)
        after = decode_cursor("chain_posts", query.cursor)
        limit = query.limit

        def fetch(db: RequestDb) -> tuple[list[dict], dict]:
            params = {"chain_id": cid, "lim": limit + 1,
                      "after_pinned": after[0] if after else None,
                      "after_score": after[1] if after else None,
                      "after_id": after[2] if after else None}
            rows = db.rows(self._reads["chain_posts"], params)
            next_cursor = page_meta(rows, limit, "chain_posts", lambda r: (r["is_pinned"], r["trending_score"], r["id"]))
            rows = rows[:limit]
            return rows, {"count": len(rows), "limit": limit, "next_cursor": next_cursor, "chain_id": cid}

        page = self._pages.page(req, POSTS_VIEW, (cid, limit, query.cursor or ""), fetch)
        if not page.data and after is None:
            # An empty forum or no such chain? Asked of mv_chains_discovery each
            # time (not cached under mv_chain_posts' generation).
            if not req.context.db.tuples(self._reads["chain_exists"], {"chain_id": cid}, prepared=True):
                raise not_found(f"chain {cid} not found")
        send_page(self._deps, req, resp, page)
