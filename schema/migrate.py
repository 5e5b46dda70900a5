"""The migration runner: ``python -m schema migrate``.

Applies ``schema/migrations/*.sql`` in name order and records each applied file
(name, sha256 checksum) in ``schema_migrations``. A file already applied with
the same checksum is skipped, so a second run is a no-op; an applied file whose
checksum changed is refused (edit history by adding a new file instead).

Two kinds of file, both plain SQL that ``psql -v ON_ERROR_STOP=1 -f`` runs:

* transactional (the default): starts with ``BEGIN;`` and ends with
  ``COMMIT;``. The runner strips those two and runs the body in its own
  transaction together with the bookkeeping row, so a file is applied wholly
  or not at all.
* ``-- migrate: no-transaction`` on line 1 (phase 4's ``CREATE INDEX
  CONCURRENTLY``, which cannot run in a transaction block): statements run one
  by one in autocommit. A failing statement is reported and the rest still
  run; the file is recorded only when every statement succeeded, so the next
  run retries. An INVALID index left behind by an earlier failed
  ``CONCURRENTLY`` build is dropped and rebuilt (``IF NOT EXISTS`` alone would
  keep the broken index forever).

Server NOTICEs (the backfill's ``Backfilled N rows in <table>``) are printed
as they arrive.
"""

from __future__ import annotations

import hashlib
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg2
from psycopg2 import sql as pgsql

from schema.db import raw_connection

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
NO_TRANSACTION_MARK = "-- migrate: no-transaction"
# Any constant works; it only has to be the same for every migrate process.
MIGRATE_LOCK_KEY = 7_402_113_001

_BEGIN_RE = re.compile(r"\A((?:\s*--[^\n]*\n|\s+)*)BEGIN\s*;", re.IGNORECASE)
_COMMIT_RE = re.compile(r"COMMIT\s*;\s*\Z", re.IGNORECASE)
_CIC_RE = re.compile(
    r"CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)",
    re.IGNORECASE,
)

