"""gunicorn settings for the API: ``gunicorn -c api/gunicorn_conf.py 'api:create_app()'``.

Read from the same environment as the app (schema.settings), so
``API_HOST``/``API_PORT``/``GUNICORN_WORKERS``/``GUNICORN_THREADS``/
``GUNICORN_TIMEOUT`` set everything. Choices and why:

* ``preload_app = False``: each worker imports the app after fork, so the
  SQLAlchemy pool, the Redis pool and the Celery producer are per process and
  no socket is ever shared across a fork.
* worker class: ``GUNICORN_WORKER_CLASS`` (default ``gthread`` with
  ``GUNICORN_THREADS`` threads). ``bench/api_load.py`` measures sync against
  gthread on this machine; see its output for the figures behind the default.
* the control socket is off: gunicorn >= 25.1 opens ``~/.gunicorn/gunicorn.ctl``
  by default and two instances of one user (tests, benchmarks, make up)
  fight over it (STACK.md).
"""

import os

from schema.settings import Settings

_settings = Settings.from_env()

bind = os.environ.get("GUNICORN_BIND") or f"{_settings.api_host}:{_settings.api_port}"
workers = _settings.gunicorn_workers
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gthread")
threads = _settings.gunicorn_threads if worker_class == "gthread" else 1
timeout = _settings.gunicorn_timeout
graceful_timeout = 10
keepalive = 5
preload_app = False
control_socket_disable = True
# Bounded request lines and headers (a JWT fits easily).
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None  # off unless asked: it costs at high req/s
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")
proc_name = "discovery-api"
