"""Bad input and missing services: one line naming the problem, non-zero exit, nothing written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import sqlalchemy as sa

from deploy.embedded import free_port, port_open

ROOT = Path(__file__).resolve().parent.parent


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env={**base, **env}, capture_output=True, text=True,
                          timeout=60)


def test_migrate_with_unreachable_database_is_one_line(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    proc = run_cli(["-m", "schema", "migrate"], {"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{port}/nowhere"})
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"127.0.0.1:{port}/nowhere" in lines[0] and "cannot connect to PostgreSQL" in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


def test_migrate_without_database_url_names_the_variable() -> None:
    proc = run_cli(["-m", "schema", "migrate"], {})
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0 and "DATABASE_URL is not set" in proc.stderr


def test_seed_with_unknown_scale_names_the_valid_ones(empty_database_url: str) -> None:
    proc = run_cli(["-m", "schema", "seed", "--scale", "huge"], {"DATABASE_URL": empty_database_url})
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0
    assert "huge" in proc.stderr and "demo" in proc.stderr and "bench" in proc.stderr
    engine = sa.create_engine(empty_database_url.replace("postgresql://", "postgresql+psycopg2://"))
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM users")).scalar() == 0
    engine.dispose()


def test_missing_postgres_binary_is_one_line_and_starts_nothing(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = run_cli(
        ["-m", "deploy.stack", "up"],
        {"PG_BINDIR": str(tmp_path / "no-postgres-here"), "DISCOVERY_RUN_DIR": str(run_dir),
         "EMBEDDED_PG_PORT": str(free_port()), "REDIS_URL": "redis://127.0.0.1:1/0"},
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "initdb" in proc.stderr and "install" in proc.stderr
    assert not (run_dir / "pg" / "PG_VERSION").exists()
    assert not (run_dir / "pids").exists()


def test_missing_redis_binary_is_one_line(tmp_path: Path) -> None:
    proc = run_cli(
        ["-m", "deploy.stack", "up"],
        {"REDIS_SERVER": str(tmp_path / "no-redis-server"), "DISCOVERY_RUN_DIR": str(tmp_path / "run"),
         "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/x", "EMBEDDED_REDIS_PORT": str(free_port())},
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "redis" in proc.stderr and "install" in proc.stderr


def test_missing_redis_binary_starts_no_private_postgres(tmp_path: Path) -> None:
    """Both servers embedded, redis-server missing: refused before the private Postgres starts."""
    base = Path(tempfile.mkdtemp(prefix="discovery-halfup-"))
    base.chmod(0o755)  # reachable by the postgres OS user, so a Postgres started by mistake would run
    run_dir, pg_port = base / "run", free_port()
    env = {"REDIS_SERVER": str(tmp_path / "no-redis-server"), "DISCOVERY_RUN_DIR": str(run_dir),
           "EMBEDDED_PG_PORT": str(pg_port), "EMBEDDED_REDIS_PORT": str(free_port())}
    try:
        proc = run_cli(["-m", "deploy.stack", "up"], env)
        assert proc.returncode != 0
        assert proc.stderr.strip().count("\n") == 0, proc.stderr
        assert "redis-server" in proc.stderr and "install" in proc.stderr
        assert not port_open(pg_port), "a private Postgres was left running"
        assert not (run_dir / "pg" / "PG_VERSION").exists()
        assert not (run_dir / "stack.env").exists() and not (run_dir / "pids").exists()
    finally:
        run_cli(["-m", "deploy.stack", "down"], env)  # stops whatever a failure left behind
        shutil.rmtree(base, ignore_errors=True)
