"""Task names, queues and routes as plain data.

A sender (the API, the CLI, Beat) imports this module, never the task
modules: a task sent by name never sees its decorator's options, so the queue
of each task is decided here and the Celery app and every sender load the
same table. No Celery import here on purpose.
"""

from __future__ import annotations

# Task names (docs/internals.md). Senders use these strings with send_task().
REFRESH_VIEW = "tasks.refresh_view"
SWEEP_REFRESH_QUEUE = "tasks.sweep_refresh_queue"
REQUEST_REFRESH = "tasks.request_refresh"
RECONCILE = "tasks.reconcile"  # written by the reconciliation engineer

# Queues, declared once. Refreshes get their own queue so a slow refresh never
# delays the sweep (which must tick every couple of seconds for debounce to
# work) or reconciliation, and so a deployment can give them their own worker.
QUEUE_DEFAULT = "default"
QUEUE_REFRESH = "refresh"
QUEUE_MAINTENANCE = "maintenance"
QUEUES: tuple[str, ...] = (QUEUE_DEFAULT, QUEUE_REFRESH, QUEUE_MAINTENANCE)

TASK_ROUTES: dict[str, dict[str, str]] = {
    REFRESH_VIEW: {"queue": QUEUE_REFRESH},
    SWEEP_REFRESH_QUEUE: {"queue": QUEUE_DEFAULT},
    REQUEST_REFRESH: {"queue": QUEUE_DEFAULT},
    RECONCILE: {"queue": QUEUE_MAINTENANCE},
}
