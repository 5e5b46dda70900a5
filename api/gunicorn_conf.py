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
* metrics summed across workers: prometheus_client's multiprocess mode. Each
  worker writes its counters and histograms to memory-mapped files in
  ``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` (monitoring/metrics.py) sums
  the files of every worker, so whichever worker answers a scrape reports the
  totals. Chosen over per-worker scraping (Prometheus cannot address a
  gunicorn worker) and over a push to a gateway or statsd (another service to
  run). The directory is set in the master before any worker forks (the
  library reads it at import); given, it is wiped of old files at start
  (stale files would add a previous run's counts); not given, a fresh
  temporary one is made and removed at exit. Files of dead workers stay:
  their counts are part of the totals (``child_exit`` only drops the
  live-gauge files, the library's documented clean-up; we have none yet).
"""

import os
import shutil
import sys
import tempfile
from pathlib import Path

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


def on_starting(server: object) -> None:
    """Once per master start (not on HUP reloads, which keep the directory and its counts)."""
    given = _settings.prometheus_multiproc_dir
    path = Path(given) if given else Path(tempfile.mkdtemp(prefix="discovery-metrics-"))
    path.mkdir(parents=True, exist_ok=True)
    if given:
        for stale in path.glob("*.db"):
            stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)  # inherited by every forked worker
    server.discovery_metrics_dir = (path, not given)


def child_exit(server: object, worker: object) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, os.environ["PROMETHEUS_MULTIPROC_DIR"])


def on_exit(server: object) -> None:
    path, owned = getattr(server, "discovery_metrics_dir", (None, False))
    if owned:
        shutil.rmtree(path, ignore_errors=True)
