"""Projects: the feed, a project's page, and the writes those pages depend on.

Writes commit to Postgres first (the truth: row triggers keep the counter
tables and queue view refreshes in the same transaction), then reflect the
change in Redis. The upvote toggle decides from Postgres's answer, never from
Redis: ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` (a row: now upvoted),
else ``DELETE ... RETURNING`` (a row: now not upvoted); each is one statement,
so two concurrent toggles by one user serialize on the row and each sees the
other's committed result.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import falcon
import sqlalchemy as sa

from api.auth import AUTH_PUBLIC, AUTH_USER, unauthorized
from api.db import RequestDb
from api.deps import Deps
from api.errors import not_found
from api.pagination import decode_cursor, page_meta
from api.resources.common import ViewPages, data_age_header, rows_of, send, send_page
from api.spec import (
    AUTH,
    CommentCreate,
    CreatedCommentResponse,
    CreatedProjectResponse,
    FeedQuery,
    FeedResponse,
    ProjectCreate,
    ProjectDetailResponse,
    UpvoteResponse,
    api_spec,
    responses,
)
from schema.db import queries

log = logging.getLogger("api.projects")

FEED_VIEW = "mv_feed_projects"
DETAILS_VIEW = "mv_project_details"
# A toggle that finds the row gone between its INSERT and DELETE (another
# session toggled in between) starts over; more rounds than this means a storm.
TOGGLE_ATTEMPTS = 5


def _feed_key(sort: str) -> Any:
    if sort == "trending":
        return lambda r: (r["trending_score"], r["id"])
    return lambda r: (r["created_at"], r["id"])


class FeedResource:
    """GET /api/projects (anonymous or signed in), POST /api/projects (signed in)."""

    auth = {"GET": AUTH_PUBLIC, "POST": AUTH_USER}
    json_methods = ("POST",)

    def __init__(self, deps: Deps) -> None:
        self._deps = deps
        self._pages = ViewPages(deps)
        self._reads = queries("api_reads")
        self._writes = queries("api_writes")

    @api_spec.validate(query=FeedQuery, resp=responses(FeedResponse), tags=["projects"])
    def on_get(self, req: falcon.Request, resp: falcon.Response, query: FeedQuery) -> None:
        """The feed from mv_feed_projects: `sort=trending` (hot score) or `newest`.

        Signed in: each project carries `user_has_upvoted`, right immediately after the
        user's own upvote (upvote_count includes the user's own not-yet-refreshed vote)."""
        kind = f"feed_{query.sort}"
        after = decode_cursor(kind, query.cursor)
        limit = query.limit

        def fetch(db: RequestDb) -> tuple[list[dict], dict]:
            if query.sort == "trending":
                params = {"after_score": after[0] if after else None, "after_id": after[1] if after else None}
            else:
                params = {"after_created": after[0] if after else None, "after_id": after[1] if after else None}
            rows = db.rows(self._reads[kind], {**params, "lim": limit + 1})
            next_cursor = page_meta(rows, limit, kind, _feed_key(query.sort))
            rows = rows[:limit]
            return rows, {"count": len(rows), "limit": limit, "next_cursor": next_cursor, "sort": query.sort}

        page = self._pages.page(req, FEED_VIEW, (query.sort, limit, query.cursor or ""), fetch)
        send_page(self._deps, req, resp, page, user_overlay=True)

    @api_spec.validate(json=ProjectCreate, resp=responses(CreatedProjectResponse, 403, 404, 411, 413, 415,
                                                           ok_code=201),
                       tags=["projects"], security=AUTH)
    def on_post(self, req: falcon.Request, resp: falcon.Response, json: ProjectCreate) -> None:
        """Create a project (it reaches the feed with the next refresh of mv_feed_projects)."""
        user = req.context.user
        params = {
            "user_id": user.user_id,
            "chain_id": str(json.chain_id) if json.chain_id else None,
            "title": json.title,
            "description": json.description,
            "tags": list(json.tags),
            "url": json.url,
        }
        with req.context.db.transaction() as conn:
            _require_live_user(conn, self._writes, user.user_id)
            if json.chain_id is not None and conn.execute(self._writes["chain_live"], params).first() is None:
                raise not_found(f"chain {json.chain_id} not found")
            row = rows_of(conn.execute(self._writes["project_insert"], params))[0]
        resp.set_header("Location", f"/api/projects/{row['id']}")
        send(resp, {"data": row}, falcon.HTTP_201)


class ProjectResource:
    """GET /api/projects/{project_id}: the project page, content from mv_project_details, counts live.

    The counts come from project_stats_live in the same statement (exact when
    read), so the page is not cached by view generation and needs no per-user
    count adjustment; the view itself is refreshed only when content changes.
    """

    def __init__(self, deps: Deps) -> None:
        self._deps = deps
        self._pages = ViewPages(deps)
        self._reads = queries("api_reads")

    @api_spec.validate(resp=responses(ProjectDetailResponse, 404), tags=["projects"])
    def on_get(self, req: falcon.Request, resp: falcon.Response, project_id: uuid.UUID) -> None:
        """One project. A project created since the view's last refresh is read live
        from its base row (meta.source = "live") instead of answering 404."""
        pid = str(project_id)

        def fetch(db: RequestDb) -> tuple[dict | None, dict]:
            rows = db.rows(self._reads["project_details"], {"project_id": pid}, prepared=True)
            return (rows[0] if rows else None), {"source": "view"}

        page = self._pages.page(req, DETAILS_VIEW, pid, fetch, cache=False)
        if page.data is not None:
            data_age_header(self._deps, resp, page.state)
            row, meta = page.data, page.meta
        else:
            live = req.context.db.rows(self._reads["project_details_live"], {"project_id": pid}, prepared=True)
            if not live:
                raise not_found(f"project {pid} not found")
            row, meta = live[0], {"view": DETAILS_VIEW, "as_of": None, "source": "live"}
        if req.context.user is None:
            send(resp, {"data": row, "meta": meta})
            return
        # The counts already include every committed vote: no adjustment, only the flag.
        upvoted = self._deps.user_cache.get_user_upvotes(req.context.user.user_id, [pid], req.context.db.reader)
        send(resp, {"data": {**row, "user_has_upvoted": pid in upvoted}, "meta": meta})


class UpvoteResource:
    """POST /api/projects/{project_id}/upvote: toggle the signed-in user's upvote."""

    auth = AUTH_USER

    def __init__(self, deps: Deps) -> None:
        self._deps = deps
        self._writes = queries("api_writes")

    @api_spec.validate(resp=responses(UpvoteResponse, 404, 413), tags=["projects"], security=AUTH)
    def on_post(self, req: falcon.Request, resp: falcon.Response, project_id: uuid.UUID) -> None:
        """Upvote, or remove the upvote if already upvoted (the guide's toggle).

        Committed to Postgres first, then reflected in the user's Redis set; the
        answer's upvote_count is the exact count right after the change."""
        user = req.context.user
        params = {"user_id": user.user_id, "project_id": str(project_id)}
        upvoted, changed_us = self._toggle(req, params)
        if upvoted:
            self._deps.user_cache.add_upvote(user.user_id, params["project_id"], changed_us)
        else:
            self._deps.user_cache.remove_upvote(user.user_id, params["project_id"], changed_us)
        count = req.context.db.scalar(self._writes["upvote_count"], params, prepared=True)
        send(resp, {"data": {"project_id": params["project_id"], "upvoted": upvoted, "upvote_count": count}})

    def _toggle(self, req: falcon.Request, params: dict[str, Any]) -> tuple[bool, int]:
        with req.context.db.transaction() as conn:
            state = conn.execute(self._writes["upvote_preconditions"], params).one()
            if not state.user_ok:
                raise unauthorized("the token's user does not exist or was deleted")
            if not state.project_ok:
                raise not_found(f"project {params['project_id']} not found")
            for _ in range(TOGGLE_ATTEMPTS):
                changed = conn.execute(self._writes["upvote_insert"], params).scalar_one_or_none()
                if changed is not None:
                    return True, int(changed)
                changed = conn.execute(self._writes["upvote_delete"], params).scalar_one_or_none()
                if changed is not None:
                    return False, int(changed)
        raise RuntimeError("upvote toggle kept racing; giving up")


