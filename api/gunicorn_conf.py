"""gunicorn settings for the API: ``gunicorn -c api/gunicorn_conf.py 'api:create_app()'``.

Everything comes from the one settings object (schema/settings.py), i.e. the
environment: ``API_HOST``/``API_PORT`` (bind), ``GUNICORN_WORKERS``,
``GUNICORN_THREADS``, ``GUNICORN_TIMEOUT``, ``GUNICORN_WORKER_CLASS``. One-off
overrides use gunicorn's own ``GUNICORN_CMD_ARGS`` (e.g. ``--log-level warning
--access-logfile -``), which gunicorn applies on top of this file.

Choices and why:

* ``preload_app = False``: each worker imports the app after fork, so the
  Postgres pools, the Redis pool and the Celery producer are per process and
  no socket is ever shared across a fork.
* worker class: ``gthread`` by default, ``sync`` selectable. bench/api_load.py
  measures both on the same run (see its output / api/README.md): with the
  page cache most reads are CPU-bound and the two are close; gthread keeps
  keep-alive connections and overlaps Postgres/Redis waits inside a process.
* the control socket is off: gunicorn >= 25.1 opens ``~/.gunicorn/gunicorn.ctl``
  by default and two instances of one user (tests, benchmarks, make up)
  fight over it (STACK.md).
* no access log by default: at thousands of requests per second it costs a
  noticeable share of the CPU (turn it on with ``--access-logfile -``).
"""

import sys

from schema.settings import Settings, SettingsError

try:
    _settings = Settings.from_env()
except SettingsError as exc:
    # One line naming the setting and a non-zero exit, instead of gunicorn's
    # "Failed to read config file" and a traceback (SystemExit passes through
    # gunicorn's config loader, which catches Exception only).
    print(f"api: refusing to start: {exc}", file=sys.stderr, flush=True)
    raise SystemExit(2) from None

bind = f"{_settings.api_host}:{_settings.api_port}"
workers = _settings.gunicorn_workers
worker_class = _settings.gunicorn_worker_class
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
errorlog = "-"
loglevel = "info"
proc_name = "discovery-api"
