"""Database access of the API: a fast read path and a transactional write path.

Reads are single statements on materialized views and trigger-kept tables, so
they run on an AUTOCOMMIT pool without a pre-ping: one round trip per query
(a transactional connection costs BEGIN + query + ROLLBACK, and a pre-ping one
more; measured about 4x the round trips of this path). The named query is
compiled once to psycopg2's own parameter style and run on the raw DBAPI
cursor, skipping SQLAlchemy's per-execution work; values come back JSON-ready
(timestamps as ISO 8601 strings). A connection that died under us (Postgres
restarted) is discarded and the read retried once on a fresh one: reads are
idempotent, so the client never sees the restart.

Writes use a separate, ordinary SQLAlchemy pool (pre-ping on) inside an
explicit transaction.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

import psycopg2
import sqlalchemy as sa
from psycopg2 import sql as pgsql
from sqlalchemy.dialects.postgresql import psycopg2 as pg_dialect
from sqlalchemy.engine import Connection, Engine

from schema.db import make_engine, sqlalchemy_url
from schema.settings import Settings

_DIALECT = pg_dialect.dialect()
_DOLLAR_DIALECT = pg_dialect.dialect(paramstyle="numeric_dollar")
# Errors after which a prepared statement is re-prepared once: it vanished
# (DISCARD ALL by a pooler, a reset session) or a migration changed the result
# type of a view it reads ("cached plan must not change result type").
_REPREPARE = (psycopg2.errors.InvalidSqlStatementName, psycopg2.errors.FeatureNotSupported)


def make_read_engine(settings: Settings, *, pool_size: int | None = None) -> Engine:
    options = f"-c statement_timeout={int(settings.db_statement_timeout_ms)}" if settings.db_statement_timeout_ms else ""
    connect_args: dict[str, Any] = {
        "application_name": "discovery-api",
        "connect_timeout": 3,
        "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
    }
    if options:
        connect_args["options"] = options
    size = pool_size or settings.db_pool_size
    return sa.create_engine(
        sqlalchemy_url(settings.database_url),
        isolation_level="AUTOCOMMIT",
        pool_size=size,
        max_overflow=size,
        pool_pre_ping=False,  # see the module docstring: a dead connection is retried instead
        pool_recycle=1800,
        connect_args=connect_args,
    )


def make_write_engine(settings: Settings, *, pool_size: int = 4) -> Engine:
    return make_engine(
        settings.database_url,
        pool_size=pool_size,
        application_name="discovery-api-writes",
        statement_timeout_ms=settings.db_statement_timeout_ms,
        connect_timeout=3,
    )


@cache
def compiled(clause: sa.TextClause) -> str:
    """A named query in psycopg2's ``%(name)s`` style (literal % escaped)."""
    return str(clause.compile(dialect=_DIALECT))


class Prepared:
    """A named query as a server-side prepared statement.

    Postgres plans ``EXECUTE`` from its plan cache: for the point reads here a
    generic plan after five executions, i.e. no planning per request. Measured
    on the demo data: the dashboard read 1.25 -> 0.33 ms, a search 5.6 -> 1.9 ms
    (planning dominated both). Only for queries whose parameters are scalars
    (an array literal would arrive as text[] and not coerce to uuid[]) and
    whose plan does not hinge on a NULL test of a parameter (keyset "first
    page or after" queries stay unprepared and get a custom plan each time).
    """

    _counter = 0

    def __init__(self, clause: sa.TextClause) -> None:
        Prepared._counter += 1
        self.name = f"api_q{Prepared._counter}"
        compiled_sql = clause.compile(dialect=_DOLLAR_DIALECT)
        self.params = list(compiled_sql.positiontup or [])
        # Composed with psycopg2.sql: the name is an Identifier we generated, the
        # body is the named query's own text, values stay bound placeholders.
        ident = pgsql.Identifier(self.name)
        # sql-safe: the body is a named query of schema/queries/api_*.sql, compiled
        self.prepare_sql = pgsql.SQL("PREPARE {} AS {}").format(ident, pgsql.SQL(str(compiled_sql)))
        args = pgsql.SQL(", ").join(pgsql.Placeholder(p) for p in self.params)
        self.execute_sql = (pgsql.SQL("EXECUTE {} ({})").format(ident, args) if self.params
                            else pgsql.SQL("EXECUTE {}").format(ident))
        self.deallocate_sql = pgsql.SQL("DEALLOCATE {}").format(ident)


