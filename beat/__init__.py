"""Celery Beat for the discovery engine: the schedule and the scheduler that installs it.

``celery -A tasks beat`` uses ``DiscoveryScheduler`` because the app names it
by string (``beat_scheduler = "beat:DiscoveryScheduler"`` in tasks/celery.py),
so this package is imported by the Beat process only, and ``tasks/`` never
imports ``beat/``. The schedule is read from the environment when Beat starts
(``beat/schedule.py``); a changed setting takes effect on Beat's next start,
and entries that are no longer scheduled are dropped from the schedule file.
"""

from __future__ import annotations

from celery.beat import PersistentScheduler

from beat.schedule import beat_schedule
from schema.settings import Settings


class DiscoveryScheduler(PersistentScheduler):
    """Celery's file-backed scheduler with our schedule installed before it is read."""

    def setup_schedule(self) -> None:
        self.app.conf.beat_schedule = beat_schedule(Settings.from_env())
        super().setup_schedule()
