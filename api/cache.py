"""RedisUserCache: which projects a user upvoted, as a Redis set beside Postgres.

Postgres is the truth; the set ``user:upvotes:<user_id>`` is a copy that makes
``user_has_upvoted`` cost one Redis round trip per page. Keys per user::

    user:upvotes:<u>            set of project ids (strings)
    user:upvotes:<u>:complete   "1" when the set holds ALL of the user's upvotes
                                (an absent set is then "no upvotes", not "not loaded")
    user:upvotes:<u>:toggles    hash project id -> "<prev_us>,<last_us>,<state>":
                                Postgres timestamps (microseconds) of the last two
                                toggles and the state the last one left
    user:upvotes:<u>:epoch      counter bumped by every applied change

The races this closes, each with the mechanism:

* Two toggles by one user on one project (a double click) commit in order A, B
  but their post-commit Redis updates may arrive B, A. Every update carries the
  ``clock_timestamp()`` of its row change, taken while Postgres held that row's
  lock, so B's is later than A's commit; the update script applies a change
  only if it is newer than the last one recorded for that member. The final
  set member state is B's, whatever the arrival order.
* A rebuild (read Postgres, then install the set) racing a write: the rebuild
  reads ``epoch`` before its Postgres snapshot and installs only if ``epoch`` is
  unchanged, atomically in a Lua script. A write committed after the snapshot
  either bumped epoch before the install (install refused: answer from the
  snapshot for this one request and retry next time) or arrives after it and
  is applied by the ordering rule above. So a rebuild never erases a newer write.
* A cold or flushed cache has no ``:complete`` key: the next lookup rebuilds.

Redis unavailable: lookups answer from Postgres (slower, never wrong, never a
5xx); sockets time out after ``socket_timeout`` and a short circuit breaker
stops every request from paying that timeout again. A committed change that
could not reach Redis leaves that user's set possibly stale, so its keys are
deleted (forcing a rebuild) as soon as Redis answers again; if this process dies
first, the keys' TTL bounds the staleness. That per-process memory is the one
gap: another API process keeps serving the stale set until then.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis as redis_lib
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy.engine import Engine

from api import metrics
from api.db import Reader
from schema.db import queries

log = logging.getLogger("api.cache")

KEY_PREFIX = "user:upvotes:"
DEFAULT_TTL_SECONDS = 6 * 3600
# After a Redis error, skip Redis for this long (answer from Postgres).
BREAKER_SECONDS = 1.0
# Lookups take the request's Reader (api/db.py): its connection is checked out
# only when Postgres is needed, so a cache hit never touches the pool.

# KEYS: set, complete, toggles, epoch. ARGV: member, state (1|0), ts_us, ttl.
# Returns 1 when the change became the member's newest state, else 0.
_APPLY_LUA = """
local ttl = tonumber(ARGV[4])
local ts = tonumber(ARGV[3])
redis.call('INCR', KEYS[4])
redis.call('EXPIRE', KEYS[4], ttl)
local prev, last, st = 0, 0, '0'
local cur = redis.call('HGET', KEYS[3], ARGV[1])
if cur then
  local p, l, s = string.match(cur, '^(%d+),(%d+),(%d)$')
  if p then prev, last, st = tonumber(p), tonumber(l), s end
end
if ts > last then
  redis.call('HSET', KEYS[3], ARGV[1], string.format('%d,%d,%s', last, ts, ARGV[2]))
  redis.call('EXPIRE', KEYS[3], ttl)
  if redis.call('EXISTS', KEYS[2]) == 1 then
    if ARGV[2] == '1' then redis.call('SADD', KEYS[1], ARGV[1]) else redis.call('SREM', KEYS[1], ARGV[1]) end
    redis.call('EXPIRE', KEYS[1], ttl)
    redis.call('EXPIRE', KEYS[2], ttl)
  end
  return 1
elseif ts > prev and ts < last then
  redis.call('HSET', KEYS[3], ARGV[1], string.format('%d,%d,%s', ts, last, st))
