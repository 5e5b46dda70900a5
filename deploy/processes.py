"""The app processes of the stack, and the one-off steps before them, defined once.

``make up`` (deploy/stack.py), compose.yaml, and the supervisor and systemd
files under deploy/ all run these same commands; tests/test_stack_files.py
checks that they agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from schema.settings import Settings


@dataclass(frozen=True)
class Process:
    name: str
    argv: tuple[str, ...]  # relative to the venv's bin directory for the first element
    listens: str | None = None  # human-readable address, for `make up`'s summary
    health_url: str | None = None


def processes(settings: Settings, run_dir: str = ".run") -> list[Process]:
    """The app processes to run for these settings (without Postgres and Redis)."""
    api = Process(
        "api",
        ("gunicorn", "-c", "api/gunicorn_conf.py", "api:create_app()"),
        listens=f"http://{settings.api_host}:{settings.api_port}",
        health_url=f"http://{settings.api_host}:{settings.api_port}/health",
    )
    procs = [api]
    if settings.mv_refresh_worker_enabled:
        # Refreshes get their own worker so a slow refresh never delays the sweep
        # or reconciliation; concurrency 2 lets two different views refresh at once.
        procs.append(Process(
            "worker-refresh",
            ("celery", "-A", "tasks", "worker", "-Q", "refresh", "-n", "refresh@%h", "-c", "2",
             "--without-gossip", "--without-mingle", "-l", "INFO"),
        ))
    # Two children: a nightly reconciliation (hours at scale) holds one, the
    # sweep (which also folds Phase 1 delta rows) keeps the other.
    procs.append(Process(
        "worker-default",
        ("celery", "-A", "tasks", "worker", "-Q", "default,maintenance", "-n", "default@%h", "-c", "2",
         "--without-gossip", "--without-mingle", "-l", "INFO"),
    ))
    procs.append(Process(
        "beat",
        ("celery", "-A", "tasks", "beat", "-l", "INFO", "-s", f"{run_dir}/celerybeat-schedule"),
    ))
    procs.append(Process(
        "flower",
        ("celery", "-A", "tasks", "flower", f"--address={settings.flower_host}", f"--port={settings.flower_port}"),
        listens=f"http://{settings.flower_host}:{settings.flower_port}",
        health_url=f"http://{settings.flower_host}:{settings.flower_port}/healthcheck",
    ))
    return procs


def setup_commands(seed_scale: str = "demo") -> list[tuple[str, ...]]:
    """One-off steps before the app processes start, in order (``make up``; compose's ``migrate`` service).

    The first element is relative to the venv's bin directory. Each step is
    safe to repeat: the extension is created IF NOT EXISTS, migrate skips what
    is applied, and the seed does nothing on a database that has users.
    """
    return [
        ("python", "-m", "deploy.stack", "enable-pg-stat-statements"),
        ("python", "-m", "schema", "migrate"),
        ("python", "-m", "schema", "seed", "--scale", seed_scale, "--if-empty"),
    ]
