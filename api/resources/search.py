"""Search across projects, builders, chains, posts and investors (search_combined)."""

from __future__ import annotations

import falcon

from api.cache import SharedPageCache
from api.db import RequestDb
from api.deps import Deps
from api.freshness import ResponseCache
from api.resources.common import ViewPages, send_page
from api.spec import SearchQuery, SearchResponse, api_spec, responses
from schema.db import queries

VIEW = "mv_search_index"
MAX_RESULTS = 100  # search_combined's own cap


SEARCH_CACHE_MAX_AGE = 300.0  # seconds; see SearchResource


class SearchResource:
    """GET /api/search?q=&type="""

    def __init__(self, deps: Deps) -> None:
        self._deps = deps
        # Its own LRU: search text has many distinct values, and they must not
        # push the feed and leaderboard pages out of the shared cache. Entries
        # live 5 minutes, not the shared cache's 30 s: a search costs 50-800 ms
        # at bench scale (the feed a fraction of a millisecond), and under the
        # mixed load the 30 s expiry alone recomputed every popular query every
        # 30 s per process (most of the database's time). The key holds the
        # index's refresh generation, so an engine refresh is seen at once; only
        # a REFRESH run by hand (no log row) can stay unseen for up to 5 minutes.
        # Shared through Redis as well: every process (and host) computes a
        # search page once per index generation, not once each; at bench scale
        # a miss costs 2-230 ms of one core, a Redis hit well under a millisecond.
        self._pages = ViewPages(deps, ResponseCache(max_entries=4096, max_age=SEARCH_CACHE_MAX_AGE),
                                shared=SharedPageCache(deps.redis, ttl=SEARCH_CACHE_MAX_AGE))
        self._reads = queries("api_reads")

    @api_spec.validate(query=SearchQuery, resp=responses(SearchResponse), tags=["search"])
    def on_get(self, req: falcon.Request, resp: falcon.Response, query: SearchQuery) -> None:
        """Full-text and typo-tolerant search, best first. `type` restricts to one kind.

        `q` is required: 1..200 characters after trimming (NUL characters are removed).
        Offset paging within the best 100 results. Results cannot change between two
        refreshes of mv_search_index, so a repeated search is answered from the
        page cache keyed by the view's generation (per process, then shared in Redis)."""
        wanted = min(query.offset + query.limit + 1, MAX_RESULTS)
        end = query.offset + query.limit

        def fetch(db: RequestDb) -> tuple[list[dict], dict]:
            rows = db.rows(self._reads["search"], {"q": query.q, "type": query.type, "lim": wanted}, prepared=True)
            page = rows[query.offset:end]
            next_offset = end if len(rows) > end and end < MAX_RESULTS else None
            return page, {"count": len(page), "limit": query.limit, "offset": query.offset,
                          "next_offset": next_offset, "q": query.q, "type": query.type}

        page = self._pages.page(req, VIEW, (query.q, query.type, query.limit, query.offset), fetch)
        send_page(self._deps, req, resp, page)
