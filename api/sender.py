"""Send Celery tasks by name, without importing any task code.

The API depends on the workers only through task names and routes
(DESIGN.md: ``api -> tasks (by signature only)``). Routes are plain data in
``tasks/routes.py``; a task sent by name never sees its decorator's
``queue=``, so the queue is looked up here and passed explicitly.

A broker that is down must not hang a request: connection retries are off,
the connect and socket timeouts are short, and any failure becomes
``SenderUnavailable`` (the resource answers 503).
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Mapping
from typing import Any, Protocol

log = logging.getLogger("api.sender")

REFRESH_TASK = "tasks.refresh_view"
# Used when tasks/routes.py is absent or has no entry (internals.md: refreshes on `refresh`).
DEFAULT_QUEUES = {REFRESH_TASK: "refresh"}


class SenderUnavailable(RuntimeError):
    """The broker could not take the message (down, unreachable, refused)."""


class TaskSender(Protocol):
    def send(self, name: str, args: list[Any] | None = None, kwargs: dict[str, Any] | None = None) -> str: ...


def load_routes() -> Mapping[str, Any]:
    """The routes table of ``tasks/routes.py`` (plain data), or {} if there is none."""
    try:
        module = importlib.import_module("tasks.routes")
    except ImportError:
        return {}
    for attr in ("TASK_ROUTES", "ROUTES", "task_routes", "routes"):
        value = getattr(module, attr, None)
        if isinstance(value, Mapping):
            return value
    return {}


def queue_for(name: str, routes: Mapping[str, Any] | None = None) -> str | None:
    routes = load_routes() if routes is None else routes
    route = routes.get(name)
    if isinstance(route, Mapping) and route.get("queue"):
        return str(route["queue"])
    if isinstance(route, str):
        return route
    return DEFAULT_QUEUES.get(name)


class CelerySender:
    """Publishes task messages to the broker by task name."""

    def __init__(self, broker_url: str, *, timeout: float = 1.0, routes: Mapping[str, Any] | None = None) -> None:
        self._broker_url = broker_url
        self._timeout = timeout
        self._routes = load_routes() if routes is None else routes
        self._app: Any = None
        self._lock = threading.Lock()

    def _celery(self) -> Any:
        # Built on first use, i.e. in the gunicorn worker after fork.
        if self._app is None:
            with self._lock:
                if self._app is None:
                    from celery import Celery

                    app = Celery("discovery-api", broker=self._broker_url, set_as_current=False)
                    app.conf.update(
                        broker_connection_retry=False,
                        broker_connection_retry_on_startup=False,
                        broker_connection_timeout=self._timeout,
                        broker_connection_max_retries=0,
                        broker_transport_options={
                            "socket_connect_timeout": self._timeout,
                            "socket_timeout": self._timeout,
                            "max_retries": 0,
                        },
                        task_send_sent_event=True,  # Flower shows API-sent tasks
                        task_routes=dict(self._routes),
                    )
                    self._app = app
        return self._app

    def queue_for(self, name: str) -> str | None:
        return queue_for(name, self._routes)

    def send(self, name: str, args: list[Any] | None = None, kwargs: dict[str, Any] | None = None) -> str:
        """Publish ``name(*args, **kwargs)`` on its queue; the task id, or SenderUnavailable."""
        try:
            result = self._celery().send_task(
                name, args=args or [], kwargs=kwargs or {}, queue=self.queue_for(name), retry=False,
            )
        except Exception as exc:  # kombu/redis raise many types; all mean "not sent"
            log.warning("could not send %s: %s", name, exc)
            raise SenderUnavailable(f"task broker unavailable: {type(exc).__name__}: {exc}") from exc
        return str(result.id)

    def close(self) -> None:
        if self._app is not None:
            try:
                self._app.close()
            except Exception:  # closing a broken connection is best effort
                pass
