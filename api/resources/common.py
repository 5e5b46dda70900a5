"""What every read resource shares: view pages, the per-user overlay, JSON output.

``ViewPages.page`` is the read path of every materialized-view listing:

1. the view's generation from the per-process memo (``ViewFreshness``);
2. the response cache keyed by (view, generation, parameters): a hit costs no
   Postgres and no Redis round trip;
3. on a miss, the named query on the request's lazily checked-out connection.

Signed-in requests for projects then get the user's overlay from Redis
(``user_has_upvoted``, and upvote_count adjusted for the user's own toggles
the view has not caught up with yet; see ``Toggle.count_adjustment``),
spliced into JSON pre-rendered with the cached page (``render_overlay``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import falcon

from api.cache import SharedPageCache
from api.db import RequestDb
from api.deps import Deps
from api.errors import dumps
from api.freshness import ResponseCache, SingleFlight, ViewState
from api.metrics import RESPONSE_CACHE

Rows = list[dict[str, Any]]
# A page's data: a list of rows, or one row (None: not found) for item pages.
Fetch = Callable[[RequestDb], tuple[Any, dict[str, Any]]]


def rows_of(result: Any) -> Rows:
    """Rows of a SQLAlchemy result (the write path) as dicts."""
    keys = list(result.keys())
    return [dict(zip(keys, row, strict=True)) for row in result]


@dataclass
class Page:
    data: Any  # list of rows, or one row / None
    meta: dict[str, Any]
    body: bytes  # the anonymous rendering, served as is on a hit
    created: float
    state: ViewState
    # For signed-in renderings: each project row's JSON without upvote_count and
    # without its closing brace, built once per cached page (see render_overlay).
    _prefixes: list[bytes] | None = field(default=None, repr=False)
    _meta_json: bytes | None = field(default=None, repr=False)

    def prefixes(self) -> tuple[list[bytes], bytes]:
        if self._prefixes is None:
            rows = self.data if isinstance(self.data, list) else [self.data]
            self._meta_json = dumps(self.meta)
            self._prefixes = [dumps({k: v for k, v in r.items() if k != "upvote_count"})[:-1] for r in rows]
        return self._prefixes, self._meta_json  # type: ignore[return-value]


class ViewPages:
    """Cached, generation-keyed pages of materialized views.

    With ``shared`` (pages served as they are, never with a per-user overlay),
    a miss of the process's cache asks Redis before computing, and a computed
    page is stored there for the other processes. Either way one thread per
    process computes a given page at a time (``SingleFlight``)."""

    def __init__(self, deps: Deps, cache: ResponseCache | None = None,
                 shared: SharedPageCache | None = None) -> None:
        self._deps = deps
        self._cache = cache or deps.response_cache
        self._shared = shared
        self._flight = SingleFlight()

    def state(self, view: str) -> ViewState:
        return self._deps.freshness.state(view)

    def _cached(self, key: Hashable, now: float) -> Page | None:
        hit = self._cache.get(key)
        if hit is not None and now - hit.created < self._cache.max_age:
            return hit
        return None

    def page(self, req: falcon.Request, view: str, params: Hashable, fetch: Fetch, *, cache: bool = True) -> Page:
        state = self.state(view)
        key = (view, state.generation, params)
        now = time.monotonic()
        if not cache:
            return self._compute(req, view, state, fetch, now)
        hit = self._cached(key, now)
        if hit is not None:
            RESPONSE_CACHE.labels(view, "hit").inc()
            return hit
        with self._flight.hold(key):
            hit = self._cached(key, time.monotonic())  # computed while this thread waited
            if hit is not None:
                RESPONSE_CACHE.labels(view, "hit").inc()
                return hit
            # The shared key adds the refresh's completion time: generation ids
            # alone could repeat in a restored database sharing this Redis.
            shared_key = (view, state.generation, str(state.completed_at), params)
            body = self._shared.get(shared_key) if self._shared else None
            if body is not None:
                RESPONSE_CACHE.labels(view, "shared_hit").inc()
                page = Page(None, {}, body, time.monotonic(), state)
            else:
                RESPONSE_CACHE.labels(view, "miss").inc()
                page = self._compute(req, view, state, fetch, now)
                if self._shared:
                    self._shared.put(shared_key, page.body)
            self._cache.put(key, page)
        return page

    @staticmethod
    def _compute(req: falcon.Request, view: str, state: ViewState, fetch: Fetch, now: float) -> Page:
        data, extra = fetch(req.context.db)
        meta = {"view": view, "as_of": state.completed_at, **extra}
        return Page(data, meta, dumps({"data": data, "meta": meta}), now, state)


def data_age_header(deps: Deps, resp: falcon.Response, state: ViewState) -> None:
    """X-Data-Age: seconds since the view's last logged refresh completed (absent if none)."""
    age = state.age_seconds(deps.freshness.pg_now_us())
    if age is not None:
        resp.set_header("X-Data-Age", str(age))


def send_json(resp: falcon.Response, body: bytes, status: str = falcon.HTTP_200) -> None:
    resp.status = status
    resp.content_type = falcon.MEDIA_JSON
    resp.data = body


def send(resp: falcon.Response, payload: Any, status: str = falcon.HTTP_200) -> None:
    send_json(resp, dumps(payload), status)


def render_overlay(deps: Deps, req: falcon.Request, page: Page) -> bytes:
    """The page for the signed-in user: each project with ``user_has_upvoted`` and
    its upvote_count including the user's own not-yet-refreshed toggles.

    Spliced from per-row JSON prefixes cached with the page, so a signed-in read
    costs one Redis round trip and a few byte joins, not a re-encoding of the page.
    """
    rows = page.data if isinstance(page.data, list) else [page.data]
    prefixes, meta_json = page.prefixes()
    ids = [str(r["id"]) for r in rows]
    overlay = deps.user_cache.overlay(req.context.user.user_id, ids, req.context.db.reader)
    started_us = page.state.started_us
    parts = []
    for row, pid, prefix in zip(rows, ids, prefixes, strict=True):
        count = row["upvote_count"]
        toggle = overlay.toggles.get(pid)
        if toggle is not None:
            count = max(0, count + toggle.count_adjustment(started_us))
        parts.append(b'%s,"upvote_count":%d,"user_has_upvoted":%s}'
                     % (prefix, count, b"true" if pid in overlay.upvoted else b"false"))
    data = b"[" + b",".join(parts) + b"]" if isinstance(page.data, list) else parts[0]
    return b'{"data":' + data + b',"meta":' + meta_json + b"}"


def send_page(deps: Deps, req: falcon.Request, resp: falcon.Response, page: Page, *,
              user_overlay: bool = False) -> None:
    """Answer with a page: the cached bytes, or a per-user rendering."""
    data_age_header(deps, resp, page.state)
    if user_overlay and req.context.user is not None and page.data:
        send_json(resp, render_overlay(deps, req, page))
    else:
        send_json(resp, page.body)
