"""pg_stat_statements: the guide's "Monitor During Load Test" queries, and servers without the library.

`make up`'s private Postgres loads the library (shared_preload_libraries) and
`make up` creates the extension in its database: tests/test_make_up_e2e.py
runs monitoring/load_test.sql verbatim on the database a real `make up`
started. Migrations never need the library, so they still run with psql on a
server without it, where `make up`'s step says what is missing instead of failing.
"""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from deploy import stack
from deploy.database import create_embedded_database, enable_pg_stat_statements
from deploy.embedded import EmbeddedPostgres, free_port
from schema.db import make_engine
from schema.migrate import discover

ROOT = Path(__file__).resolve().parent.parent
LOAD_TEST_SQL = ROOT / "monitoring" / "load_test.sql"
# The owner's guide, kept in the repository (docs/spec/) so this check runs in any checkout.
GUIDE = ROOT / "docs" / "spec" / "denormalization-guide.md"


def _statements(sql: str) -> list[str]:
    """SQL statements without comments, whitespace-normalized, for comparison."""
    code = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    return [" ".join(s.split()) for s in code.split(";") if s.strip()]


@pytest.fixture()
def cluster(work_dir: Path, request: pytest.FixtureRequest) -> Iterator[EmbeddedPostgres]:
    """A private cluster; ``request.param`` holds extra server settings (default: as make up starts it)."""
    run = work_dir / f"stack-{uuid.uuid4().hex[:8]}"
    overrides = getattr(request, "param", {})
    pg = stack.embedded_postgres({"EMBEDDED_PG_PORT": str(free_port()), "EMBEDDED_PG_SHARED_BUFFERS": "64MB"}, run=run)
    pg.settings.update(overrides)
    pg.start()
    try:
        yield pg
    finally:
        pg.destroy()


def test_load_test_file_is_the_guides_block_verbatim() -> None:
    text = GUIDE.read_text()
    block = re.search(r"### Monitor During Load Test\s*```sql\n(.*?)```", text, re.S)
    assert block, "the guide has no 'Monitor During Load Test' SQL block"
    assert block.group(1).strip() in LOAD_TEST_SQL.read_text()
    assert len(_statements(block.group(1))) == 3


@pytest.mark.parametrize("cluster", [{"shared_preload_libraries": "''"}], indirect=True)
def test_migrations_and_make_up_step_work_on_a_server_without_the_library(cluster: EmbeddedPostgres) -> None:
    url = create_embedded_database(cluster)
    for migration in discover():
        proc = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-f", str(migration.path)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{migration.name}: {proc.stderr}"

    said: list[str] = []
    assert enable_pg_stat_statements(url, out=said.append) is False
    assert len(said) == 1 and "shared_preload_libraries" in said[0], said
    # The CLI step of make up / compose's migrate service says so and does not fail the chain.
    cli = subprocess.run([sys.executable, "-m", "deploy.stack", "enable-pg-stat-statements"], cwd=ROOT,
                         env={"DATABASE_URL": url, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert "not loaded" in cli.stdout
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            installed = conn.execute(sa.text("SELECT count(*) FROM pg_extension WHERE extname = 'pg_stat_statements'"))
            assert installed.scalar_one() == 0
    finally:
        engine.dispose()
