"""One error shape for every failure: ``{"error": {"code": ..., "message": ...}}``.

``render_error`` is registered for ``falcon.HTTPError`` *and* ``Exception``
(Falcon picks the most specific handler, so the catch-all alone would leave
Falcon's own 404/405/400 in Falcon's shape). Headers an error carries (Allow on
405, WWW-Authenticate on 401, Retry-After on 503) are kept.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import logging
import uuid
from typing import Any

import falcon
import psycopg2
from sqlalchemy import exc as sa_exc

log = logging.getLogger("api")

# Status -> machine-readable code, for errors raised without an explicit one
# (Falcon's own HTTPRouteNotFound, HTTPMethodNotAllowed, MediaMalformedError...).
_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    411: "length_required",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    431: "headers_too_large",
    500: "internal_error",
    503: "service_unavailable",
    504: "timeout",
}


def _default(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON (datetimes as ISO 8601, UUIDs and Decimals made plain)."""
    return json.dumps(obj, default=_default, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def error_code(ex: falcon.HTTPError) -> str:
    if isinstance(ex.code, str) and ex.code:
        return ex.code
    return _CODES.get(ex.status_code, "error" if ex.status_code < 500 else "internal_error")


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return {"error": error}


def _dependency_error(ex: BaseException) -> falcon.HTTPError | None:
    """Postgres or Redis unreachable / too slow: a 503 that says which, not a 500."""
    orig = getattr(ex, "orig", ex)  # SQLAlchemy wraps the DBAPI error
    if isinstance(orig, psycopg2.errors.QueryCanceled):
        return ApiError(falcon.HTTP_503, "service_unavailable", "the database query timed out; try again",
                        headers={"Retry-After": "1"})
    if isinstance(orig, psycopg2.OperationalError | psycopg2.InterfaceError) or isinstance(
            ex, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.TimeoutError):
        return ApiError(falcon.HTTP_503, "service_unavailable", "the database is unavailable; try again shortly",
                        headers={"Retry-After": "5"})
    return None


def render_error(req: falcon.Request, resp: falcon.Response, ex: BaseException, params: dict) -> None:
    """Turn any exception into the JSON error shape with the right status."""
    if not isinstance(ex, falcon.HTTPError):
        mapped = _dependency_error(ex)
        if mapped is not None:
            log.warning("%s %s: %s", req.method, req.path, str(getattr(ex, "orig", ex)).strip().splitlines()[:1])
            ex = mapped
        else:
            log.exception("unhandled error on %s %s", req.method, req.path)
            ex = falcon.HTTPInternalServerError(description="internal error")
    if isinstance(ex, falcon.HTTPRouteNotFound):
        message = f"no such path: {req.path}"
    elif isinstance(ex, falcon.HTTPMethodNotAllowed):
        allowed = (ex.headers or {}).get("Allow", "")
        message = f"method {req.method} is not allowed on {req.path} (allowed: {allowed})"
    else:
        message = ex.description or ex.title or "error"
    details = getattr(ex, "details", None)
    resp.status = ex.status
    # Replace whatever a responder had set; keep the headers the error carries.
    resp.media = None
    resp.text = None
    for name, value in (ex.headers or {}).items():
        resp.set_header(name, value)
    resp.content_type = falcon.MEDIA_JSON
    resp.data = dumps(error_body(error_code(ex), message, details))


class ApiError(falcon.HTTPError):
    """An HTTPError with an explicit code and optional structured details."""

    def __init__(
        self,
        status: str,
        code: str,
        message: str,
        *,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status, title=message, description=message, headers=headers, code=code)
        self.details = details


def not_found(message: str, details: Any = None) -> ApiError:
    return ApiError(falcon.HTTP_404, "not_found", message, details=details)


def unprocessable(message: str, details: Any = None) -> ApiError:
    return ApiError(falcon.HTTP_422, "validation_error", message, details=details)


def bad_request(message: str, details: Any = None) -> ApiError:
    return ApiError(falcon.HTTP_400, "bad_request", message, details=details)


def unavailable(message: str, retry_after: int = 5) -> ApiError:
    return ApiError(falcon.HTTP_503, "service_unavailable", message, headers={"Retry-After": str(retry_after)})