@cache
def prepared(clause: sa.TextClause) -> Prepared:
    return Prepared(clause)


def _jsonable(value: Any) -> Any:
    # Done once per fetched row, so serializing a cached page (possibly many
    # times) never calls back into Python for a value.
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, decimal.Decimal):
        return float(value)
    return value


class Reader:
    """One lazily checked-out read connection (per request, or standalone)."""

    __slots__ = ("_engine", "_raw")

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._raw: Any = None

    @property
    def used(self) -> bool:
        return self._raw is not None

    def _cursor_run(self, clause: sa.TextClause, params: dict[str, Any],
                    use_prepared: bool) -> tuple[list[str], list[tuple]]:
        for attempt in (1, 2):
            if self._raw is None:
                self._raw = self._engine.raw_connection()
            try:
                with self._raw.cursor() as cur:
                    if use_prepared:
                        self._execute_prepared(cur, clause, params)
                    else:
                        cur.execute(compiled(clause), params)
                    names = [d[0] for d in cur.description] if cur.description else []
                    return names, (cur.fetchall() if cur.description else [])
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                dead = self._raw.dbapi_connection is None or self._raw.dbapi_connection.closed
                if dead and attempt == 1:
                    self._raw.invalidate()
                    self._raw = None
                    continue
                raise
        raise AssertionError("unreachable")

    def _execute_prepared(self, cur: Any, clause: sa.TextClause, params: dict[str, Any]) -> None:
        stmt = prepared(clause)
        # Per DBAPI connection (the pool record's info dict outlives checkouts).
        done: set[str] = self._raw.info.setdefault("api_prepared", set())
        if stmt.name not in done:
            cur.execute(stmt.prepare_sql)
            done.add(stmt.name)
        args = {p: params[p] for p in stmt.params}
        try:
            cur.execute(stmt.execute_sql, args)
        except _REPREPARE:
            try:
                cur.execute(stmt.deallocate_sql)
            except psycopg2.errors.InvalidSqlStatementName:
                pass
            cur.execute(stmt.prepare_sql)
            cur.execute(stmt.execute_sql, args)

    def tuples(self, clause: sa.TextClause, params: dict[str, Any] | None = None, *,
               prepared: bool = False) -> list[tuple]:
        return self._cursor_run(clause, params or {}, prepared)[1]

    def rows(self, clause: sa.TextClause, params: dict[str, Any] | None = None, *,
             prepared: bool = False) -> list[dict[str, Any]]:
        """Rows as dicts of JSON-ready values. ``prepared``: run as a server-side
        prepared statement (see ``Prepared`` for when that is right)."""
        names, data = self._cursor_run(clause, params or {}, prepared)
        return [{n: _jsonable(v) for n, v in zip(names, row, strict=True)} for row in data]

    def scalar(self, clause: sa.TextClause, params: dict[str, Any] | None = None, *,
               prepared: bool = False) -> Any:
        data = self.tuples(clause, params, prepared=prepared)
        return data[0][0] if data else None

    def close(self) -> None:
        if self._raw is not None:
            try:
                self._raw.close()  # back to the pool (autocommit: nothing to roll back)
            finally:
                self._raw = None


class RequestDb:
    """``req.context.db``: the read connection and, on demand, a write transaction."""

    __slots__ = ("_write_engine", "reader")

    def __init__(self, read_engine: Engine, write_engine: Engine) -> None:
        self.reader = Reader(read_engine)
        self._write_engine = write_engine

    def rows(self, clause: sa.TextClause, params: dict[str, Any] | None = None, *,
             prepared: bool = False) -> list[dict[str, Any]]:
        return self.reader.rows(clause, params, prepared=prepared)

    def tuples(self, clause: sa.TextClause, params: dict[str, Any] | None = None, *,
               prepared: bool = False) -> list[tuple]:
        return self.reader.tuples(clause, params, prepared=prepared)

    def scalar(self, clause: sa.TextClause, params: dict[str, Any] | None = None, *,
               prepared: bool = False) -> Any:
        return self.reader.scalar(clause, params, prepared=prepared)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction: committed on success, rolled back on any error."""
        with self._write_engine.begin() as conn:
            yield conn

    def close(self) -> None:
        self.reader.close()
