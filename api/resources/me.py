"""The signed-in user's own pages, from the phase 1 trigger-kept tables.

Read through their ``*_live`` views (main row + pending delta rows), which are
exact in one snapshot (0010's header), so there is no view to be stale:
meta.as_of is the moment of the read and X-Data-Age is 0.
"""

from __future__ import annotations

import datetime as dt

import falcon

from api.auth import AUTH_USER
from api.deps import Deps
from api.errors import not_found
from api.pagination import decode_cursor, page_meta
from api.resources.common import send
from api.spec import (
    AUTH,
    ConversationsResponse,
    DashboardResponse,
    IntroStatsResponse,
    PageQuery,
    api_spec,
    responses,
)
from schema.db import queries

INTRO_FIELDS = ("requests_sent", "sent_pending", "sent_accepted", "sent_declined",
                "requests_received", "received_pending", "received_accepted", "received_declined")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class _MeResource:
    auth = AUTH_USER

    def __init__(self, deps: Deps) -> None:
        self._deps = deps
        self._q = queries("api_me")


class DashboardResource(_MeResource):
    """GET /api/dashboard"""

    @api_spec.validate(resp=responses(DashboardResponse, 404), tags=["me"], security=AUTH)
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """The signed-in user's user_dashboard_stats plus their intro_request_stats (exact, live)."""
        db = req.context.db
        rows = db.rows(self._q["dashboard"], {"user_id": req.context.user.user_id}, prepared=True)
        if not rows:
            raise not_found("no dashboard for this user (unknown or deleted user)")
        row = rows[0]
        intros = {k: row.pop(k) or 0 for k in INTRO_FIELDS}  # no intro row yet: zeros
        row["intro_requests"] = intros
        resp.set_header("X-Data-Age", "0")
        send(resp, {"data": row, "meta": {"source": "user_dashboard_stats_live", "as_of": _now()}})


class ConversationsResource(_MeResource):
    """GET /api/conversations"""

    @api_spec.validate(query=PageQuery, resp=responses(ConversationsResponse), tags=["me"], security=AUTH)
    def on_get(self, req: falcon.Request, resp: falcon.Response, query: PageQuery) -> None:
        """The signed-in user's own conversations (message_conversations_denorm), latest message first."""
        after = decode_cursor("conversations", query.cursor)
        limit = query.limit
        db = req.context.db
        params = {"user_id": req.context.user.user_id, "lim": limit + 1,
                  "after_at": after[0] if after else None, "after_id": after[1] if after else None}
        rows = db.rows(self._q["conversations"], params, prepared=True)
        next_cursor = page_meta(rows, limit, "conversations", lambda r: (r["sort_at"], r["conversation_id"]))
        rows = rows[:limit]
        for r in rows:
            r.pop("sort_at", None)
        resp.set_header("X-Data-Age", "0")
        send(resp, {"data": rows, "meta": {"source": "user_conversations_live", "as_of": _now(),
                                           "count": len(rows), "limit": limit, "next_cursor": next_cursor}})


class IntroStatsResource(_MeResource):
    """GET /api/intros/stats"""

    @api_spec.validate(resp=responses(IntroStatsResponse, 404), tags=["me"], security=AUTH)
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """The signed-in user's intro_request_stats row (as requester, and as investor if one)."""
        db = req.context.db
        rows = db.rows(self._q["intro_stats"], {"user_id": req.context.user.user_id}, prepared=True)
        if not rows:
            raise not_found("no intro stats for this user (unknown or deleted user)")
        resp.set_header("X-Data-Age", "0")
        send(resp, {"data": rows[0], "meta": {"source": "intro_request_stats_live", "as_of": _now()}})
