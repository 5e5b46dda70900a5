"""Search across projects, builders, chains, posts and investors (search_combined)."""

from __future__ import annotations

import falcon

from api.deps import Deps
from api.resources.common import data_age_header, rows_of, send
from api.spec import SearchQuery, SearchResponse, api_spec, responses
from schema.db import queries

VIEW = "mv_search_index"
MAX_RESULTS = 100  # search_combined's own cap


class SearchResource:
    """GET /api/search?q=&type="""

    def __init__(self, deps: Deps) -> None:
        self._deps = deps
        self._reads = queries("api_reads")

    @api_spec.validate(query=SearchQuery, resp=responses(SearchResponse), tags=["search"])
    def on_get(self, req: falcon.Request, resp: falcon.Response, query: SearchQuery) -> None:
        """Full-text and typo-tolerant search, best first. `type` restricts to one kind.

        `q` is required: 1..200 characters after trimming (NUL characters are removed).
        Offset paging within the best 100 results. Not cached: search text has
        too many distinct values for a page cache to pay."""
        db = req.context.db
        state = self._deps.freshness.state(VIEW, lambda: db.conn)
        wanted = min(query.offset + query.limit + 1, MAX_RESULTS)
        rows = rows_of(db.execute(self._reads["search"], {"q": query.q, "type": query.type, "lim": wanted}))
        db.end_read()
        end = query.offset + query.limit
        page = rows[query.offset:end]
        next_offset = end if len(rows) > end and end < MAX_RESULTS else None
        meta = {"view": VIEW, "as_of": state.completed_at, "count": len(page), "limit": query.limit,
                "offset": query.offset, "next_offset": next_offset, "q": query.q, "type": query.type}
        data_age_header(self._deps, resp, state)
        send(resp, {"data": page, "meta": meta})
