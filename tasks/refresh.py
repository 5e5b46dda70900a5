"""Celery tasks of the refresh engine: thin wrappers over tasks/refresh_engine.py.

Queues come from tasks/routes.py (a task sent by name never sees decorator
options). Worker-side options sit here, beside each task.
"""

from __future__ import annotations

import logging
import os
import random
from typing import Any

import sqlalchemy as sa
from celery import Task

from tasks import refresh_engine
from tasks.celery import MAX_RETRY_DELAY, app
from tasks.deps import worker_deps
from tasks.refresh_engine import RefreshFailed, UnknownView
from tasks.routes import REFRESH_VIEW, REQUEST_REFRESH, SWEEP_REFRESH_QUEUE

log = logging.getLogger(__name__)

# What a retry may cure: the refresh itself failed (rolled back, logged
# failed, requests back in the queue), or the database connection broke.
# Never UnknownView: a wrong name stays wrong.
RETRYABLE = (RefreshFailed, sa.exc.OperationalError, sa.exc.InterfaceError)


def retry_delay(base: float, retries: int, cap: float = MAX_RETRY_DELAY) -> float:
    """Exponential backoff with "equal jitter": half fixed, half random.

    Celery's own ``retry_jitter`` draws from [0, backoff], so a later retry
    can come sooner than an earlier one; here retry n waits between
    base*2^n/2 and base*2^n, so delays grow and retries of many failing
    views still spread out.
    """
    full = min(cap, base * (2 ** retries))
    return full / 2 + random.uniform(0, full / 2)


def _worker_name(task: Task) -> str:
    return f"{task.request.hostname or 'local'} pid {os.getpid()}"


def _statement_budget(task: Task) -> float | None:
    """Seconds the refresh statement may run: just under the soft time limit.

    A soft time limit cannot interrupt a thread blocked in libpq, so the
    refresh transaction gets its own statement_timeout; Postgres then stops
    refreshing on its own instead of working on after the task gave up.
    """
    limits = task.request.timelimit or (None, None)
    soft = limits[1] if len(limits) > 1 and limits[1] else task.soft_time_limit
    if not soft:
        return None
    return max(1.0, float(soft) - 3.0)


# throws: an unknown name is an expected refusal, logged without a traceback.
@app.task(bind=True, name=REFRESH_VIEW, acks_late=True, reject_on_worker_lost=True, throws=(UnknownView,))
def refresh_view(self: Task, view_name: str, manual: bool = True, seen_us: int | None = None) -> dict[str, Any]:
    """Refresh one view under its lock (see refresh_engine.run_refresh).

    ``manual`` defaults to True because a call that names only the view is a
    person asking for a refresh (``celery -A tasks call tasks.refresh_view
    --args='["mv_feed_projects"]'``, the API's admin endpoint): it refreshes
    even with no request pending. The sweep passes ``manual=False`` and
    ``seen_us`` (the view's covered_at when it found it due; a retry keeps it).
    """
    deps = worker_deps()
    try:
        result = refresh_engine.run_refresh(
            deps, view_name, manual=bool(manual), worker=_worker_name(self),
            statement_timeout_s=_statement_budget(self), seen_us=seen_us,
        )
    except UnknownView as exc:
        log.error("refresh_view refused: %s", exc)
        raise
    except RETRYABLE as exc:
        settings = deps.settings
        if self.request.retries >= settings.refresh_max_retries:
            # Give up for now; keep the sweep away for one more backoff step so
            # a view that keeps failing does not fail on every sweep.
            pause = retry_delay(settings.refresh_retry_backoff, self.request.retries)
            refresh_engine.hold_queued(deps, view_name, pause)
            log.error("refresh of %s failed after %d retries: %s", view_name, self.request.retries, exc)
            raise
        delay = retry_delay(settings.refresh_retry_backoff, self.request.retries)
        # The retry is this view's next refresh; the sweep must not add another meanwhile.
        refresh_engine.hold_queued(deps, view_name, delay + refresh_engine.queued_marker_ttl(deps))
        log.warning("refresh of %s failed (%s); retry %d in %.1f s", view_name, exc, self.request.retries + 1, delay)
        raise self.retry(exc=exc, countdown=delay, max_retries=settings.refresh_max_retries) from exc
    return result.as_dict()


# The sweep is acknowledged on receipt (acks_late=False): a lost sweep is
# replaced by the next one seconds later, while an unacknowledged one would
# be redelivered by Redis only after the visibility timeout, long stale.
@app.task(name=SWEEP_REFRESH_QUEUE, acks_late=False, ignore_result=True, soft_time_limit=30, time_limit=60)
def sweep_refresh_queue() -> dict[str, Any]:
    """Beat's sweep: mark abandoned refreshes, fold Phase 1 deltas, enqueue due views."""
    deps = worker_deps()

    def enqueue(view_name: str, seen_us: int) -> None:
        refresh_view.apply_async(args=[view_name], kwargs={"manual": False, "seen_us": seen_us})

    return refresh_engine.sweep_refresh_queue(deps, enqueue).as_dict()


# Retried when a running refresh holds the view's registry row past the lock
# timeout: the request must not be lost, and must not hold a worker meanwhile.
@app.task(name=REQUEST_REFRESH, soft_time_limit=30, time_limit=60, throws=(UnknownView,),
          autoretry_for=(sa.exc.OperationalError,), retry_backoff=1, retry_backoff_max=30, retry_jitter=True,
          max_retries=20)
def request_refresh(view_name: str) -> dict[str, Any]:
    """Debounced refresh request: the sweep refreshes the view once it is due."""
    return refresh_engine.request_refresh(worker_deps(), view_name)
