"""The migration runner: order, bookkeeping, idempotence, psql compatibility."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa

from schema.db import make_engine
from schema.migrate import MIGRATIONS_DIR, MigrationError, discover, invalid_indexes, migrate


def test_second_migrate_is_a_noop(empty_database_url: str) -> None:
    lines: list[str] = []
    result = migrate(empty_database_url, out=lines.append)
    assert result.applied == []
    assert result.skipped == [m.name for m in discover()]
    engine = make_engine(empty_database_url)
    with engine.connect() as conn:
        recorded = conn.execute(sa.text("SELECT name FROM schema_migrations ORDER BY name")).scalars().all()
    engine.dispose()
    assert recorded == [m.name for m in discover()]


def test_no_invalid_index_after_migrate(empty_database_url: str) -> None:
    assert invalid_indexes(empty_database_url) == []


def test_changed_migration_is_refused(create_database, tmp_path: Path) -> None:
    url = create_database()
    shutil.copy(MIGRATIONS_DIR / "0000_base_schema.sql", tmp_path / "0000_base_schema.sql")
    migrate(url, directory=tmp_path, out=lambda _: None)
    (tmp_path / "0000_base_schema.sql").write_text(
        (tmp_path / "0000_base_schema.sql").read_text().replace("COMMIT;", "-- edited\nCOMMIT;")
    )
    with pytest.raises(MigrationError, match="refusing to run a changed migration"):
        migrate(url, directory=tmp_path, out=lambda _: None)


def test_failed_transactional_migration_leaves_nothing(create_database, tmp_path: Path) -> None:
    url = create_database()
    (tmp_path / "0001_bad.sql").write_text("BEGIN;\nCREATE TABLE half_written (id int);\nSELECT 1/0;\nCOMMIT;\n")
    with pytest.raises(MigrationError, match="rolled back"):
        migrate(url, directory=tmp_path, out=lambda _: None)
    engine = make_engine(url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT to_regclass('half_written')")).scalar() is None
        assert conn.execute(sa.text("SELECT count(*) FROM schema_migrations")).scalar() == 0
    engine.dispose()


def test_no_transaction_file_continues_past_a_failing_index_and_rebuilds_invalid(create_database, tmp_path: Path) -> None:
    url = create_database()
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (id int, v int)"))
        conn.execute(sa.text("INSERT INTO t VALUES (1, 1), (2, 1)"))
    (tmp_path / "0001_idx.sql").write_text(
        "-- migrate: no-transaction\n"
        "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS idx_t_v ON t (v);\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_t_id ON t (id);\n"
    )
    lines: list[str] = []
    result = migrate(url, directory=tmp_path, out=lines.append)
    assert not result.ok and "idx_t_v" in result.failed_statements[0]
    # The failed unique build leaves an INVALID index; the second one was still built.
    assert invalid_indexes(url) == ["idx_t_v"]
    with engine.begin() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM pg_indexes WHERE indexname = 'idx_t_id'")).scalar() == 1
        conn.execute(sa.text("UPDATE t SET v = id"))
    result = migrate(url, directory=tmp_path, out=lines.append)
    assert result.ok and result.applied == ["0001_idx.sql"]
    assert any("INVALID" in line and "rebuilding" in line for line in lines)
    assert invalid_indexes(url) == []
    engine.dispose()


def test_every_migration_runs_with_plain_psql(create_database) -> None:
    psql = shutil.which("psql")
    assert psql, "psql (postgresql-client) is required"
    url = create_database()
    for migration in discover():
        proc = subprocess.run(
            [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-f", str(migration.path)],
            capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 0, f"{migration.name}: {proc.stderr}"
    assert invalid_indexes(url) == []
