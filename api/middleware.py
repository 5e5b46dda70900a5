"""Per-request middleware: database access and request-body rules.

``DbMiddleware`` gives every request ``req.context.db`` (api/db.py), a lazy
handle: the pooled read connection is checked out on first use and returned
when the response is done, so a page served from the response cache never
touches the pool, and no request can leak a connection or a transaction.

``LatencyMiddleware`` times every request into a histogram labelled by the
route *template* (``/api/projects/{project_id:uuid}``), never the raw path:
one series per route, however many ids or probing URLs arrive.

``BodyMiddleware`` enforces the body rules before any responder runs:
``MAX_BODY_BYTES`` (413), JSON only on routes that take a body (415), and a
Content-Length on those routes (411), so nothing is read or written for a
rejected request.
"""

from __future__ import annotations

import time

import falcon
from sqlalchemy.engine import Engine

from api.db import RequestDb
from api.errors import ApiError
from api.metrics import REQUEST_LATENCY

# Methods outside this set are counted as "other" (a client can send any token).
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "unmatched"  # label of requests no route matched (404s)


class LatencyMiddleware:
    """First in the chain, so its ``process_response`` runs last and times the whole request."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started = time.perf_counter()

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: object,
                         req_succeeded: bool) -> None:
        started = getattr(req.context, "started", None)
        if started is None:
            return
        method = req.method if req.method in _KNOWN_METHODS else "other"
        route = req.uri_template or UNMATCHED_ROUTE
        REQUEST_LATENCY.labels(route, method, str(resp.status_code)).observe(time.perf_counter() - started)


class DbMiddleware:
    def __init__(self, read_engine: Engine, write_engine: Engine) -> None:
        self._read = read_engine
        self._write = write_engine

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.db = RequestDb(self._read, self._write)

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: object,
                         req_succeeded: bool) -> None:
        db = getattr(req.context, "db", None)
        if db is not None:
            db.close()


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class BodyMiddleware:
    """Size limit for every request; JSON-only for routes declaring ``json_methods``."""

    def __init__(self, max_body_bytes: int) -> None:
        self._max = max_body_bytes

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource: object, params: dict) -> None:
        length = req.content_length
        if length is not None and length > self._max:
            raise ApiError(falcon.HTTP_413, "payload_too_large",
                           f"request body of {length} bytes is over the limit of {self._max} bytes")
        if resource is None or req.method not in getattr(resource, "json_methods", ()):
            return
        if not hasattr(resource, "on_" + req.method.lower()):
            return
        if not _is_json(req.content_type):
            raise ApiError(falcon.HTTP_415, "unsupported_media_type",
                           f"send the body as application/json (got {req.content_type or 'no Content-Type'})")
        if length is None:
            chunked = "chunked" in (req.get_header("Transfer-Encoding") or "").lower()
            if chunked:
                raise ApiError(falcon.HTTP_411, "length_required", "send a Content-Length (chunked bodies are refused)")
