"""The one settings object, read once from the environment.

Everything that needs configuration receives a ``Settings``; nothing else reads
``os.environ``. Tests build one from a plain dict.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

DEFAULT_JWT_SECRET = "dev-insecure-change-me-not-for-production"  # refused in production, see validate()


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name}={raw!r} is not a boolean (use true or false)")


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise SettingsError(f"{name}={value} must be >= {minimum}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if value <= 0:
        raise SettingsError(f"{name}={value} must be > 0")
    return value


@dataclass(frozen=True)
class Settings:
    """Typed configuration. Field docs name the environment variable."""

    database_url: str  # DATABASE_URL
    redis_url: str  # REDIS_URL (user cache, locks)
    celery_broker_url: str  # CELERY_BROKER_URL, default REDIS_URL
    celery_result_backend: str  # CELERY_RESULT_BACKEND, default REDIS_URL
    jwt_secret: str = DEFAULT_JWT_SECRET  # JWT_SECRET
    app_env: str = "development"  # APP_ENV: development | production | test
    api_host: str = "127.0.0.1"  # API_HOST
    api_port: int = 8000  # API_PORT
    flower_port: int = 5555  # FLOWER_PORT
    flower_host: str = "127.0.0.1"  # FLOWER_HOST
    flower_basic_auth: str = ""  # FLOWER_BASIC_AUTH user:password
    mv_refresh_worker_enabled: bool = True  # MV_REFRESH_WORKER_ENABLED
    reconciliation_job_enabled: bool = True  # RECONCILIATION_JOB_ENABLED
    gunicorn_workers: int = 2  # GUNICORN_WORKERS
    gunicorn_threads: int = 4  # GUNICORN_THREADS
    gunicorn_timeout: int = 30  # GUNICORN_TIMEOUT (seconds)
    gunicorn_worker_class: str = "gthread"  # GUNICORN_WORKER_CLASS: gthread | sync (api/gunicorn_conf.py)
    db_pool_size: int = 8  # DB_POOL_SIZE (per API process)
    db_statement_timeout_ms: int = 5000  # DB_STATEMENT_TIMEOUT_MS for API reads
    refresh_lock_ttl: float = 60.0  # REFRESH_LOCK_TTL seconds, renewed while a refresh runs
    sweep_interval: float = 2.0  # SWEEP_INTERVAL seconds between Beat sweeps
    refresh_time_limit: int = 600  # REFRESH_TIME_LIMIT seconds (hard limit per refresh task)
    refresh_retry_backoff: float = 2.0  # REFRESH_RETRY_BACKOFF seconds, first retry delay of a failed refresh
    refresh_max_retries: int = 5  # REFRESH_MAX_RETRIES of a failed refresh before the sweep takes over again
    health_timeout: float = 1.5  # HEALTH_TIMEOUT seconds per dependency check
    stale_after_seconds: int = 60  # STALE_AFTER_SECONDS: pending longer than this is stale
    max_body_bytes: int = 64 * 1024  # MAX_BODY_BYTES for JSON request bodies
    # PROMETHEUS_MULTIPROC_DIR: where gunicorn's workers keep their metric files so
    # /metrics sums them; empty: api/gunicorn_conf.py makes a fresh one per start.
    prometheus_multiproc_dir: str = ""
    extra: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read every setting from ``env`` (default: the process environment)."""
        env = os.environ if env is None else env
        database_url = env.get("DATABASE_URL", "").strip()
        if not database_url:
            raise SettingsError(
                "DATABASE_URL is not set (run `make up`, which starts a private Postgres "
                "and writes .run/stack.env, then `source .run/stack.env`)"
            )
        redis_url = env.get("REDIS_URL", "").strip() or "redis://127.0.0.1:6379/0"
        settings = cls(
            database_url=database_url,
            redis_url=redis_url,
            celery_broker_url=env.get("CELERY_BROKER_URL", "").strip() or redis_url,
            celery_result_backend=env.get("CELERY_RESULT_BACKEND", "").strip() or redis_url,
            jwt_secret=env.get("JWT_SECRET", "") or DEFAULT_JWT_SECRET,
            app_env=(env.get("APP_ENV", "") or "development").strip().lower(),
            api_host=env.get("API_HOST", "") or "127.0.0.1",
            api_port=_int(env, "API_PORT", 8000, 1),
            flower_port=_int(env, "FLOWER_PORT", 5555, 1),
            flower_host=env.get("FLOWER_HOST", "") or "127.0.0.1",
            flower_basic_auth=env.get("FLOWER_BASIC_AUTH", ""),
            mv_refresh_worker_enabled=_bool(env, "MV_REFRESH_WORKER_ENABLED", True),
            reconciliation_job_enabled=_bool(env, "RECONCILIATION_JOB_ENABLED", True),
            gunicorn_workers=_int(env, "GUNICORN_WORKERS", 2, 1),
            gunicorn_threads=_int(env, "GUNICORN_THREADS", 4, 1),
            gunicorn_timeout=_int(env, "GUNICORN_TIMEOUT", 30, 1),
            gunicorn_worker_class=(env.get("GUNICORN_WORKER_CLASS", "") or "gthread").strip().lower(),
            db_pool_size=_int(env, "DB_POOL_SIZE", 8, 1),
            db_statement_timeout_ms=_int(env, "DB_STATEMENT_TIMEOUT_MS", 5000, 0),
            refresh_lock_ttl=_float(env, "REFRESH_LOCK_TTL", 60.0),
            sweep_interval=_float(env, "SWEEP_INTERVAL", 2.0),
            refresh_time_limit=_int(env, "REFRESH_TIME_LIMIT", 600, 1),
            refresh_retry_backoff=_float(env, "REFRESH_RETRY_BACKOFF", 2.0),
            refresh_max_retries=_int(env, "REFRESH_MAX_RETRIES", 5, 0),
            health_timeout=_float(env, "HEALTH_TIMEOUT", 1.5),
            stale_after_seconds=_int(env, "STALE_AFTER_SECONDS", 60, 1),
            max_body_bytes=_int(env, "MAX_BODY_BYTES", 64 * 1024, 1),
            prometheus_multiproc_dir=env.get("PROMETHEUS_MULTIPROC_DIR", "").strip(),
            extra={k: v for k, v in env.items() if k.startswith("DISCOVERY_")},
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.gunicorn_worker_class not in {"gthread", "sync"}:
            raise SettingsError(f"GUNICORN_WORKER_CLASS={self.gunicorn_worker_class!r} must be gthread or sync")
        if self.app_env not in {"development", "production", "test"}:
            raise SettingsError(f"APP_ENV={self.app_env!r} must be development, production or test")
        if self.app_env == "production" and self.jwt_secret == DEFAULT_JWT_SECRET:
            raise SettingsError("JWT_SECRET must be set to a real secret when APP_ENV=production")
        if self.app_env == "production" and len(self.jwt_secret) < 32:
            raise SettingsError("JWT_SECRET must be at least 32 characters when APP_ENV=production")

    def with_overrides(self, **changes: object) -> Settings:
        """A copy with some fields changed (tests, benchmarks)."""
        return replace(self, **changes)
