"""``make up`` / ``make down`` / ``make status``: the whole stack on one machine.

up:   Postgres and Redis (from DATABASE_URL / REDIS_URL, or private ones under
      .run/ when those are unset), migrations, demo data on an empty database,
      then gunicorn, the Celery workers, Beat and Flower as background
      processes with pid files and logs under .run/. Waits until /health is
      200 and prints where everything listens. Running it again keeps what is
      already running and starts what is not (after a crash too).
down: stops every process up started, then the private servers (never a
      server it did not start).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from psycopg2 import sql as pgsql

from deploy.embedded import EmbeddedPostgres, EmbeddedRedis, MissingBinary, ServiceError, port_open
from deploy.processes import Process, processes
from schema.db import DatabaseUnavailable, raw_connection
from schema.settings import Settings, SettingsError

ROOT = Path(__file__).resolve().parent.parent
RUN = Path(os.environ.get("DISCOVERY_RUN_DIR") or ROOT / ".run").resolve()
PIDS = RUN / "pids"
LOGS = RUN / "logs"
STACK_ENV = RUN / "stack.env"
BIN = Path(sys.executable).parent
EMBEDDED_DB = "discovery"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _say(msg: str) -> None:
    print(f"up: {msg}", flush=True)


def embedded_postgres(env: dict[str, str]) -> EmbeddedPostgres:
    return EmbeddedPostgres(
        RUN / "pg",
        int(env.get("EMBEDDED_PG_PORT", "55432")),
        settings={"shared_buffers": env.get("EMBEDDED_PG_SHARED_BUFFERS", "512MB")},
    )


def embedded_redis(env: dict[str, str]) -> EmbeddedRedis:
    return EmbeddedRedis(RUN / "redis", int(env.get("EMBEDDED_REDIS_PORT", "56379")))


def read_stack_env() -> dict[str, str]:
    if not STACK_ENV.exists():
        return {}
    pairs = (line.split("=", 1) for line in STACK_ENV.read_text().splitlines() if "=" in line and not line.startswith("#"))
    return {k: v for k, v in pairs}


def resolve_services(env: dict[str, str]) -> dict[str, str]:
    """Start private servers for what the environment does not provide; return the effective settings env."""
    effective: dict[str, str] = {}
    if env.get("DATABASE_URL"):
        _say("using DATABASE_URL from the environment (no private Postgres)")
    else:
        pg = embedded_postgres(env)
        pg.start()
        with raw_connection(pg.admin_url(), autocommit=True) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (EMBEDDED_DB,))
            if cur.fetchone() is None:
                cur.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(EMBEDDED_DB)))
        effective["DATABASE_URL"] = pg.admin_url(EMBEDDED_DB)
        effective["EMBEDDED_PG"] = "1"
        _say(f"private Postgres running on 127.0.0.1:{pg.port} (data in {pg.data_dir})")
    if env.get("REDIS_URL"):
        _say("using REDIS_URL from the environment (no private Redis)")
    else:
        rd = embedded_redis(env)
        rd.start()
        effective["REDIS_URL"] = rd.url(0)
        effective["EMBEDDED_REDIS"] = "1"
        _say(f"private Redis running on 127.0.0.1:{rd.port}")
    return effective


def write_stack_env(effective: dict[str, str]) -> None:
    RUN.mkdir(exist_ok=True)
    lines = ["# Written by `make up`: the settings of the running stack. `source .run/stack.env` to use them."]
    lines += [f"{k}={v}" for k, v in sorted(effective.items())]
    STACK_ENV.write_text("\n".join(lines) + "\n")


def _pid_file(name: str) -> Path:
    return PIDS / f"{name}.pid"


def running_pid(proc_name: str) -> int | None:
    """The pid of a process we started, if it is still alive (and still ours)."""
    try:
        pid = int(_pid_file(proc_name).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (OSError, ValueError):
        return None
    os_kill_ok = True
    try:
        os.kill(pid, 0)
    except OSError:
        os_kill_ok = False
    return pid if os_kill_ok and ("gunicorn" in cmdline or "celery" in cmdline) else None


def start_process(proc: Process, env: dict[str, str]) -> int:
    pid = running_pid(proc.name)
    if pid:
        _say(f"{proc.name} already running (pid {pid})")
        return pid
    PIDS.mkdir(parents=True, exist_ok=True)
    LOGS.mkdir(parents=True, exist_ok=True)
    argv = [str(BIN / proc.argv[0]), *proc.argv[1:]]
    log = open(LOGS / f"{proc.name}.log", "ab")
    child = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
    _pid_file(proc.name).write_text(str(child.pid))
    _say(f"started {proc.name} (pid {child.pid}, log .run/logs/{proc.name}.log)")
    return child.pid


def stop_process(name: str, timeout: float = 15) -> None:
    pid = running_pid(name)
    if pid is None:
        _pid_file(name).unlink(missing_ok=True)  # stale: the process is gone already
        return
    try:
        os.killpg(pid, signal.SIGTERM)  # the whole group: gunicorn/celery children too
    except OSError:
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except OSError:
            break
        time.sleep(0.1)
    else:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
    _pid_file(name).unlink(missing_ok=True)
    print(f"down: stopped {name} (pid {pid})")


def wait_http(url: str, timeout: float, expect: int = 200) -> tuple[bool, str]:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=3) as resp:
                if resp.status == expect:
                    return True, resp.read().decode(errors="replace")
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}: {exc.read().decode(errors='replace')[:300]}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.5)
    return False, last


def check_flower_exposure(settings: Settings) -> None:
    """Flower shows every task's arguments and can revoke tasks: beyond localhost only with auth."""
    if settings.flower_host in LOOPBACK:
        return
    if not settings.flower_basic_auth:
        raise SettingsError(
            f"FLOWER_HOST={settings.flower_host} exposes Flower beyond localhost; set FLOWER_BASIC_AUTH=user:password"
        )
    # Flower's own format: user:password[,user2:password2]; an entry without a password protects nothing.
    for entry in settings.flower_basic_auth.split(","):
        user, _, password = entry.partition(":")
        if not user.strip() or not password:
            raise SettingsError("FLOWER_BASIC_AUTH must be user:password (comma-separated for several users)")


