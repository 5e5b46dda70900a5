"""Bearer JWT authentication (HS256 only) and per-route access levels.

Tokens carry ``sub`` (the user id), ``role`` (the user's role), ``admin`` (bool)
and a required ``exp``. Only HS256 is accepted: ``alg: none``, RS256 and every
other algorithm are refused before the signature is even looked at, which
closes the classic "algorithm confusion" holes.

Resources declare what they need with a class attribute::

    class DashboardResource:
        auth = AUTH_USER      # or AUTH_ADMIN; default AUTH_PUBLIC
    class ProjectsResource:
        auth = {"GET": AUTH_PUBLIC, "POST": AUTH_USER}   # per method

A public route still reads a token when one is sent (a signed-in feed carries
``user_has_upvoted``); a *malformed or expired* token is a 401 everywhere
rather than being silently ignored, so a client learns its token is bad.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import falcon
import jwt

from api.errors import ApiError

ALGORITHM = "HS256"
AUTH_PUBLIC = "public"
AUTH_USER = "user"
AUTH_ADMIN = "admin"
REALM = 'Bearer realm="discovery"'
DEFAULT_TTL_SECONDS = 3600
# A little slack for clocks of the token issuer and this server disagreeing.
LEEWAY_SECONDS = 10


@dataclass(frozen=True)
class Principal:
    """The signed-in user of a request."""

    user_id: str
    role: str
    is_admin: bool


def issue_token(secret: str, user_id: str, *, role: str, admin: bool, ttl: int = DEFAULT_TTL_SECONDS,
                now: float | None = None) -> str:
    """A signed HS256 token for ``user_id`` valid for ``ttl`` seconds."""
    issued = int(now if now is not None else time.time())
    claims = {"sub": str(user_id), "role": role, "admin": bool(admin), "iat": issued, "exp": issued + int(ttl)}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def unauthorized(message: str, error: str = "invalid_token") -> ApiError:
    """401 with the RFC 6750 challenge, so clients know to send a bearer token."""
    challenge = REALM if error == "" else f'{REALM}, error="{error}"'
    return ApiError(falcon.HTTP_401, "unauthorized", message, headers={"WWW-Authenticate": challenge})


def forbidden(message: str) -> ApiError:
    return ApiError(falcon.HTTP_403, "forbidden", message)


class TokenCache:
    """Verified tokens -> (principal, exp), so a client's repeated token is checked once.

    Keyed by the whole token string (signature included): a token that differs
    in any byte is a different key and is verified from scratch. Expiry is
    still checked on every use. Bounded; cleared wholesale when full (cheap,
    and the next uses simply verify again).
    """

    def __init__(self, max_entries: int = 10_000) -> None:
        self._max = max_entries
        self._entries: dict[str, tuple[Principal, int]] = {}

    def get(self, token: str) -> Principal | None:
        hit = self._entries.get(token)
        if hit is None:
            return None
        principal, exp = hit
        if exp + LEEWAY_SECONDS < time.time():
            self._entries.pop(token, None)
            raise unauthorized("token expired")
        return principal

    def put(self, token: str, principal: Principal, exp: int) -> None:
        if len(self._entries) >= self._max:
            self._entries.clear()
        self._entries[token] = (principal, exp)


def decode_token(secret: str, token: str, cache: TokenCache | None = None) -> Principal:
    """Verify ``token`` and return its principal, or raise a 401 ApiError."""
    if cache is not None and (hit := cache.get(token)) is not None:
        return hit
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise unauthorized("malformed bearer token") from None
    if header.get("alg") != ALGORITHM:
        raise unauthorized(f"token algorithm {header.get('alg')!r} is not accepted (HS256 only)")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            options={"require": ["exp", "sub"]},
            leeway=LEEWAY_SECONDS,
        )
    except jwt.ExpiredSignatureError:
        raise unauthorized("token expired") from None
    except jwt.PyJWTError as exc:
        raise unauthorized(f"invalid token: {exc}") from None
    sub = claims.get("sub")
    try:
        user_id = str(uuid.UUID(str(sub)))
    except (ValueError, TypeError):
        raise unauthorized("token subject is not a user id") from None
    role = claims.get("role")
    is_admin = claims.get("admin") is True or role == "admin"
    principal = Principal(user_id=user_id, role=str(role or "member"), is_admin=is_admin)
    if cache is not None:
        cache.put(token, principal, int(claims["exp"]))
    return principal


def bearer_token(req: falcon.Request) -> str | None:
    """The token of an ``Authorization: Bearer ...`` header; 401 for other schemes."""
    header = req.get_header("Authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("Authorization must be 'Bearer <token>'", error="invalid_request")
    return token.strip()


class AuthMiddleware:
    """Sets ``req.context.user`` (a Principal or None) and enforces ``resource.auth``."""

    def __init__(self, secret: str) -> None:
        self._secret = secret
        self._tokens = TokenCache()

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource: object, params: dict) -> None:
        req.context.user = None
        if resource is None:
            return  # no route: Falcon answers 404; don't make it a 401
        if req.method == "OPTIONS" or not hasattr(resource, "on_" + req.method.lower()):
            return  # Falcon answers OPTIONS and 405 itself; a 405 should not turn into a 401
        level = getattr(resource, "auth", AUTH_PUBLIC)
        if isinstance(level, dict):
            level = level.get(req.method, AUTH_PUBLIC)
        token = bearer_token(req)
        if token is not None:
            req.context.user = decode_token(self._secret, token, self._tokens)
        if level == AUTH_PUBLIC:
            return
        if req.context.user is None:
            raise unauthorized("this endpoint needs a bearer token (python -m api token --user NAME)", error="")
        if level == AUTH_ADMIN and not req.context.user.is_admin:
            raise forbidden("this endpoint needs an admin token")
