"""The stack's database: created in the private cluster, with pg_stat_statements.

Queries in deploy/database.sql. Not a migration: pg_stat_statements needs the
server started with the library preloaded and a superuser to create it, which
a migration cannot assume (migrations run with psql on any server).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from deploy.embedded import EmbeddedPostgres
from schema.db import check_connection, load_queries, make_engine

EMBEDDED_DB = "discovery"  # also in database.sql's create_database
QUERIES = load_queries(Path(__file__).with_name("database.sql"))
SUPERUSER_HINT = "a superuser can run: CREATE EXTENSION pg_stat_statements;"


def create_embedded_database(pg: EmbeddedPostgres) -> str:
    """The stack's database in the private cluster (created once); returns its URL."""
    engine = make_engine(pg.admin_url(), pool_size=1).execution_options(isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            if conn.execute(QUERIES["database_exists"], {"name": EMBEDDED_DB}).first() is None:
                conn.execute(QUERIES["create_database"])
    finally:
        engine.dispose()
    return pg.admin_url(EMBEDDED_DB)


def enable_pg_stat_statements(database_url: str, out: Callable[[str], None] = print) -> bool:
    """CREATE EXTENSION pg_stat_statements in this database when the server loads the library.

    Never fails the stack: without the library (a server you run, started
    without it) or the right to create it, it says what to do and returns False.
    """
    engine = make_engine(database_url, pool_size=1).execution_options(isolation_level="AUTOCOMMIT")
    try:
        check_connection(engine)
        with engine.connect() as conn:
            libraries = conn.execute(QUERIES["preload_libraries"]).scalar_one()
            if "pg_stat_statements" not in [lib.strip() for lib in libraries.split(",")]:
                out("pg_stat_statements: not loaded by this server, so the guide's slow-query check is unavailable "
                    "(add shared_preload_libraries = 'pg_stat_statements' to postgresql.conf and restart Postgres)")
                return False
            if conn.execute(QUERIES["pg_stat_statements_available"]).first() is None:
                out("pg_stat_statements: loaded but not installed as an extension (install postgresql-contrib)")
                return False
            try:
                conn.execute(QUERIES["create_pg_stat_statements"])
            except sa.exc.ProgrammingError as exc:
                reason = str(exc.orig).strip().splitlines()[0]
                out(f"pg_stat_statements: not created ({reason}); {SUPERUSER_HINT}")
                return False
    finally:
        engine.dispose()
    out("pg_stat_statements: enabled")
    return True
