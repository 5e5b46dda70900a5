"""Keyset pagination: opaque cursors holding the sort key of a page's last row.

A cursor is URL-safe base64 of ``[kind, key...]`` JSON. ``kind`` names the
ordering it belongs to, so a feed cursor fed to the leaderboard (or a cursor
of ``sort=trending`` used with ``sort=newest``) is a 400, not a silent jump.
Keys are typed on decode: a tampered cursor is rejected before it reaches SQL
(where it would only ever be a bound parameter anyway).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import math
import uuid
from collections.abc import Sequence
from typing import Any

from api.errors import bad_request

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_CURSOR_CHARS = 512

# Per ordering, the types of its key parts (besides the leading kind tag).
#   float: a finite number; int: an integer; ts: ISO 8601 timestamp; uuid: a UUID string; bool
KEY_TYPES: dict[str, tuple[str, ...]] = {
    "feed_trending": ("float", "uuid"),
    "feed_newest": ("ts", "uuid"),
    "lb_projects": ("int",),
    "lb_builders": ("int",),
    "chains_members": ("int", "uuid"),
    "chains_activity": ("int", "uuid"),
    "chain_posts": ("bool", "float", "uuid"),
    "investors": ("int", "uuid"),
    "conversations": ("ts", "uuid"),
}


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return float(value)  # Decimal and friends


def encode_cursor(kind: str, key: Sequence[Any]) -> str:
    raw = json.dumps([kind, *key], default=_json_default, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _invalid(why: str) -> Exception:
    return bad_request(f"invalid cursor: {why} (use meta.next_cursor of the previous page)")


def _typed(kind: str, value: Any) -> Any:
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise _invalid("bad number")
        return float(value)
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise _invalid("bad integer")
        if not -(2**62) < value < 2**62:
            raise _invalid("integer out of range")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise _invalid("bad flag")
        return value
    if kind == "uuid":
        try:
            return str(uuid.UUID(str(value)))
        except ValueError:
            raise _invalid("bad id") from None
    if kind == "ts":
        try:
            parsed = dt.datetime.fromisoformat(str(value))
        except ValueError:
            raise _invalid("bad timestamp") from None
        if parsed.tzinfo is None:
            raise _invalid("timestamp without zone")
        return parsed
    raise AssertionError(kind)


def decode_cursor(kind: str, cursor: str | None) -> list[Any] | None:
    """The key parts of ``cursor`` for ordering ``kind``; None for no cursor."""
    if cursor is None or cursor == "":
        return None
    if len(cursor) > MAX_CURSOR_CHARS:
        raise _invalid("too long")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise _invalid("not a cursor") from None
    types = KEY_TYPES[kind]
    if not isinstance(value, list) or len(value) != len(types) + 1 or value[0] != kind:
        raise _invalid("belongs to another listing or ordering")
    return [_typed(t, v) for t, v in zip(types, value[1:], strict=True)]


def page_meta(rows: Sequence[Any], limit: int, kind: str, key_of: Any) -> str | None:
    """next_cursor for a page fetched with LIMIT limit+1 (None on the last page)."""
    if len(rows) <= limit:
        return None
    return encode_cursor(kind, key_of(rows[limit - 1]))