BOOKKEEPING_SQL = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    name        text PRIMARY KEY,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    duration_ms integer NOT NULL
)
"""


class MigrationError(RuntimeError):
    """A migration could not be applied; the message says which and why."""


@dataclass(frozen=True)
class Migration:
    name: str
    path: Path
    sql: str
    checksum: str

    @property
    def transactional(self) -> bool:
        return not self.sql.lstrip().startswith(NO_TRANSACTION_MARK)

    @classmethod
    def load(cls, path: Path) -> Migration:
        sql = path.read_text()
        return cls(path.name, path, sql, hashlib.sha256(sql.encode()).hexdigest())


@dataclass
class MigrateResult:
    applied: list[str]
    skipped: list[str]
    failed_statements: list[str]

    @property
    def ok(self) -> bool:
        return not self.failed_statements


class _PrintingNotices(list):
    """psycopg2 appends each server NOTICE to ``conn.notices``; print it at once."""

    def __init__(self, out: Callable[[str], None]) -> None:
        super().__init__()
        self._out = out

    def append(self, message: str) -> None:  # type: ignore[override]
        self._out(message.rstrip("\n"))


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    return [Migration.load(p) for p in sorted(directory.glob("*.sql"))]


def transaction_body(migration: Migration) -> str:
    """The file without its own BEGIN;/COMMIT; (the runner supplies the transaction)."""
    sql = migration.sql
    begin = _BEGIN_RE.match(sql)
    commit = _COMMIT_RE.search(sql)
    if not begin or not commit:
        raise MigrationError(
            f"{migration.name}: a transactional migration must start with BEGIN; and end with COMMIT; "
            f"(or put `{NO_TRANSACTION_MARK}` on line 1)"
        )
    return sql[begin.end() : commit.start()]


def split_statements(sql: str) -> list[str]:
    """Split a no-transaction file into statements.

    Such files hold simple statements only (no dollar-quoted bodies), so a
    semicolon at the end of a line ends a statement. Comment-only chunks are
    dropped.
    """
    statements = []
    for chunk in re.split(r";[ \t]*(?:--[^\n]*)?\n", sql + "\n"):
        code = "\n".join(line for line in chunk.splitlines() if not line.strip().startswith("--")).strip()
        if code:
            statements.append(code.rstrip(";"))
    return statements


def migrate(
    database_url: str,
    *,
    directory: Path = MIGRATIONS_DIR,
    out: Callable[[str], None] = print,
) -> MigrateResult:
    """Apply every pending migration. Raises MigrationError on a hard failure."""
    migrations = discover(directory)
    result = MigrateResult([], [], [])
    with raw_connection(database_url, autocommit=True) as conn:
        conn.notices = _PrintingNotices(out)
        with conn.cursor() as cur:
            # One migrate at a time per database; a second waits instead of racing.
            cur.execute("SELECT pg_advisory_lock(%s)", (MIGRATE_LOCK_KEY,))
            try:
                cur.execute(BOOKKEEPING_SQL)
                cur.execute("SELECT name, checksum FROM schema_migrations")
                applied = dict(cur.fetchall())
                for migration in migrations:
                    known = applied.get(migration.name)
                    if known == migration.checksum:
                        result.skipped.append(migration.name)
                        continue
                    if known is not None:
                        raise MigrationError(
                            f"{migration.name} was applied with checksum {known[:12]} but the file now has "
                            f"{migration.checksum[:12]}; refusing to run a changed migration (add a new file instead)"
                        )
                    started = time.monotonic()
                    if migration.transactional:
                        _apply_transactional(conn, migration)
                        failures: list[str] = []
                    else:
                        failures = _apply_statements(conn, migration, out)
                    elapsed_ms = int((time.monotonic() - started) * 1000)
                    if failures:
                        result.failed_statements.extend(failures)
                        out(f"{migration.name}: {len(failures)} statement(s) failed; not recorded, rerun to retry")
                        continue
                    if not migration.transactional:
                        _record(cur, migration, elapsed_ms)
                    result.applied.append(migration.name)
                    out(f"applied {migration.name} ({elapsed_ms} ms)")
            finally:
                cur.execute("SELECT pg_advisory_unlock(%s)", (MIGRATE_LOCK_KEY,))
    return result


def _record(cur: psycopg2.extensions.cursor, migration: Migration, elapsed_ms: int) -> None:
    cur.execute(
        "INSERT INTO schema_migrations (name, checksum, duration_ms) VALUES (%s, %s, %s)",
        (migration.name, migration.checksum, elapsed_ms),
    )


def _apply_transactional(conn: psycopg2.extensions.connection, migration: Migration) -> None:
    body = transaction_body(migration)
    started = time.monotonic()
    with conn.cursor() as cur:
        try:
            cur.execute("BEGIN")
            cur.execute(body)
            _record(cur, migration, int((time.monotonic() - started) * 1000))
            cur.execute("COMMIT")
        except psycopg2.Error as exc:
            cur.execute("ROLLBACK")
            raise MigrationError(f"{migration.name} failed and was rolled back: {_one_line(exc)}") from None


def _apply_statements(
    conn: psycopg2.extensions.connection, migration: Migration, out: Callable[[str], None]
) -> list[str]:
    failures = []
    with conn.cursor() as cur:
        for statement in split_statements(migration.sql):
            index = _CIC_RE.search(statement)
            try:
                if index and _index_is_invalid(cur, index.group(1)):
                    out(f"{migration.name}: index {index.group(1)} is INVALID (an earlier build failed); rebuilding")
                    # The name comes from our own migration file, never from input; quoted anyway.
                    cur.execute(pgsql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(pgsql.Identifier(index.group(1))))
                cur.execute(statement)
            except psycopg2.Error as exc:
                label = index.group(1) if index else statement.splitlines()[0][:80]
                failures.append(f"{migration.name}: {label}: {_one_line(exc)}")
                out(f"FAILED {label}: {_one_line(exc)} (continuing with the remaining statements)")
    return failures


def _index_is_invalid(cur: psycopg2.extensions.cursor, name: str) -> bool:
    cur.execute(
        "SELECT NOT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE c.relname = %s AND c.relnamespace = 'public'::regnamespace",
        (name,),
    )
    row = cur.fetchone()
    return bool(row and row[0])


def invalid_indexes(database_url: str) -> list[str]:
    """Names of INVALID indexes in the public schema (should always be empty)."""
    with raw_connection(database_url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE NOT i.indisvalid AND c.relnamespace = 'public'::regnamespace ORDER BY 1"
        )
        return [r[0] for r in cur.fetchall()]


def status(database_url: str) -> list[tuple[str, str]]:
    """(name, state) per migration file: applied, pending or changed."""
    with raw_connection(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
        applied: dict[str, str] = {}
        if cur.fetchone()[0]:
            cur.execute("SELECT name, checksum FROM schema_migrations")
            applied = dict(cur.fetchall())
    rows = []
    for m in discover():
        known = applied.get(m.name)
        rows.append((m.name, "pending" if known is None else "applied" if known == m.checksum else "CHANGED"))
    return rows


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def main(database_url: str, *, show_status: bool = False) -> int:
    if show_status:
        for name, state in status(database_url):
            print(f"{state:8} {name}")
        return 0
    result = migrate(database_url)
    if not result.applied:
        print(f"nothing to apply ({len(result.skipped)} migrations already applied)")
    if not result.ok:
        print(f"migrate: {len(result.failed_statements)} statement(s) failed", file=sys.stderr)
        return 1
    return 0
