"""Beat's schedule: one dict naming tasks by string.

Nothing here imports task code: Beat only sends messages by name, and the
queues come from tasks/routes.py through the app's task_routes. Only what is
enabled is scheduled.
"""

from __future__ import annotations

from typing import Any

from celery.schedules import crontab

from schema.settings import Settings


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """The schedule for these settings (read when Beat starts)."""
    schedule: dict[str, dict[str, Any]] = {}
    if settings.mv_refresh_worker_enabled:
        # Debounce is decided in Postgres (mv_due_views); the sweep only asks
        # often. Staleness is bounded by debounce window + sweep interval +
        # refresh time, so the interval is short (2 s by default). A sweep is
        # cheap: a few index lookups per registered view.
        schedule["sweep-refresh-queue"] = {
            "task": "tasks.sweep_refresh_queue",
            "schedule": float(settings.sweep_interval),
            # A sweep that waited longer than two intervals (workers down or
            # busy) is dropped: the next one does the same work with fresher
            # data, and a backlog of sweeps would only run back to back.
            "options": {"expires": max(2.0 * settings.sweep_interval, 1.0)},
        }
    if settings.reconciliation_job_enabled:
        # The guide's crontab line (0 3 * * *): once a night at 03:00 (UTC,
        # the app's timezone), when writes are fewest, because reconciliation
        # recomputes every denormalized row from the base tables.
        schedule["nightly-reconciliation"] = {
            "task": "tasks.reconcile",
            "schedule": crontab(hour=3, minute=0),
            # If no maintenance worker takes it within 6 hours, skip the night
            # rather than run it into the day's peak.
            "options": {"expires": 6 * 3600},
        }
    return schedule
