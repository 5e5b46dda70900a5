"""Admin: enqueue a manual refresh of one registered view."""

from __future__ import annotations

import falcon

from api.auth import AUTH_ADMIN
from api.deps import Deps
from api.errors import not_found, unavailable
from api.resources.common import send
from api.sender import REFRESH_TASK, SenderUnavailable
from api.spec import AUTH, RefreshAcceptedResponse, api_spec, responses


class RefreshResource:
    """POST /api/admin/refresh/{view_name}"""

    auth = AUTH_ADMIN

    def __init__(self, deps: Deps) -> None:
        self._deps = deps

    @api_spec.validate(resp=responses(RefreshAcceptedResponse, 403, 404, 413, ok_code=202),
                       tags=["admin"], security=AUTH)
    def on_post(self, req: falcon.Request, resp: falcon.Response, view_name: str) -> None:
        """Enqueue `tasks.refresh_view(view, manual=True)` on the refresh queue; 202 with the task id.

        The name is checked against mv_registry (re-read at most every half second)."""
        known = self._deps.freshness.known_views()
        if view_name not in known:
            raise not_found(f"unknown view {view_name!r}; known views: {', '.join(known)}",
                            details={"known_views": known})
        try:
            task_id = self._deps.sender.send(REFRESH_TASK, args=[view_name], kwargs={"manual": True})
        except SenderUnavailable as exc:
            raise unavailable(f"{exc}; the refresh was not queued (is Redis/the broker running?)") from None
        queue = getattr(self._deps.sender, "queue_for", lambda name: None)(REFRESH_TASK)
        send(resp, {"data": {"task_id": task_id, "view": view_name, "queue": queue, "task": REFRESH_TASK}},
             falcon.HTTP_202)