end
return 0
"""

# KEYS: set, complete, toggles, epoch. ARGV: project ids. One round trip, one
# reply: {complete?, membership flags, toggle records, epoch}.
_READ_LUA = """
local complete = redis.call('EXISTS', KEYS[2])
local members = redis.call('SMISMEMBER', KEYS[1], unpack(ARGV))
local toggles = redis.call('HMGET', KEYS[3], unpack(ARGV))
return {complete, members, toggles, redis.call('GET', KEYS[4]) or '0'}
"""

# KEYS: set, complete, epoch. ARGV: expected epoch, ttl, members...
# Installs the snapshot only if no change was applied since the epoch was read.
_INSTALL_LUA = """
local e = redis.call('GET', KEYS[3]) or '0'
if e ~= ARGV[1] then return 0 end
local ttl = tonumber(ARGV[2])
redis.call('DEL', KEYS[1])
local n = #ARGV
local i = 3
while i <= n do
  local j = math.min(i + 999, n)
  redis.call('SADD', KEYS[1], unpack(ARGV, i, j))
  i = j + 1
end
if n >= 3 then redis.call('EXPIRE', KEYS[1], ttl) end
redis.call('SET', KEYS[2], '1', 'EX', ttl)
return 1
"""


def user_keys(user_id: str) -> tuple[str, str, str, str]:
    base = f"{KEY_PREFIX}{user_id}"
    return base, f"{base}:complete", f"{base}:toggles", f"{base}:epoch"


def make_redis_client(url: str, *, timeout: float = 0.25) -> redis_lib.Redis:
    """A client that fails fast: short socket timeouts and a single retry.

    redis-py 8 retries 3 times with backoff by default, which would turn one
    unreachable Redis into seconds per request. One retry is kept: after a
    Redis restart the first command on a pooled socket fails and the retry
    reconnects.
    """
    return redis_lib.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1),
        health_check_interval=30,
    )


@dataclass(frozen=True)
class Toggle:
    """The last two toggles of one (user, project) pair, Postgres clock in microseconds."""

    prev_us: int
    last_us: int
    upvoted: bool

    @classmethod
    def parse(cls, raw: str | None) -> Toggle | None:
        if not raw:
            return None
        try:
            prev, last, state = raw.split(",")
            return cls(int(prev), int(last), state == "1")
        except ValueError:
            return None

    def count_adjustment(self, view_started_us: int) -> int:
        """What to add to a view's upvote_count so it includes this user's own vote.

        ``view_started_us`` is when the view's last completed refresh started:
        a change stamped before it is in the view. One change after it: the view
        shows the state before that change, so add +1 (upvoted) or -1. Two or
        more changes after it: assume an even number (undo + redo) and add 0;
        three or more within one refresh interval would be off by one until the
        next refresh. A change committed in the few milliseconds between a
        refresh's start and its snapshot may likewise be counted twice for this
        user until the view's next refresh.
        """
        if self.last_us < view_started_us:
            return 0
        if self.prev_us and self.prev_us >= view_started_us:  # prev_us 0: no earlier toggle known
            return 0
        return 1 if self.upvoted else -1


@dataclass
class Overlay:
    """Per-user facts for a page of projects."""

    upvoted: set[str]
    toggles: dict[str, Toggle] = field(default_factory=dict)
    source: str = "redis"  # redis | rebuilt | postgres


class RedisBreaker:
    """After a Redis error, skip Redis for ``BREAKER_SECONDS``: an unreachable
    Redis then costs one timeout per second, not one per request."""

    def __init__(self, fallback: str) -> None:
        self._fallback = fallback  # what happens meanwhile, for the log line
        self._down_until = 0.0

    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def trip(self, exc: BaseException) -> None:
        log.warning("redis unavailable (%s); %s for %.1fs", exc, self._fallback, BREAKER_SECONDS)
        self._down_until = time.monotonic() + BREAKER_SECONDS


class SharedPageCache:
    """Rendered page bodies in Redis, shared by every API process on every host.

    Keyed like the per-process ``ResponseCache`` (view, generation, parameters),
    so a page is computed once per view generation for the whole deployment
    instead of once per process: worth a Redis round trip only for pages that
    are expensive and the same for every caller (search). Bodies only: pages
    with a per-user overlay do not go here. Redis errors open the breaker and
    the page is computed as without this cache.
    """

    KEY_PREFIX = "discovery:page:"

    def __init__(self, client: redis_lib.Redis, ttl: float) -> None:
        self._client = client
        self._ttl = max(1, int(ttl))
        self._breaker = RedisBreaker("computing pages without the shared cache")

    def _key(self, key: Hashable) -> str:
        # repr of (view, generation, params of str/int/None) is the same in every process.
        return self.KEY_PREFIX + hashlib.sha256(repr(key).encode()).hexdigest()

    def get(self, key: Hashable) -> bytes | None:
        if not self._breaker.available():
            return None
        try:
            value = self._client.get(self._key(key))
        except redis_lib.RedisError as exc:
            self._breaker.trip(exc)
            return None
        return value.encode() if isinstance(value, str) else value

    def put(self, key: Hashable, body: bytes) -> None:
        if not self._breaker.available():
            return
        try:
            # The client decodes replies as UTF-8 text; a JSON body is UTF-8.
            self._client.set(self._key(key), body.decode(), ex=self._ttl)
        except redis_lib.RedisError as exc:
            self._breaker.trip(exc)


class RedisUserCache:
    """Per-user upvote sets in Redis, rebuilt from Postgres when cold."""

    def __init__(self, client: redis_lib.Redis, engine: Engine | None = None, *,
                 ttl_seconds: int = DEFAULT_TTL_SECONDS) -> None:
        self._redis = client
        self._engine = engine
        self._ttl = ttl_seconds
        self._breaker = RedisBreaker("answering from Postgres")
        self._dirty: set[str] = set()
        self._dirty_lock = threading.Lock()
        self._apply = client.register_script(_APPLY_LUA)
        self._install = client.register_script(_INSTALL_LUA)
        self._read = client.register_script(_READ_LUA)
        self._q = queries("api_user_cache")

    @property
    def client(self) -> redis_lib.Redis:
        return self._redis

    def _flush_dirty(self) -> None:
        """Invalidate the sets of users whose changes could not be applied earlier."""
        if not self._dirty:
            return
        with self._dirty_lock:
            users, self._dirty = self._dirty, set()
        try:
            # Also bump each epoch: a rebuild that read the old epoch before the
            # missed change committed must not install its snapshot afterwards.
            pipe = self._redis.pipeline(transaction=True)
            for u in users:
                s_key, c_key, _t, e_key = user_keys(u)
                pipe.delete(s_key, c_key)
                pipe.incr(e_key)
                pipe.expire(e_key, self._ttl)
            pipe.execute()
        except redis_lib.RedisError:
            with self._dirty_lock:
                self._dirty |= users
            raise

    # -- writes -----------------------------------------------------------------
    def add_upvote(self, user_id: str, project_id: str, changed_at_us: int) -> bool:
        """Record a committed upvote; False if Redis could not be updated."""
        return self._record(user_id, project_id, True, changed_at_us)

    def remove_upvote(self, user_id: str, project_id: str, changed_at_us: int) -> bool:
        """Record a committed upvote removal; False if Redis could not be updated."""
        return self._record(user_id, project_id, False, changed_at_us)

    def _record(self, user_id: str, project_id: str, upvoted: bool, changed_at_us: int) -> bool:
        if self._breaker.available():
            try:
                self._flush_dirty()
                self._apply(keys=list(user_keys(user_id)),
                            args=[project_id, "1" if upvoted else "0", int(changed_at_us), self._ttl])
                return True
            except redis_lib.RedisError as exc:
                self._breaker.trip(exc)
        metrics.USER_CACHE_WRITE_ERRORS.inc()
        with self._dirty_lock:
            self._dirty.add(user_id)
        return False

    # -- reads ------------------------------------------------------------------
    def get_user_upvotes(self, user_id: str, ids: Iterable[str], reader: Reader | None = None) -> set[str]:
        """The subset of ``ids`` the user has upvoted (Redis, else Postgres)."""
        return self.overlay(user_id, list(ids), reader).upvoted

    def overlay(self, user_id: str, ids: Sequence[str], reader: Reader | None = None) -> Overlay:
        """Upvoted subset of ``ids`` plus the user's recent toggles of them."""
        ids = [str(i) for i in ids]
        if not ids:
            return Overlay(set(), {}, "redis")
        if self._breaker.available():
            try:
                self._flush_dirty()
                return self._overlay_redis(user_id, ids, reader)
            except redis_lib.RedisError as exc:
                self._breaker.trip(exc)
        metrics.USER_CACHE_FALLBACKS.inc()
        return Overlay(self._upvoted_among_pg(user_id, ids, reader), {}, "postgres")

    def _overlay_redis(self, user_id: str, ids: list[str], reader: Reader | None) -> Overlay:
        s_key, c_key, t_key, e_key = user_keys(user_id)
        complete, members, raw_toggles, epoch = self._read(keys=[s_key, c_key, t_key, e_key], args=ids)
        toggles = {pid: t for pid, raw in zip(ids, raw_toggles, strict=True) if (t := Toggle.parse(raw))}
        if complete:
            metrics.USER_CACHE_HITS.inc()
            return Overlay({pid for pid, m in zip(ids, members, strict=True) if m}, toggles, "redis")
        metrics.USER_CACHE_MISSES.inc()
        # The epoch was read (above) before the Postgres snapshot (below).
        all_ids = self._all_upvoted_pg(user_id, reader)
        installed = self._install(keys=[s_key, c_key, e_key], args=[epoch or "0", self._ttl, *all_ids])
        metrics.USER_CACHE_REBUILDS.labels("installed" if installed else "raced").inc()
        return Overlay({pid for pid in ids if pid in all_ids}, toggles, "rebuilt")

    def rebuild(self, user_id: str, reader: Reader | None = None) -> bool:
        """Load the user's set from Postgres now; False if a concurrent change won."""
        s_key, c_key, _t, e_key = user_keys(user_id)
        epoch = self._redis.get(e_key)
        all_ids = self._all_upvoted_pg(user_id, reader)
        return bool(self._install(keys=[s_key, c_key, e_key], args=[epoch or "0", self._ttl, *all_ids]))

    def invalidate(self, user_id: str) -> None:
        self._redis.delete(*user_keys(user_id)[:2])

    # -- Postgres side ----------------------------------------------------------
    def _run(self, reader: Reader | None, name: str, params: dict[str, Any]) -> list[str]:
        if reader is not None:
            # Scalar parameters only can be prepared (see api.db.Prepared).
            return [r[0] for r in reader.tuples(self._q[name], params, prepared=name == "user_upvoted_ids")]
        if self._engine is None:
            raise RuntimeError("RedisUserCache needs an engine or a connection to read Postgres")
        with self._engine.connect() as own:
            return [r[0] for r in own.execute(self._q[name], params)]

    def _all_upvoted_pg(self, user_id: str, reader: Reader | None) -> set[str]:
        return set(self._run(reader, "user_upvoted_ids", {"user_id": user_id}))

    def _upvoted_among_pg(self, user_id: str, ids: list[str], reader: Reader | None) -> set[str]:
        return set(self._run(reader, "user_upvoted_among", {"user_id": user_id, "ids": ids}))

    # -- health -----------------------------------------------------------------
    def health_check(self) -> dict[str, Any]:
        """``{"status": "healthy"|"unhealthy", "latency_ms", ...}`` for /health."""
        started = time.perf_counter()
        try:
            self._redis.ping()
            info = self._redis.info(section="memory")
            latency = round((time.perf_counter() - started) * 1000, 2)
            return {
                "status": "healthy",
                "latency_ms": latency,
                "used_memory_human": info.get("used_memory_human"),
                "circuit_open": not self._breaker.available(),
            }
        except redis_lib.RedisError as exc:
            return {"status": "unhealthy", "error": f"{type(exc).__name__}: {exc}"}
