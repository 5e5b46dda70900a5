"""The API's read path (api/db.py) against a real Postgres.

Claims: reads run in autocommit (no transaction left open); prepared reads are
prepared once per connection and survive a changed result type and a vanished
statement; a read on a connection whose backend died is retried once on a
fresh connection, invisibly to the caller; values come back JSON-ready.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg2
import pytest
import sqlalchemy as sa
from api_helpers import api_settings

from api.db import Reader, make_read_engine, prepared

SELECT_T = sa.text("SELECT * FROM api_db_probe WHERE id = CAST(:id AS integer)")
BACKEND_PID = sa.text("SELECT pg_backend_pid()")
TXN_STATE = sa.text("SELECT now() = statement_timestamp()")


@pytest.fixture(scope="module")
def engine(empty_database_url: str, redis_url: str) -> Iterator[sa.Engine]:
    eng = make_read_engine(api_settings(empty_database_url, redis_url), pool_size=2)
    with sa.create_engine(empty_database_url.replace("postgresql://", "postgresql+psycopg2://")).begin() as conn:
        conn.execute(sa.text("DROP VIEW IF EXISTS api_db_probe"))
        conn.execute(sa.text(
            "CREATE VIEW api_db_probe AS SELECT g AS id, now() AS at, gen_random_uuid() AS u, 1.5::numeric AS n "
            "FROM generate_series(1, 3) g"))
    yield eng
    eng.dispose()


def admin_exec(url: str, sql: str) -> None:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(sql)
    conn.close()


def test_values_are_json_ready(engine):
    reader = Reader(engine)
    row = reader.rows(SELECT_T, {"id": 2})[0]
    assert row["id"] == 2
    assert isinstance(row["at"], str) and "T" in row["at"]   # ISO 8601
    assert isinstance(row["u"], str) and len(row["u"]) == 36  # uuid as text
    assert row["n"] == 1.5
    reader.close()


def test_reads_are_autocommit(engine):
    reader = Reader(engine)
    # In a transaction, now() stays at the transaction start; in autocommit each
    # statement is its own transaction, so now() equals the statement's timestamp.
    assert reader.scalar(TXN_STATE) is True
    assert reader.scalar(TXN_STATE) is True
    reader.close()


def test_prepared_once_per_connection_and_reused(engine):
    reader = Reader(engine)
    assert reader.rows(SELECT_T, {"id": 1}, prepared=True)[0]["id"] == 1
    assert reader.rows(SELECT_T, {"id": 3}, prepared=True)[0]["id"] == 3
    stmt = prepared(SELECT_T)
    names = [r[0] for r in reader.tuples(sa.text("SELECT name FROM pg_prepared_statements"))]
    assert names.count(stmt.name) == 1
    reader.close()


def test_prepared_survives_a_changed_result_type_and_deallocate(engine, empty_database_url):
    reader = Reader(engine)
    assert reader.rows(SELECT_T, {"id": 1}, prepared=True)[0]["id"] == 1
    # A migration adds a column to the view: "cached plan must not change result type".
    admin_exec(empty_database_url, "CREATE OR REPLACE VIEW api_db_probe AS SELECT g AS id, now() AS at, "
                                   "gen_random_uuid() AS u, 1.5::numeric AS n, 'x'::text AS extra "
                                   "FROM generate_series(1, 3) g")
    row = reader.rows(SELECT_T, {"id": 1}, prepared=True)[0]
    assert row["extra"] == "x"
    reader.tuples(sa.text("DEALLOCATE ALL"))
    assert reader.rows(SELECT_T, {"id": 2}, prepared=True)[0]["id"] == 2
    reader.close()


def test_read_on_a_dead_connection_is_retried_on_a_fresh_one(engine, empty_database_url):
    reader = Reader(engine)
    pid = reader.scalar(BACKEND_PID)
    reader.close()  # back to the pool, still connected to backend `pid`
    admin_exec(empty_database_url, f"SELECT pg_terminate_backend({int(pid)})")
    again = Reader(engine)
    new_pid = again.scalar(BACKEND_PID)  # the pooled connection is dead: retried
    assert new_pid != pid
    assert again.rows(SELECT_T, {"id": 3}, prepared=True)[0]["id"] == 3
    again.close()


def test_sql_errors_are_not_retried(engine):
    reader = Reader(engine)
    with pytest.raises(psycopg2.errors.UndefinedTable):
        reader.tuples(sa.text("SELECT * FROM no_such_table_here"))
    assert reader.scalar(sa.text("SELECT 1")) == 1  # autocommit: the connection is still usable
    reader.close()
