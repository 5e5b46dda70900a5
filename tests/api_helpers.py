"""Helpers of the API tests: apps on test settings, tokens, a real gunicorn process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import falcon
import falcon.testing
import sqlalchemy as sa

from api import create_app
from api.auth import issue_token
from api.cache import RedisUserCache, make_redis_client
from api.db import make_read_engine, make_write_engine
from api.deps import Deps
from api.freshness import ResponseCache, ViewFreshness
from api.sender import CelerySender
from deploy.embedded import free_port
from schema.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SECRET = "test-secret-" + "x" * 32


def api_settings(database_url: str, redis_url: str, **overrides: Any) -> Settings:
    env = {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "APP_ENV": "test", "JWT_SECRET": SECRET}
    return Settings.from_env(env).with_overrides(**overrides)


def build_deps(settings: Settings, *, broker_url: str | None = None, memo_ttl: float = 0.5) -> Deps:
    """Real dependencies for a test app (its own pools, so tests can close them)."""
    engine = make_read_engine(settings, pool_size=4)
    client = make_redis_client(settings.redis_url)
    return Deps(
        engine=engine,
        write_engine=make_write_engine(settings, pool_size=4),
        redis=client,
        user_cache=RedisUserCache(client, engine),
        sender=CelerySender(broker_url or settings.celery_broker_url),
        freshness=ViewFreshness(engine, ttl=memo_ttl),
        response_cache=ResponseCache(),
    )


@contextmanager
def api_client(database_url: str, redis_url: str, **kwargs: Any) -> Iterator[tuple[falcon.testing.TestClient, Deps]]:
    settings = api_settings(database_url, redis_url, **kwargs.pop("settings", {}))
    deps = build_deps(settings, **kwargs)
    try:
        yield falcon.testing.TestClient(create_app(settings, deps)), deps
    finally:
        deps.close()


def user_row(engine: sa.Engine, username: str) -> sa.Row:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT id::text AS id, role, is_admin FROM users WHERE username = :u"),
                            {"u": username}).one()


def token_for(engine: sa.Engine, username: str, *, admin: bool = False, ttl: int = 3600) -> str:
    row = user_row(engine, username)
    return issue_token(SECRET, row.id, role=row.role, admin=admin, ttl=ttl)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def refresh_all(engine: sa.Engine) -> list[sa.Row]:
    """The guide's SQL fallback: refresh every view with pending requests now."""
    with engine.begin() as conn:
        return list(conn.execute(sa.text("SELECT * FROM process_mv_refresh_queue()")))


def wait_for(condition: Any, timeout: float = 10.0, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last value: {last!r})")


@dataclass
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: Any


def http(method: str, url: str, *, headers: dict[str, str] | None = None, body: Any = None,
         timeout: float = 10.0) -> HttpAnswer:
    data = None
    headers = dict(headers or {})
    if body is not None:
        data = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            status, hdrs = resp.status, {k.lower(): v for k, v in resp.headers.items()}
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        status, hdrs = exc.code, {k.lower(): v for k, v in exc.headers.items()}
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = raw.decode(errors="replace")
    return HttpAnswer(status, hdrs, parsed)


class Gunicorn:
    """``gunicorn -c api/gunicorn_conf.py 'api:create_app()'`` on a free port, as `make up` runs it."""

    def __init__(self, database_url: str, redis_url: str, *, workers: int = 2, threads: int = 4,
                 worker_class: str = "gthread", extra_env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "JWT_SECRET": SECRET,
            "APP_ENV": "test",
            "API_HOST": "127.0.0.1",
            "API_PORT": str(self.port),
            "GUNICORN_WORKERS": str(workers),
            "GUNICORN_THREADS": str(threads),
            "GUNICORN_WORKER_CLASS": worker_class,
            "GUNICORN_CMD_ARGS": "--log-level warning",
            "PYTHONPATH": str(ROOT),
            **(extra_env or {}),
        }
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None

    def start(self, log_dir: Path) -> Gunicorn:
        self.log_path = log_dir / f"gunicorn-{self.port}.log"
        self._log = open(self.log_path, "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "gunicorn"), "-c", "api/gunicorn_conf.py", "api:create_app()"],
            cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
        )

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"gunicorn exited with {self.proc.returncode}: {self.log()}")
            try:
                return http("GET", f"{self.base}/openapi.json", timeout=1).status == 200
            except OSError:
                return False

        wait_for(ready, timeout=30, what="gunicorn to answer")
        return self

    def log(self) -> str:
        return self.log_path.read_text()[-3000:] if self.log_path and self.log_path.exists() else ""

    def url(self, path: str) -> str:
        return self.base + path

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None
