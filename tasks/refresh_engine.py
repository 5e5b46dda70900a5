"""The refresh engine as plain functions: no Celery here.

The Celery tasks in tasks/refresh.py are thin wrappers over these, and tests
and the CLI call them directly. The SQL bookkeeping (requests, fence, log,
what is due) lives in Postgres (migrations/0020, docs/internals.md); this
module adds what Postgres cannot do alone: a lock that keeps workers on
different machines from even starting a second refresh of a view, and the
sweep that turns pending requests into tasks.

Guarantees and where they come from:

* Single flight per view: the Redis lock ``mvlock:<view>`` (first gate, costs
  no database connection), a session advisory lock (second gate, also when
  Redis is down), and in Postgres the registry row lock plus fence inside
  ``mv_refresh_run`` (which alone would already serialize refresh
  transactions, but by making the second one wait on a connection).
* Nothing lost: ``mv_refresh_run`` deletes only request rows committed before
  its snapshot and refreshes with a snapshot at least as new; a failed or
  rolled-back refresh gives its request rows back.
* Crash: a killed worker's transaction is rolled back by Postgres, its log row
  becomes ``abandoned`` in the next sweep, its Redis lock expires after one
  TTL, and its request rows make the view due again.

Redis down, flushed or restarted (decided here; tested in tests/test_engine_service.py
with Redis unreachable, tests/test_engine_workers.py flushed mid-refresh and
tests/test_engine_redis_restart.py restarted empty under a real worker and Beat):
Redis is an accelerator, not the source of truth. If Redis cannot be reached
to take the lock, the refresh still runs, under the advisory lock and the
fence, which keep it single-flight on their own. If the lock is lost while a
refresh runs (FLUSHALL, expiry), the refresh rolls back before COMMIT and is
logged failed ("superseded"); its requests come back and the next sweep
refreshes again. If Redis cannot answer the pre-commit check, the refresh
commits: it holds the advisory lock and a fence no newer refresh has passed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa
from redis.exceptions import RedisError
from sqlalchemy.engine import Connection, Engine

from schema.db import queries
from tasks.deps import Deps
from tasks.locks import RedisUnavailable, ViewLock, queued_key

log = logging.getLogger(__name__)

# Namespace (first key) of the per-view advisory locks: "MV".
ADVISORY_NAMESPACE = 0x4D56

# Seconds from a sweep's decision to the refresh taking its snapshot (task hand-off
# through the broker, the lock, the begin transaction), with room to spare on a busy box.
HANDOFF_MARGIN = 0.5

COMPLETED = "completed"  # refreshed and committed
SKIPPED = "skipped"  # nothing pending (or superseded by a newer fence); nothing refreshed
LOCKED = "locked"  # another refresh of the view holds the lock; requests stay pending
LOST = "lost"  # the lock was lost before COMMIT; rolled back, requests stay pending
DISABLED = "disabled"  # MV_REFRESH_WORKER_ENABLED=false, or the view is disabled in mv_registry


def _q(name: str) -> sa.TextClause:
    return queries("refresh")[name]


class UnknownView(ValueError):
    """A view name that is not in mv_registry. Never retried.

    Constructed from the message alone so that Celery can rebuild it from a
    stored result; use ``UnknownView.named`` to raise one.
    """

    view_name: object = None
    known: tuple[str, ...] = ()

    @classmethod
    def named(cls, view_name: object, known: list[str]) -> UnknownView:
        listed = ", ".join(known) if known else "(none registered)"
        exc = cls(f"unknown materialized view {view_name!r}; registered views: {listed}")
        exc.view_name, exc.known = view_name, tuple(known)
        return exc


class RefreshFailed(RuntimeError):
    """The refresh transaction raised; it was rolled back and logged failed. Retried with backoff."""


@dataclass
class RefreshResult:
    view_name: str
    status: str
    manual: bool = False
    log_id: int | None = None
    fence: int | None = None
    requests_cleared: int = 0
    duration_ms: int | None = None
    rows_in_view: int | None = None
    lock: str | None = None  # "redis" (Redis + advisory) or "postgres" (advisory only: Redis was down)
    lock_acquired_at: float | None = None  # epoch seconds, for cross-process overlap checks
    lock_released_at: float | None = None
    worker: str | None = None
    detail: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SweepResult:
    disabled: bool = False
    abandoned: int = 0
    folded: str | None = None
    due: list[str] = field(default_factory=list)
    enqueued: list[str] = field(default_factory=list)
    already_queued: list[str] = field(default_factory=list)
    waiting: dict[str, str] = field(default_factory=dict)  # view -> reason it is not due yet

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------


def registered_views(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return [row[0] for row in conn.execute(_q("registered_views"))]


def lookup_view(engine: Engine, view_name: object) -> bool:
    """Whether a registered view is enabled; raise UnknownView for any other name.

    The registry lookup is the only SQL an unknown name reaches (as a bound
    parameter); the list of known views in the error is read only then.
    """
    if not isinstance(view_name, str) or not view_name or len(view_name) > 63:
        raise UnknownView.named(view_name, registered_views(engine))
    with engine.connect() as conn:
        row = conn.execute(_q("view_lookup"), {"view": view_name}).first()
    if row is None:
        raise UnknownView.named(view_name, registered_views(engine))
    return bool(row.enabled)


# ---------------------------------------------------------------------------
# Requests and the debounce marker
# ---------------------------------------------------------------------------


def request_refresh(deps: Deps, view_name: str) -> dict[str, Any]:
    """Ask for a debounced refresh of one view (``mv_request_refresh``).

    No refresh runs here; the sweep enqueues one once the view is due. Raises
    sqlalchemy's OperationalError (lock timeout) if a running refresh of the
    view holds its registry row for more than a moment; the task retries.
    """
    lookup_view(deps.engine, view_name)
    with deps.engine.begin() as conn:
        conn.execute(_q("request_lock_timeout"))
        conn.execute(_q("request_refresh"), {"view": view_name})
    return {"view_name": view_name, "requested": True}


def queued_marker_ttl(deps: Deps) -> float:
    """How long the sweep's "already enqueued" marker lives.

    A few sweep intervals: long enough that a task waiting briefly in the
    queue is not enqueued again on every sweep, short enough that a lost
    message (broker flushed, worker gone) delays a refresh by seconds only.
    """
    return max(5.0, 3.0 * deps.settings.sweep_interval)


def claim_enqueue(deps: Deps, view_name: str, ttl: float | None = None) -> bool:
    """SET NX the marker; True if this caller should enqueue the refresh.

    Two Beats sweeping at once (celery #2856) both see a view due; only the
    one that sets the marker enqueues. If Redis is unreachable the sweep
    enqueues anyway: a duplicate is harmless (the lock or the empty request
    set turns it into a no-op), a missing refresh is not.
    """
    px = int((ttl if ttl is not None else queued_marker_ttl(deps)) * 1000)
    try:
        return bool(deps.redis.set(queued_key(view_name), "1", nx=True, px=px))
    except RedisError as exc:
        log.warning("cannot set %s (%s); enqueueing without duplicate protection", queued_key(view_name), exc)
        return True


def hold_queued(deps: Deps, view_name: str, seconds: float) -> None:
    """Keep the sweep from enqueueing the view for a while (a retry is already scheduled)."""
    try:
        deps.redis.set(queued_key(view_name), "retry", px=max(1, int(seconds * 1000)))
    except RedisError as exc:
        log.warning("cannot set %s (%s)", queued_key(view_name), exc)


def clear_queued(deps: Deps, view_name: str) -> None:
    try:
        deps.redis.delete(queued_key(view_name))
    except RedisError as exc:
        log.warning("cannot clear %s (%s); it expires by itself", queued_key(view_name), exc)


# ---------------------------------------------------------------------------
# One refresh
# ---------------------------------------------------------------------------


def run_refresh(
    deps: Deps,
    view_name: str,
    *,
    manual: bool = False,
    worker: str | None = None,
    statement_timeout_s: float | None = None,
    seen_us: int | None = None,
) -> RefreshResult:
    """Refresh one view unless another refresh of it is running.

    Never waits for a lock: if it is held, returns ``locked`` at once and the
    requests stay pending, so the next sweep comes back after the running
    refresh ends. A manual refresh (``manual=True``) refreshes even when no
    request is pending; a sweep refresh with nothing pending is ``skipped``.

    ``seen_us`` (sweep refreshes): the view's ``covered_at`` when the sweep
    found it due. If a refresh of the view has committed since, this one is a
    duplicate and is ``skipped`` without refreshing: the sweep decided on
    requests that are covered now, and the ones that came after wait for their
    own debounce window. Duplicates come from a sweep that read the view as due
    just before its refresh started and claimed the enqueue marker just after
    that refresh cleared it (overlapping sweeps, two Beats), from sweeps that
    enqueue without the marker while Redis is down, and from messages the
    broker redelivers after a worker died.

    Raises UnknownView before anything else for a name not in mv_registry,
    and RefreshFailed (after rolling back and logging ``failed``) when the
    refresh itself raised.
    """
    enabled = lookup_view(deps.engine, view_name)
    settings = deps.settings
    result = RefreshResult(view_name=view_name, status=DISABLED, manual=manual, worker=worker)
    marker_cleared = manual  # the sweep's marker belongs to sweep-enqueued tasks only
    try:
        if not settings.mv_refresh_worker_enabled:
            result.detail = "MV_REFRESH_WORKER_ENABLED=false: refreshes are switched off"
            log.warning("not refreshing %s: %s", view_name, result.detail)
            return result
        if not enabled and not manual:
            result.detail = "disabled in mv_registry (a manual refresh still runs)"
            log.info("not refreshing %s: %s", view_name, result.detail)
            return result

        lock = ViewLock(deps.redis, view_name, settings.refresh_lock_ttl)
        try:
            if not lock.acquire():
                result.status, result.detail = LOCKED, f"{lock.key} is held by another refresh"
                return result
            result.lock = "redis"
        except RedisUnavailable as exc:
            log.warning("Redis unreachable (%s): refreshing %s under the Postgres advisory lock alone", exc, view_name)
            result.lock = "postgres"
        result.lock_acquired_at = lock.acquired_at or time.time()
        try:
            _refresh_locked(deps, lock, result, force=manual, statement_timeout_s=statement_timeout_s,
                            on_started=lambda: None if manual else clear_queued(deps, view_name),
                            seen_us=None if manual else seen_us)
            marker_cleared = True
        finally:
            lock.release()  # compare-and-delete; a no-op when Redis was down at acquire
            # Stamped just before the key was deleted: the next holder's
            # acquisition is certainly later than this.
            result.lock_released_at = lock.released_at
        return result
    finally:
        if not marker_cleared:
            clear_queued(deps, view_name)


def _refresh_locked(
    deps: Deps,
    lock: ViewLock,
    result: RefreshResult,
    *,
    force: bool,
    statement_timeout_s: float | None,
    on_started: Callable[[], None],
    seen_us: int | None = None,
) -> None:
    """The part that runs while the Redis lock (if any) is held."""
    view_name = result.view_name
    params = {"namespace": ADVISORY_NAMESPACE, "view": view_name}
    with deps.engine.connect() as conn:
        got = conn.execute(_q("try_advisory_lock"), params).scalar()
        conn.commit()
        if not got:
            result.status, result.detail = LOCKED, "another session holds the view's advisory lock"
            return
        try:
            # Checked under both locks: no refresh of the view can commit between
            # this check and our own.
            if seen_us is not None and conn.execute(
                    _q("refreshed_since"), {"view": view_name, "seen_us": int(seen_us)}).scalar():
                conn.commit()
                result.status = SKIPPED
                result.detail = "already refreshed since the sweep enqueued this refresh (a duplicate)"
                return
            # The fence is taken after the lock: a holder whose lock expired
            # and was taken over has a lower fence and is refused by
            # mv_refresh_run's registry check.
            result.fence = int(conn.execute(_q("next_fence")).scalar_one())
            source = "manual" if force else "sweep"
            result.log_id = int(conn.execute(
                _q("refresh_begin"), {"view": view_name, "source": source, "worker": result.worker},
            ).scalar_one())
            conn.commit()  # in_progress is visible before the long transaction starts
            on_started()
            _refresh_transaction(deps, conn, lock, result, force=force, statement_timeout_s=statement_timeout_s)
        finally:
            _advisory_unlock(conn, params)


def _refresh_transaction(
    deps: Deps,
    conn: Connection,
    lock: ViewLock,
    result: RefreshResult,
    *,
    force: bool,
    statement_timeout_s: float | None,
) -> None:
    view_name = result.view_name
    dbapi_conn = conn.connection.dbapi_connection
    deadline = None
    if statement_timeout_s is not None and statement_timeout_s > 0:
        deadline = time.monotonic() + statement_timeout_s + 1.0

    def cancel_statement() -> None:
        # The statement_timeout should have fired already; this catches a
        # statement stuck where the timeout does not reach.
        log.warning("refresh of %s passed its deadline; cancelling the statement", view_name)
        dbapi_conn.cancel()  # type: ignore[union-attr]

    lock.start_renewal(deadline=deadline, on_deadline=cancel_statement if deadline else None)
    try:
        if statement_timeout_s is not None and statement_timeout_s > 0:
            conn.execute(_q("set_statement_timeout"), {"timeout_ms": str(max(1, int(statement_timeout_s * 1000)))})
        row = conn.execute(_q("refresh_run"), {
            "view": view_name, "log_id": result.log_id, "fence": result.fence, "force": force,
        }).mappings().one()
        if not _lock_still_ours(lock, result):
            conn.rollback()
            result.status = LOST
            result.detail = f"{lock.key} was lost before COMMIT; rolled back, requests stay pending"
            _log_failure(deps, result.log_id, f"superseded: {result.detail}")
            log.warning("refresh of %s: %s", view_name, result.detail)
            return
        conn.commit()
    except Exception as exc:
        _safe_rollback(conn)
        message = _one_line(exc)
        _log_failure(deps, result.log_id, message)
        result.status, result.detail = "failed", message
        if isinstance(exc, sa.exc.DBAPIError):
            raise RefreshFailed(f"refresh of {view_name} failed: {message}") from exc
        raise
    finally:
        lock.stop_renewal()
    result.status = row["status"]
    result.requests_cleared = int(row["requests_cleared"] or 0)
    result.duration_ms = row["duration_ms"]
    result.rows_in_view = row["rows_in_view"]
    log.info("refresh of %s: %s (%s requests, %s ms, fence %s)", view_name, result.status,
             result.requests_cleared, result.duration_ms, result.fence)


def _lock_still_ours(lock: ViewLock, result: RefreshResult) -> bool:
    if result.lock != "redis":
        return True
    try:
        return lock.still_owned()
    except RedisUnavailable as exc:
        # Cannot tell. Committing is safe: this session holds the advisory
        # lock and passed the fence check under the registry row lock.
        log.warning("cannot verify %s before COMMIT (%s); committing under the advisory lock", lock.key, exc)
        return True


def _advisory_unlock(conn: Connection, params: dict[str, Any]) -> None:
    try:
        if conn.invalidated:
            return  # the session is gone, and its lock with it
        _safe_rollback(conn)
        conn.execute(_q("advisory_unlock"), params)
        conn.commit()
    except sa.exc.DBAPIError as exc:
        # Closing the broken connection ends the session and frees the lock.
        log.warning("advisory unlock failed (%s); dropping the connection", _one_line(exc))
        conn.invalidate()


def _safe_rollback(conn: Connection) -> None:
    try:
        conn.rollback()
    except sa.exc.DBAPIError:
        conn.invalidate()


def _log_failure(deps: Deps, log_id: int | None, message: str) -> None:
    if log_id is None:
        return
    try:
        with deps.engine.begin() as conn:
            conn.execute(_q("refresh_fail"), {"log_id": log_id, "error": message})
    except sa.exc.DBAPIError as exc:
        # The sweep's mv_mark_abandoned() closes the row once the backend is gone.
        log.error("could not log failure of refresh %s (%s)", log_id, _one_line(exc))


def _one_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:500]


# ---------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------


def fold_denorm_deltas(engine: Engine) -> str | None:
    """Call Phase 1's fold_denorm_deltas() when the database has one (own transaction)."""
    with engine.begin() as conn:
        kind = conn.execute(_q("fold_deltas_kind")).scalar()
        if kind is None:
            return None
        if kind == "p":
            conn.execute(_q("fold_deltas_procedure"))
            return "called"
        rows = conn.execute(_q("fold_deltas_function")).all()
    return str(rows[0][0]) if len(rows) == 1 else f"{len(rows)} rows"


def due_views(deps: Deps) -> list[sa.RowMapping]:
    """Views with pending requests, each with ``due`` and ``reason`` (see the ``due_views`` query).

    The sweep looks one sweep interval plus HANDOFF_MARGIN ahead, so a view is
    enqueued before its oldest request has waited max_wait, not up to a sweep
    interval after.
    """
    lead = deps.settings.sweep_interval + HANDOFF_MARGIN
    with deps.engine.connect() as conn:
        return list(conn.execute(_q("due_views"), {"lead": lead}).mappings().all())


def sweep_refresh_queue(deps: Deps, enqueue: Callable[[str, int], object]) -> SweepResult:
    """One Beat sweep: close abandoned refreshes, fold deltas, enqueue due views.

    ``enqueue(view_name, seen_us)`` sends the refresh (the Celery task passes
    ``refresh_view.apply_async``); ``seen_us`` is the view's covered_at as this
    sweep read it, so a refresh that finds the view refreshed since knows it is
    a duplicate (see run_refresh). Debounce is decided by mv_due_views() in
    Postgres: a view is due once quiet for its window or when its oldest
    request has waited max_wait (looking one sweep ahead, see ``due_views``),
    and never while a live refresh of it runs.
    """
    result = SweepResult()
    if not deps.settings.mv_refresh_worker_enabled:
        result.disabled = True
        log.info("sweep skipped: MV_REFRESH_WORKER_ENABLED=false")
        return result
    with deps.engine.begin() as conn:
        result.abandoned = int(conn.execute(_q("mark_abandoned")).scalar() or 0)
    if result.abandoned:
        log.warning("marked %d in_progress refresh(es) abandoned (their backend is gone)", result.abandoned)
    try:
        result.folded = fold_denorm_deltas(deps.engine)
    except sa.exc.DBAPIError as exc:
        # Folding is Phase 1's business; a failure there must not stop refreshes.
        log.error("fold_denorm_deltas() failed: %s", _one_line(exc))
        result.folded = f"failed: {_one_line(exc)}"
    rows = due_views(deps)
    for row in rows:
        view_name = row["view_name"]
        if not row["due"]:
            result.waiting[view_name] = row["reason"]
            continue
        result.due.append(view_name)
        if claim_enqueue(deps, view_name):
            enqueue(view_name, int(row["covered_us"]))
            result.enqueued.append(view_name)
        else:
            result.already_queued.append(view_name)
    if result.enqueued:
        log.info("sweep enqueued %s", ", ".join(result.enqueued))
    return result


# ---------------------------------------------------------------------------
# Health
# ---------------------------------------------------------------------------


def refresh_health(engine: Engine, stale_after_seconds: float = 60.0) -> dict[str, Any]:
    """Monitoring-friendly state of the refresh engine.

    ``status`` is ``degraded`` when a view is stale (an enabled view's oldest
    pending request is older than ``stale_after_seconds``) or when a view's
    last finished refresh failed; else ``healthy``. Raises if the database
    cannot be read (the caller reports that as unhealthy).
    """
    with engine.connect() as conn:
        rows = conn.execute(_q("refresh_health"), {"stale_after": float(stale_after_seconds)}).mappings().all()
    views: dict[str, dict[str, Any]] = {}
    stale: list[str] = []
    failing: list[str] = []
    for row in rows:
        name = row["view_name"]
        views[name] = {
            "enabled": row["enabled"],
            "status": row["status"],
            "pending_requests": int(row["pending_requests"] or 0),
            "oldest_pending_seconds": None if row["oldest_pending_seconds"] is None
            else round(float(row["oldest_pending_seconds"]), 1),
            "last_status": row["last_status"],
            "last_refresh_completed_at": _iso(row["last_refresh_completed_at"]),
            "last_error": row["last_error"] if row["last_status"] == "failed" else None,
            "failures_last_hour": int(row["failures_last_hour"] or 0),
            "stale": bool(row["stale"]),
        }
        if row["stale"]:
            stale.append(name)
        if row["last_status"] == "failed":
            failing.append(name)
    return {
        "status": "degraded" if stale or failing else "healthy",
        "stale_views": len(stale),
        "stale": stale,
        "failing_views": failing,
        "failures_last_hour": sum(v["failures_last_hour"] for v in views.values()),
        "views": views,
    }


def _iso(value: Any) -> str | None:
    return None if value is None else value.isoformat()
