"""Shared fixtures: real Postgres and Redis, fresh per test session.

By default the session starts a private Postgres cluster and a private
redis-server in a temporary directory (the embedded default) and removes them
afterwards. ``TEST_DATABASE_URL`` (an admin URL: the session creates and drops
its own databases there) and ``TEST_REDIS_URL`` (a database index the session
may flush) point the suite at servers you run instead.

Databases are copied from migrated templates (``CREATE DATABASE ... TEMPLATE``),
so a test module that needs its own database gets one in a fraction of a second.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg2
import pytest
import redis as redis_lib
import sqlalchemy as sa

from deploy.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from schema.db import make_engine, raw_connection
from schema.migrate import migrate
from schema.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"


def _admin_exec(admin_url: str, sql: str) -> None:
    with raw_connection(admin_url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(sql)


def _db_url(admin_url: str, name: str) -> str:
    return str(sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False))


@pytest.fixture(scope="session")
def work_dir() -> Iterator[Path]:
    """A private temporary directory for this session's servers."""
    path = Path(tempfile.mkdtemp(prefix="discovery-test-"))
    path.chmod(0o755)  # the postgres user must reach its data directory below
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server(work_dir: Path) -> Iterator[EmbeddedPostgres | None]:
    """The session's private Postgres cluster (None when TEST_DATABASE_URL is given)."""
    if os.environ.get("TEST_DATABASE_URL"):
        yield None
        return
    server = EmbeddedPostgres(
        work_dir / "pg",
        free_port(),
        settings={"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off", "shared_buffers": "128MB"},
    )
    server.start()
    yield server
    server.destroy()


@pytest.fixture(scope="session")
def admin_url(pg_server: EmbeddedPostgres | None) -> str:
    """A URL with rights to create databases (the cluster's own, or TEST_DATABASE_URL)."""
    return os.environ.get("TEST_DATABASE_URL") or pg_server.admin_url()  # type: ignore[union-attr]


@pytest.fixture(scope="session")
def create_database(admin_url: str) -> Iterator[Callable[..., str]]:
    """Factory: a new database (optionally copied from a template); all dropped at session end."""
    created: list[str] = []

    def create(template: str | None = None, prefix: str = "test") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        # Identifiers are generated here, never taken from input.
        suffix = f' TEMPLATE "{template}"' if template else ""
        _admin_exec(admin_url, f'CREATE DATABASE "{name}"{suffix}')
        created.append(name)
        return _db_url(admin_url, name)

    yield create
    for name in reversed(created):
        try:
            _admin_exec(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except psycopg2.Error:
            pass


@pytest.fixture(scope="session")
def migrated_template(create_database: Callable[..., str]) -> str:
    """Name of a migrated, empty database used as a template."""
    url = create_database(prefix="tmpl")
    migrate(url, out=lambda line: None)
    return sa.engine.make_url(url).database


@pytest.fixture(scope="session")
def demo_template(create_database: Callable[..., str], migrated_template: str) -> str:
    """Name of a migrated database seeded with demo data, used as a template."""
    from schema.seed import seed

    url = create_database(template=migrated_template, prefix="tmpldemo")
    seed(url, "demo", seed=42, out=lambda line: None)
    return sa.engine.make_url(url).database


@pytest.fixture(scope="session")
def database_url(create_database: Callable[..., str], migrated_template: str) -> str:
    """The session's fresh migrated (empty) database."""
    return create_database(template=migrated_template)


@pytest.fixture(scope="module")
def demo_database_url(create_database: Callable[..., str], demo_template: str, redis_url: str) -> str:
    """A fresh copy of the demo database for one test module.

    The session's Redis database is flushed too: every copy has the same user
    ids, so a user's upvote set cached for the previous module's copy would
    otherwise be read as this copy's (a cache must never outlive its truth)."""
    client = redis_lib.Redis.from_url(redis_url)
    try:
        client.flushdb()
    finally:
        client.close()
    return create_database(template=demo_template)


@pytest.fixture(scope="module")
def empty_database_url(create_database: Callable[..., str], migrated_template: str) -> str:
    """A fresh migrated, empty database for one test module."""
    return create_database(template=migrated_template)


@pytest.fixture(scope="session")
def redis_server(work_dir: Path) -> Iterator[EmbeddedRedis | None]:
    if os.environ.get("TEST_REDIS_URL"):
        yield None
        return
    server = EmbeddedRedis(work_dir / "redis", free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: EmbeddedRedis | None) -> Iterator[str]:
    """A Redis database index this session owns; flushed at the end."""
    url = os.environ.get("TEST_REDIS_URL") or redis_server.url(0)  # type: ignore[union-attr]
    yield url
    client = redis_lib.Redis.from_url(url)
    try:
        client.flushdb()
    except redis_lib.RedisError:
        pass
    finally:
        client.close()


@pytest.fixture()
def redis_client(redis_url: str) -> Iterator[redis_lib.Redis]:
    client = redis_lib.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def make_settings(database_url: str, redis_url: str, **overrides: object) -> Settings:
    env = {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "APP_ENV": "test", "JWT_SECRET": "test-secret-" + "x" * 32}
    return Settings.from_env(env).with_overrides(**overrides)


@pytest.fixture(scope="module")
def demo_engine(demo_database_url: str) -> Iterator[sa.engine.Engine]:
    engine = make_engine(demo_database_url, pool_size=10)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def empty_engine(empty_database_url: str) -> Iterator[sa.engine.Engine]:
    engine = make_engine(empty_database_url, pool_size=10)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The fault suite's table (tests/test_faults.py), when it ran: at the end of the
    output whether or not pytest captured the tests' own prints."""
    helpers = sys.modules.get("fault_helpers")
    if helpers is None or not helpers.RESULTS:
        return
    table = helpers.fault_table(helpers.RESULTS)
    terminalreporter.section(f"fault suite ({helpers.SIZE} size)")
    for line in table.splitlines():
        terminalreporter.write_line(line)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"faults-{helpers.SIZE}.txt").write_text(table + "\n")