def preflight(env: dict[str, str]) -> None:
    """Refuse bad settings before anything starts (no private server left running
    by a `make up` that then refuses). The database URL may not exist yet (the
    embedded one starts later); a placeholder lets every other setting be checked."""
    settings = Settings.from_env({**env, "DATABASE_URL": env.get("DATABASE_URL") or "postgresql://embedded/unresolved"})
    check_flower_exposure(settings)


def up(seed_scale: str = "demo") -> int:
    env = dict(os.environ)
    preflight(env)
    effective = resolve_services(env)
    env.update(effective)
    settings = Settings.from_env(env)
    for key in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
        if env.get(key):
            effective[key] = env[key]
    write_stack_env(effective)

    _say("applying migrations")
    subprocess.run([str(BIN / "python"), "-m", "schema", "migrate"], cwd=ROOT, env=env, check=True)
    subprocess.run([str(BIN / "python"), "-m", "schema", "seed", "--scale", seed_scale, "--if-empty"], cwd=ROOT,
                   env=env, check=True)

    procs = processes(settings, run_dir=str(RUN))
    for proc in procs:
        if proc.name == "api" and not running_pid("api") and port_open(settings.api_port, settings.api_host):
            raise ServiceError(f"port {settings.api_port} is taken by another process; set API_PORT")
        if proc.name == "flower" and not running_pid("flower") and port_open(settings.flower_port, settings.flower_host):
            raise ServiceError(f"port {settings.flower_port} is taken by another process; set FLOWER_PORT")
        start_process(proc, env)

    api = next(p for p in procs if p.name == "api")
    _say("waiting for /health to answer 200")
    ok, body = wait_http(api.health_url or "", timeout=90)
    if not ok:
        print(f"up: /health did not become healthy: {body}\n    see `make logs` or .run/logs/", file=sys.stderr)
        return 1
    flower = next((p for p in procs if p.name == "flower"), None)
    if flower and flower.health_url:
        wait_http(flower.health_url, timeout=30)
    print("\nThe stack is up:")
    print(f"  API         {api.listens}   (GET /health, /api/projects, /openapi.json, /status, /metrics)")
    if flower:
        print(f"  Flower      {flower.listens}")
    print(f"  Postgres    {_redact(settings.database_url)}")
    print(f"  Redis       {settings.redis_url}")
    print(f"  Broker      {_redact(settings.celery_broker_url)}")
    print(f"  Processes   {', '.join(p.name for p in procs)} (logs: make logs; state: make status)")
    print("  Settings    source .run/stack.env   (then e.g. `python -m api token --user alice`)")
    return 0


