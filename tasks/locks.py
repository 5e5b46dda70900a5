"""Per-view Redis locks that stay held while a refresh runs.

redis-py's ``Lock`` is the base (DESIGN.md, known traps): a random token is
the owner, release is compare-and-delete (a Lua script), and the key has a
TTL so a worker killed with SIGKILL costs at most one TTL. A background
thread renews the TTL every TTL/3 while the refresh runs, with
``extend(ttl, replace_ttl=True)`` on a lock that always has a non-zero
timeout (redis-py #4279). If renewal finds the key gone or owned by someone
else, the lock is *lost*: the refresh must not commit (the caller checks
``lost`` and ``still_owned()`` right before COMMIT).

The same thread doubles as a watchdog for the refresh's statement: at its
deadline it cancels the running query, because a Celery soft time limit
cannot interrupt a thread blocked inside libpq.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis as redis_lib
from redis.exceptions import LockError, LockNotOwnedError, RedisError

log = logging.getLogger(__name__)

LOCK_PREFIX = "mvlock:"
QUEUED_PREFIX = "mvqueued:"


def lock_key(view_name: str) -> str:
    return f"{LOCK_PREFIX}{view_name}"


def queued_key(view_name: str) -> str:
    return f"{QUEUED_PREFIX}{view_name}"


class RedisUnavailable(RuntimeError):
    """Redis could not be reached to take or check a lock."""


class ViewLock:
    """One view's refresh lock: acquire without waiting, renew while held, release if still ours."""

    def __init__(self, client: redis_lib.Redis, view_name: str, ttl: float) -> None:
        if ttl <= 0:
            # A lock without a TTL would outlive a killed worker forever, and
            # extend(replace_ttl=True) on it misbehaves (redis-py #4279).
            raise ValueError("lock TTL must be > 0")
        self.view_name = view_name
        self.key = lock_key(view_name)
        self.ttl = float(ttl)
        # thread_local=False: the renewal thread must see the token that the
        # acquiring thread stored (the default keeps it in a thread-local).
        self._lock = client.lock(self.key, timeout=self.ttl, blocking=False, thread_local=False)
        self._keeper: threading.Thread | None = None
        self._stop = threading.Event()
        self.lost = threading.Event()
        self.held = False
        self.acquired_at: float | None = None
        self.released_at: float | None = None
        self.renewals = 0
        self._deadline: float | None = None
        self._on_deadline: Callable[[], None] | None = None

    def acquire(self) -> bool:
        """Take the lock if free; never wait. Raises RedisUnavailable if Redis is down."""
        try:
            got = bool(self._lock.acquire(blocking=False))
        except RedisError as exc:
            raise RedisUnavailable(f"cannot take lock {self.key}: {exc}") from exc
        if got:
            self.held = True
            self.acquired_at = time.time()
        return got

    def start_renewal(self, deadline: float | None = None, on_deadline: Callable[[], None] | None = None) -> None:
        """Renew every TTL/3 until released; call ``on_deadline`` once at ``deadline`` (monotonic)."""
        self._deadline = deadline
        self._on_deadline = on_deadline
        self._keeper = threading.Thread(target=self._renew_loop, name=f"lock-keeper:{self.view_name}", daemon=True)
        self._keeper.start()

    def _renew_loop(self) -> None:
        interval = self.ttl / 3.0
        next_renewal = time.monotonic() + interval
        while True:
            now = time.monotonic()
            wake = next_renewal if self._deadline is None else min(next_renewal, self._deadline)
            if self._stop.wait(max(0.0, wake - now)):
                return
            now = time.monotonic()
            if self._deadline is not None and now >= self._deadline and self._on_deadline is not None:
                callback, self._on_deadline = self._on_deadline, None
                self._deadline = None
                try:
                    callback()
                except Exception:  # a watchdog must never kill the renewal
                    log.exception("deadline callback for %s failed", self.key)
            if now < next_renewal:
                continue
            next_renewal = now + interval
            if not self.held or self.lost.is_set():
                continue  # nothing to renew (Redis was down at acquire) or already lost
            try:
                self._lock.extend(self.ttl, replace_ttl=True)
                self.renewals += 1
            except LockNotOwnedError:
                # Expired (the process stalled longer than the TTL) or deleted
                # (FLUSHALL, a restart without persistence): someone else may
                # hold it now. The refresh must not commit.
                log.warning("refresh lock %s was lost while the refresh ran", self.key)
                self.lost.set()
            except LockError as exc:
                log.warning("refresh lock %s could not be renewed: %s", self.key, exc)
                self.lost.set()
            except RedisError as exc:
                # Redis unreachable for a moment: keep trying; if it stays away
                # longer than the TTL the key expires and the next renewal
                # (or still_owned) reports the loss.
                log.warning("refresh lock %s renewal failed (%s); retrying", self.key, exc)

    def still_owned(self) -> bool:
        """True if the key still holds our token (one Redis round trip).

        Raises RedisUnavailable when Redis cannot answer: the caller decides.
        """
        if self.lost.is_set():
            return False
        try:
            return bool(self._lock.owned())
        except RedisError as exc:
            raise RedisUnavailable(f"cannot check lock {self.key}: {exc}") from exc

    def stop_renewal(self) -> None:
        self._stop.set()
        if self._keeper is not None and self._keeper is not threading.current_thread():
            self._keeper.join(timeout=5)

    def release(self) -> None:
        """Stop renewing and delete the key only if it still holds our token."""
        self.stop_renewal()
        self.released_at = time.time()
        if not self.held:
            return
        self.held = False
        try:
            self._lock.release()
        except LockNotOwnedError:
            log.info("refresh lock %s was no longer ours at release (expired or taken over)", self.key)
        except LockError:
            pass  # never acquired
        except RedisError as exc:
            # The key expires by itself after at most one TTL.
            log.warning("could not release refresh lock %s (%s); it expires within %.0f s", self.key, exc, self.ttl)
