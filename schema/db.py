"""Database access: engines, one-line connection errors, named queries.

SQL lives in ``.sql`` files. Named queries (``-- name: feed_page``) are loaded
once into ``sqlalchemy.text()`` objects with bound ``:params``; identifiers
never come from input.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import psycopg2
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

QUERIES_DIR = Path(__file__).parent / "queries"
_NAME_RE = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


class DatabaseUnavailable(RuntimeError):
    """The database cannot be reached; the message says where and how to start it."""


def make_engine(
    url: str,
    *,
    pool_size: int = 5,
    application_name: str = "discovery",
    statement_timeout_ms: int | None = None,
    connect_timeout: int = 5,
    jit: bool = False,
) -> Engine:
    """An engine on psycopg2 with a bounded pool and a named application.

    ``pool_pre_ping`` lets a pool survive a Postgres restart: a dead pooled
    connection is replaced instead of failing the request that drew it.
    """
    options = []
    if not jit:
        # Our queries are short index reads or refreshes whose plans JIT only
        # slows down: compiling cost 15-40 ms per search on this hardware.
        options.append("-c jit=off")
    if statement_timeout_ms:
        options.append(f"-c statement_timeout={int(statement_timeout_ms)}")
    connect_args: dict[str, object] = {
        "application_name": application_name,
        "connect_timeout": connect_timeout,
        # TCP keepalives so a connection to a vanished server is noticed.
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
    }
    if options:
        connect_args["options"] = " ".join(options)
    return sa.create_engine(
        sqlalchemy_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args=connect_args,
    )


def sqlalchemy_url(url: str) -> str:
    """Accept ``postgres://`` and ``postgresql://`` URLs; use the psycopg2 driver."""
    u = make_url(url.replace("postgres://", "postgresql://", 1) if url.startswith("postgres://") else url)
    if u.drivername == "postgresql":
        u = u.set(drivername="postgresql+psycopg2")
    return u.render_as_string(hide_password=False)


def describe_url(url: str) -> str:
    """host:port/db of a URL, without the password, for messages."""
    u = make_url(sqlalchemy_url(url))
    return f"{u.host or 'localhost'}:{u.port or 5432}/{u.database}"


def check_connection(engine: Engine) -> None:
    """Raise DatabaseUnavailable with a one-line message if the server is unreachable."""
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        raise DatabaseUnavailable(unreachable_message(engine.url.render_as_string(), exc)) from None


def unreachable_message(url: str, exc: BaseException) -> str:
    first = str(getattr(exc, "orig", exc)).strip().splitlines()
    reason = first[0] if first else type(exc).__name__
    return (
        f"cannot connect to PostgreSQL at {describe_url(url)}: {reason} "
        "(is it running? `make up` starts a private one when DATABASE_URL is unset)"
    )


@contextmanager
def raw_connection(url: str, *, autocommit: bool = False) -> Iterator[psycopg2.extensions.connection]:
    """A plain psycopg2 connection (migrations, bulk loads, NOTICE capture)."""
    u = make_url(sqlalchemy_url(url))
    try:
        conn = psycopg2.connect(
            host=u.host,
            port=u.port or 5432,
            user=u.username,
            password=u.password,
            dbname=u.database,
            connect_timeout=5,
            application_name="discovery-admin",
            **{k: v for k, v in u.query.items() if isinstance(v, str)},
        )
    except psycopg2.OperationalError as exc:
        raise DatabaseUnavailable(unreachable_message(url, exc)) from None
    conn.autocommit = autocommit
    try:
        yield conn
    finally:
        conn.close()


def load_queries(path: Path) -> dict[str, sa.TextClause]:
    """Split a ``.sql`` file on ``-- name: x`` markers into text() clauses."""
    text = path.read_text()
    parts = _NAME_RE.split(text)
    queries: dict[str, sa.TextClause] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        # Whole-line comments are documentation; dropping them keeps a `:word`
        # inside a comment from being read as a bind parameter by text().
        code = "\n".join(line for line in body.splitlines() if not line.lstrip().startswith("--"))
        sql = code.strip().rstrip(";").strip()
        if name in queries:
            raise ValueError(f"{path.name}: query {name!r} defined twice")
        queries[name] = sa.text(sql)  # sql-safe: the text of a schema/queries/*.sql file
    return queries


@cache
def queries(module: str) -> dict[str, sa.TextClause]:
    """Named queries of ``schema/queries/<module>.sql``, loaded once per process."""
    return load_queries(QUERIES_DIR / f"{module}.sql")
