"""Secrets and exposure.

Claims: only schema/settings.py reads configuration from the environment (the
deploy tooling reads where server binaries are and passes the environment on,
nothing else); no product module holds a secret literal or signs/verifies a
token with a literal key; the API verifies tokens with settings' JWT_SECRET.
With APP_ENV=production and the default (or a short) JWT_SECRET the settings,
gunicorn as `make up` runs it, and `python -m api token` refuse to start, each
with one line and a non-zero exit; with a real secret gunicorn serves. Flower
is never started beyond localhost without FLOWER_BASIC_AUTH (user:password):
`make up` refuses before it starts any server or process.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from api_helpers import ROOT, Gunicorn, api_client, bearer, http, user_row

from api.auth import issue_token
from deploy.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from deploy.stack import check_flower_exposure
from schema.db import make_engine
from schema.settings import DEFAULT_JWT_SECRET, Settings, SettingsError

PACKAGES = ("api", "tasks", "monitoring", "schema", "beat", "deploy")
# Modules that may read os.environ, and why. Everything else gets a Settings.
ENV_READERS = {
    "schema/settings.py": "the one settings object",
    "deploy/embedded.py": "PG_BINDIR / REDIS_SERVER: where the server binaries are, not app settings",
    "deploy/stack.py": "make up: hands the environment to Settings and to the processes it starts",
    "api/gunicorn_conf.py": "exports PROMETHEUS_MULTIPROC_DIR (from Settings) to prometheus_client, which reads only the environment",
}
SECRET_NAME = ("secret", "password", "passwd", "api_key", "apikey", "private_key")
GOOD_SECRET = "production-secret-" + "p" * 32


def sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if "__pycache__" not in p.parts)


def env_reads(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os" \
                and node.attr in {"environ", "getenv", "environb", "putenv"}:
            lines.append(node.lineno)
        if isinstance(node, ast.ImportFrom) and node.module == "os" \
                and any(a.name in {"environ", "getenv", "environb"} for a in node.names):
            lines.append(node.lineno)
    return lines


def test_only_settings_reads_the_environment() -> None:
    readers = {str(p.relative_to(ROOT)) for p in sources() if env_reads(ast.parse(p.read_text()))}
    assert readers <= set(ENV_READERS), sorted(readers - set(ENV_READERS))
    assert "schema/settings.py" in readers


def secret_literals(tree: ast.AST) -> list[str]:
    """String literals bound to a secret-looking name, and jwt calls with a literal key."""
    found = []
    for node in ast.walk(tree):
        pairs: list[tuple[str, ast.AST]] = []
        if isinstance(node, ast.Assign):
            pairs = [(t.id, node.value) for t in node.targets if isinstance(t, ast.Name)]
            pairs += [(t.attr, node.value) for t in node.targets if isinstance(t, ast.Attribute)]
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target = node.target
            pairs = [(getattr(target, "id", getattr(target, "attr", "")), node.value)]
        elif isinstance(node, ast.keyword) and node.arg:
            pairs = [(node.arg, node.value)]
        for name, value in pairs:
            if any(s in name.lower() for s in SECRET_NAME) and isinstance(value, ast.Constant) \
                    and isinstance(value.value, str) and value.value:
                found.append(f"{node.lineno}: {name} = {value.value!r}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "jwt" \
                and node.func.attr in {"encode", "decode"}:
            key = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "key"), None)
            if isinstance(key, ast.Constant):
                found.append(f"{node.lineno}: jwt.{node.func.attr} with a literal key")
    return found


def test_no_secret_literal_in_product_code() -> None:
    found = {str(p.relative_to(ROOT)): secret_literals(ast.parse(p.read_text())) for p in sources()}
    found = {k: v for k, v in found.items() if v}
    # The one allowed: the development default, which production refuses (below).
    assert found == {"schema/settings.py": [f"{_default_line()}: DEFAULT_JWT_SECRET = {DEFAULT_JWT_SECRET!r}"]}


def _default_line() -> int:
    text = (ROOT / "schema" / "settings.py").read_text().splitlines()
    return next(i for i, line in enumerate(text, 1) if line.startswith("DEFAULT_JWT_SECRET ="))


@pytest.mark.parametrize("bad", ['JWT_SECRET = "hunter2"', 'connect(password="pw")',
                                 'jwt.encode(claims, "k", algorithm="HS256")', 'self.api_key = "abc"'])
def test_the_secret_check_catches_each_pattern(bad: str) -> None:
    assert secret_literals(ast.parse(bad))


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # the short dev default, on purpose
def test_the_api_verifies_tokens_with_the_settings_secret(demo_database_url: str, redis_url: str) -> None:
    engine = make_engine(demo_database_url, pool_size=1)
    try:
        alice = user_row(engine, "alice")
    finally:
        engine.dispose()
    with api_client(demo_database_url, redis_url, settings={"jwt_secret": GOOD_SECRET}) as (client, _deps):
        for secret, status in [(GOOD_SECRET, 200), (DEFAULT_JWT_SECRET, 401), ("test-secret-" + "x" * 32, 401)]:
            token = issue_token(secret, alice.id, role=alice.role, admin=False)
            assert client.simulate_get("/api/conversations", headers=bearer(token)).status_code == status, secret


# -- production refuses the default secret ---------------------------------------------


@pytest.mark.parametrize("secret", [None, DEFAULT_JWT_SECRET, "short-secret"])
def test_production_settings_refuse_a_default_or_short_secret(secret: str | None) -> None:
    env = {"DATABASE_URL": "postgresql://localhost/x", "APP_ENV": "production"}
    if secret is not None:
        env["JWT_SECRET"] = secret
    with pytest.raises(SettingsError, match="JWT_SECRET"):
        Settings.from_env(env)
    assert Settings.from_env({**env, "JWT_SECRET": GOOD_SECRET}).jwt_secret == GOOD_SECRET


def _env(database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JWT_", "APP_", "FLOWER_", "DATABASE_", "REDIS_"))}
    env.update({"DATABASE_URL": database_url, "REDIS_URL": redis_url, "PYTHONPATH": str(ROOT),
                "API_HOST": "127.0.0.1", "API_PORT": str(free_port()), "GUNICORN_CMD_ARGS": "--log-level warning"})
    env.update(extra)
    return env


def _one_line(out: subprocess.CompletedProcess) -> str:
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, out.stdout + out.stderr
    return lines[0]


@pytest.mark.parametrize("secret", [None, DEFAULT_JWT_SECRET, "short-secret"])
def test_gunicorn_refuses_to_start_in_production_with_a_weak_secret(demo_database_url: str, redis_url: str,
                                                                     secret: str | None) -> None:
    extra = {"APP_ENV": "production", **({"JWT_SECRET": secret} if secret is not None else {})}
    out = subprocess.run([str(Path(sys.executable).parent / "gunicorn"), "-c", "api/gunicorn_conf.py",
                          "api:create_app()"], cwd=ROOT, env=_env(demo_database_url, redis_url, **extra),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    line = _one_line(out)
    assert line.startswith("api: refusing to start:") and "JWT_SECRET" in line and "APP_ENV=production" in line


def test_bare_gunicorn_factory_also_exits_non_zero(demo_database_url: str, redis_url: str) -> None:
    """Without the config file gunicorn prints its own traceback; it still refuses."""
    out = subprocess.run([str(Path(sys.executable).parent / "gunicorn", ), "--workers", "1",
                          "--bind", f"127.0.0.1:{free_port()}", "api:create_app()"], cwd=ROOT,
                         env=_env(demo_database_url, redis_url, APP_ENV="production"),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "JWT_SECRET must be set to a real secret" in out.stderr


def test_token_command_refuses_in_production_with_the_default_secret(demo_database_url: str, redis_url: str) -> None:
    out = subprocess.run([sys.executable, "-m", "api", "token", "--user", "alice"], cwd=ROOT,
                         env=_env(demo_database_url, redis_url, APP_ENV="production"),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and out.stdout == ""
    assert "JWT_SECRET" in _one_line(out)


def test_gunicorn_serves_in_production_with_a_real_secret(demo_database_url: str, redis_url: str,
                                                          tmp_path: Path) -> None:
    server = Gunicorn(demo_database_url, redis_url, workers=1, threads=2,
                      extra_env={"APP_ENV": "production", "JWT_SECRET": GOOD_SECRET}).start(tmp_path)
    try:
        assert http("GET", server.url("/health/live")).status == 200
        token = issue_token(GOOD_SECRET, str(uuid.uuid4()), role="member", admin=False)
        assert http("GET", server.url("/api/dashboard"), headers=bearer(token)).status == 404  # unknown user, valid token
    finally:
        server.stop()


# -- Flower ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("host", "auth", "refused"), [
    ("127.0.0.1", "", False), ("localhost", "", False), ("::1", "", False),
    ("0.0.0.0", "", True), ("10.1.2.3", "", True), ("flower.example.com", "", True),
    ("0.0.0.0", "admin:a-long-password", False), ("0.0.0.0", "ops:pw1,admin:pw2", False),
    ("0.0.0.0", "admin", True), ("0.0.0.0", "admin:", True), ("0.0.0.0", ":pw", True),
])
def test_flower_beyond_localhost_needs_basic_auth(host: str, auth: str, refused: bool) -> None:
    settings = Settings.from_env({"DATABASE_URL": "postgresql://localhost/x", "FLOWER_HOST": host,
                                  "FLOWER_BASIC_AUTH": auth})
    if refused:
        with pytest.raises(SettingsError, match="FLOWER_BASIC_AUTH"):
            check_flower_exposure(settings)
    else:
        check_flower_exposure(settings)


@pytest.mark.parametrize("bad", [{"FLOWER_HOST": "0.0.0.0"}, {"APP_ENV": "production"}],
                         ids=["flower-exposed", "production-default-secret"])
def test_make_up_refuses_before_starting_anything(tmp_path: Path, bad: dict[str, str]) -> None:
    """No DATABASE_URL/REDIS_URL: `make up` would start private servers first; it must refuse before."""
    run_dir = tmp_path / "run"
    pg_port, redis_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JWT_", "APP_", "FLOWER_", "DATABASE_", "REDIS_"))}
    env.update({"DISCOVERY_RUN_DIR": str(run_dir), "EMBEDDED_PG_PORT": str(pg_port),
                "EMBEDDED_REDIS_PORT": str(redis_port), "PYTHONPATH": str(ROOT), **bad})
    try:
        out = subprocess.run([sys.executable, "-m", "deploy.stack", "up"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 1
        line = _one_line(out)
        assert line.startswith("up: ") and ("FLOWER_BASIC_AUTH" in line or "JWT_SECRET" in line), line
        assert not (run_dir / "pg").exists() and not (run_dir / "redis").exists() and not (run_dir / "pids").exists()
    finally:  # had it started anything, stop it
        EmbeddedRedis(run_dir / "redis", redis_port).stop()
        if (run_dir / "pg").exists():
            EmbeddedPostgres(run_dir / "pg", pg_port).stop("immediate")