class CommentsResource:
    """POST /api/projects/{project_id}/comments: comment on a live project."""

    auth = AUTH_USER
    json_methods = ("POST",)

    def __init__(self, deps: Deps) -> None:
        self._deps = deps
        self._writes = queries("api_writes")

    @api_spec.validate(json=CommentCreate,
                       resp=responses(CreatedCommentResponse, 403, 404, 411, 413, 415, ok_code=201),
                       tags=["projects"], security=AUTH)
    def on_post(self, req: falcon.Request, resp: falcon.Response, project_id: uuid.UUID,
                json: CommentCreate) -> None:
        """Add a comment (counted in the views at their next refresh)."""
        user = req.context.user
        params = {"user_id": user.user_id, "project_id": str(project_id), "body": json.body}
        with req.context.db.transaction() as conn:
            state = conn.execute(self._writes["upvote_preconditions"], params).one()
            if not state.user_ok:
                raise unauthorized("the token's user does not exist or was deleted")
            if not state.project_ok:
                raise not_found(f"project {project_id} not found")
            row = rows_of(conn.execute(self._writes["comment_insert"], params))[0]
        send(resp, {"data": row}, falcon.HTTP_201)


def _require_live_user(conn: sa.Connection, writes: dict, user_id: str) -> None:
    if conn.execute(writes["user_live"], {"user_id": user_id}).first() is None:
        raise unauthorized("the token's user does not exist or was deleted")