def _redact(url: str) -> str:
    if "@" in url and ":" in url.split("@", 1)[0].split("//", 1)[-1]:
        scheme, rest = url.split("//", 1)
        creds, host = rest.split("@", 1)
        return f"{scheme}//{creds.split(':', 1)[0]}:***@{host}"
    return url


def down() -> int:
    env = {**os.environ, **read_stack_env()}
    names = [p.stem for p in PIDS.glob("*.pid")] if PIDS.exists() else []
    # API first (stop taking requests), Beat before workers (stop scheduling).
    order = {"api": 0, "beat": 1, "flower": 2}
    for name in sorted(names, key=lambda n: order.get(n, 5)):
        stop_process(name)
    if env.get("EMBEDDED_REDIS") or (RUN / "redis").exists():
        rd = embedded_redis(env)
        if rd.running():
            rd.stop()
            print(f"down: stopped private Redis (port {rd.port})")
    if env.get("EMBEDDED_PG") or (RUN / "pg").exists():
        pg = embedded_postgres(env)
        if pg.running():
            pg.stop()
            print(f"down: stopped private Postgres (port {pg.port})")
    print("down: nothing left running")
    return 0


def status() -> int:
    env = {**os.environ, **read_stack_env()}
    if not STACK_ENV.exists():
        print("status: the stack is not up (run `make up`)")
        return 1
    settings = Settings.from_env(env)
    for proc in processes(settings, run_dir=str(RUN)):
        pid = running_pid(proc.name)
        print(f"  {proc.name:15} {'running pid ' + str(pid) if pid else 'NOT RUNNING'}")
    if env.get("EMBEDDED_PG"):
        print(f"  {'postgres':15} {'running' if embedded_postgres(env).running() else 'NOT RUNNING'} (private)")
    if env.get("EMBEDDED_REDIS"):
        print(f"  {'redis':15} {'running' if embedded_redis(env).running() else 'NOT RUNNING'} (private)")
    try:
        with urllib.request.urlopen(f"http://{settings.api_host}:{settings.api_port}/health", timeout=5) as resp:
            body = json.loads(resp.read())
            code = resp.status
    except urllib.error.HTTPError as exc:
        code, body = exc.code, json.loads(exc.read() or b"{}")
    except OSError as exc:
        print(f"  health: API not answering ({exc})")
        return 1
    print(f"  health: HTTP {code} {body.get('status')}")
    for name, check in (body.get("checks") or {}).items():
        state = check.get("status") if isinstance(check, dict) else check
        print(f"    {name:20} {state}")
    return 0 if code == 200 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.stack")
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--seed-scale", default="demo")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            return up(args.seed_scale)
        if args.command == "down":
            return down()
        return status()
    except (MissingBinary, ServiceError, SettingsError, DatabaseUnavailable) as exc:
        print(f"{args.command}: {exc}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as exc:
        print(f"{args.command}: `{' '.join(map(str, exc.cmd[1:]))}` failed (exit {exc.returncode})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
