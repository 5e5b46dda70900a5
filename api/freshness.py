"""How fresh each view is, and a response cache keyed by a view's refresh generation.

A materialized view cannot change between two refreshes, so "the id of its
last completed ``mv_refresh_log`` row" (its *generation*) names its contents.
``ViewFreshness`` reads every registered view's generation in one indexed query
and memoizes it per process for ``ttl`` seconds (default 0.5 s). A page cached
under generation G is served while the memo says G; it is therefore never older
than the view itself plus the memo TTL.

Ordering that makes this safe: the generation is read *before* the page query,
so the page stored under G is at least as new as G (a refresh completing in
between makes the stored page newer than its key, never older).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine

from schema.db import queries

DEFAULT_MEMO_TTL = 0.5
RETRY_AFTER_FAILURE = 1.0
log = logging.getLogger("api.freshness")


@dataclass(frozen=True)
class ViewState:
    """The last completed refresh of one view (generation 0: none logged yet)."""

    view: str
    generation: int
    started_us: int  # refresh_started_at, Postgres clock, microseconds since the epoch
    completed_at: dt.datetime | None

    def age_seconds(self, pg_now_us: int) -> int | None:
        if self.completed_at is None:
            return None
        completed_us = int(self.completed_at.timestamp() * 1_000_000)
        return max(0, (pg_now_us - completed_us) // 1_000_000)


class ViewFreshness:
    """Per-process memo of every registered view's generation."""

    def __init__(self, engine: Engine, ttl: float = DEFAULT_MEMO_TTL) -> None:
        self._engine = engine
        self._ttl = ttl
        self._lock = threading.Lock()
        self._states: dict[str, ViewState] = {}
        self._loaded_at = -1e9
        # Postgres clock minus this process's clock, in microseconds, so ages are
        # measured on the clock that stamped the log rows.
        self._skew_us = 0
        self._q = queries("api_freshness")

    def _load(self) -> None:
        with self._engine.connect() as conn:
            rows = list(conn.execute(self._q["view_generations"]))
        local_us = int(time.time() * 1_000_000)
        states = {}
        for view, gen, started_us, completed_at, pg_now_us in rows:
            states[view] = ViewState(view, int(gen or 0), int(started_us or 0), completed_at)
            self._skew_us = int(pg_now_us) - local_us
        self._states = states
        self._loaded_at = time.monotonic()

    def state(self, view: str) -> ViewState:
        """The view's state, at most ``ttl`` seconds old (one indexed query per
        process per ``ttl``, whatever the request rate).

        If Postgres cannot be asked, the last known states stay in use and the
        next attempt waits ``RETRY_AFTER_FAILURE``: a view cannot be refreshed
        while its database is unreachable either, so cached pages of the last
        known generation are still the view's contents (their X-Data-Age keeps
        growing and says so). With nothing known yet, the error propagates (503).
        """
        if time.monotonic() - self._loaded_at > self._ttl:
            with self._lock:
                if time.monotonic() - self._loaded_at > self._ttl:
                    try:
                        self._load()
                    except Exception:
                        if not self._states:
                            raise
                        log.warning("could not re-read view generations; using the last known ones")
                        self._loaded_at = time.monotonic() - self._ttl + RETRY_AFTER_FAILURE
        return self._states.get(view) or ViewState(view, 0, 0, None)

    def known_views(self) -> list[str]:
        """Registered view names (from mv_registry, refreshed with the memo)."""
        self.state("")
        return sorted(self._states)

    def pg_now_us(self) -> int:
        return int(time.time() * 1_000_000) + self._skew_us

    def invalidate(self) -> None:
        self._loaded_at = -1e9


class ResponseCache:
    """A small per-process LRU of rendered pages keyed by (view, generation, params).

    Entries of an older generation are never looked up again (the key differs)
    and age out of the LRU. No Postgres or Redis round trip on a hit.
    """

    def __init__(self, max_entries: int = 1024, max_age: float = 30.0) -> None:
        self._max = max_entries
        # Also bounds staleness when a view is refreshed outside the engine (a
        # hand-run REFRESH writes no log row, so its generation does not move).
        self.max_age = max_age
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any:
        value = self._entries.get(key)
        if value is not None:
            try:
                self._entries.move_to_end(key)
            except KeyError:
                pass
        return value

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class SingleFlight:
    """At most one computation per key at a time in this process.

    Concurrent requests for the same uncached page wait for the first one and
    then find it in the cache, instead of all running the same expensive query
    (a popular search right after the index refreshed)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[Hashable, list] = {}  # key -> [lock, holders]

    @contextmanager
    def hold(self, key: Hashable) -> Iterator[None]:
        with self._lock:
            entry = self._keys.get(key)
            if entry is None:
                entry = self._keys[key] = [threading.Lock(), 0]
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._lock:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._keys[key]
