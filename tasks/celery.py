"""The one Celery app: ``celery -A tasks worker|beat|flower|call``.

``celery -A tasks`` finds ``app`` here (tasks/__init__.py stays empty so a
sender importing ``tasks.routes`` gets no task code). The configuration is a
promise (``add_defaults`` with a callable): the environment is read when a
command first needs it, not at import, so importing this module is cheap and
a sender can build its own app for its own settings with ``create_app``.

Beat's schedule lives in ``beat/`` and names tasks by string. This module
names Beat's scheduler class by string too (``beat_scheduler``), so only the
Beat process ever imports ``beat/`` (Celery resolves the string when Beat
starts), and ``tasks/`` has no import of ``beat/``. The scheduler sets
``beat_schedule`` from the settings before it reads it (see beat/__init__.py).
"""

from __future__ import annotations

import sys
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from schema.settings import Settings
from tasks.routes import QUEUE_DEFAULT, QUEUES, REFRESH_VIEW, TASK_ROUTES

# `celery -A tasks` puts the current directory on sys.path only while it
# imports this package (and removes it afterwards); Beat imports its
# scheduler by name later ("beat:DiscoveryScheduler"), so keep the project
# root importable. Appended, so it never shadows an installed module.
sys.path.append(str(Path(__file__).resolve().parent.parent))

# The longest retry delay of a failed refresh. Retries are ETA messages, and
# the Redis transport redelivers an unacknowledged ETA message after the
# visibility timeout (celery #5306), so this stays far below that timeout.
MAX_RETRY_DELAY = 120.0


def refresh_time_limits(settings: Settings) -> tuple[float, float]:
    """(soft, hard) time limits of one refresh task, from REFRESH_TIME_LIMIT.

    The soft limit leaves the task time to cancel its statement, roll back,
    log the failure and release the lock before the hard limit kills it.
    """
    hard = float(settings.refresh_time_limit)
    soft = max(hard - max(10.0, hard * 0.05), hard * 0.5)
    return soft, hard


def visibility_timeout(settings: Settings) -> float:
    """Redis broker visibility timeout: longer than anything a task may hold a message.

    With acks_late a message stays unacknowledged while its task runs; if the
    timeout were shorter than a refresh, Redis would hand the same message to
    a second worker mid-refresh. So: the hard time limit, plus one lock TTL
    (a refresh may start just before its lock expires), plus the longest retry
    delay, plus slack. A worker killed outright has its message redelivered
    after this long; nothing waits for that (requests live in Postgres and the
    sweep re-enqueues), the late duplicate only finds nothing to do.
    """
    _, hard = refresh_time_limits(settings)
    return hard + settings.refresh_lock_ttl + MAX_RETRY_DELAY + 60.0


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration for these settings."""
    soft, hard = refresh_time_limits(settings)
    return {
        "broker_url": settings.celery_broker_url,
        "result_backend": settings.celery_result_backend,
        "broker_connection_retry_on_startup": True,
        # Ignored by the AMQP transport, which has real acknowledgements.
        "broker_transport_options": {"visibility_timeout": visibility_timeout(settings)},
        # Queues declared in one place (tasks/routes.py). Direct queues are
        # published through the default exchange by queue name, so routing
        # does not depend on binding keys kept in the broker (a Redis FLUSHALL
        # wipes those; publishing still reaches the queue's list).
        "task_queues": [Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES],
        "task_default_queue": QUEUE_DEFAULT,
        "task_routes": TASK_ROUTES,
        "task_create_missing_queues": False,
        # A message is acknowledged after its task ends, and a child killed by
        # SIGKILL gives its message back (celery #1628). Duplicates are
        # harmless: the lock says "locked", or no requests are left ("skipped").
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # One reserved message per process: a slow refresh must not sit on
        # messages another idle worker could run.
        "worker_prefetch_multiplier": 1,
        # A running refresh keeps going when the broker connection drops: its
        # Postgres transaction and fence do not depend on the broker, and a
        # redelivered duplicate is harmless (see above).
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # Flower and monitoring see tasks from the moment they are sent.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_track_started": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_expires": 3600,
        "result_extended": True,
        "timezone": "UTC",
        "enable_utc": True,
        "task_annotations": {REFRESH_VIEW: {"soft_time_limit": soft, "time_limit": hard}},
        # Default limits for everything else (the sweep sets tighter ones).
        "task_soft_time_limit": 3300,
        "task_time_limit": 3600,
        "beat_scheduler": "beat:DiscoveryScheduler",
        # Celery's consumer, except that a broker lost while a task is running no
        # longer kills the worker (tasks/consumer.py). Named by string: only a
        # worker process imports it.
        "worker_consumer": "tasks.consumer:Consumer",
    }


def task_modules() -> list[str]:
    """Modules that register tasks. The reconciliation task module is another
    engineer's and may not exist yet in a checkout; a worker must still start."""
    modules = ["tasks.refresh"]
    if find_spec("tasks.reconcile") is not None:
        modules.append("tasks.reconcile")
    return modules


def create_app(settings: Settings | None = None, *, main: str = "tasks") -> Celery:
    """A Celery app for these settings (default: read from the environment when first needed).

    Senders (the API, tests) use this to send tasks by name; it loads no task code.
    """
    celery_app = Celery(main, include=task_modules(), set_as_current=False)
    if settings is None:
        celery_app.add_defaults(lambda: celery_config(Settings.from_env()))
    else:
        celery_app.add_defaults(celery_config(settings))
    return celery_app


app = create_app()
app.set_current()
app.set_default()
