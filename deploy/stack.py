"""``make up`` / ``make down`` / ``make status``: the whole stack on one machine.

up:   checks first (settings, server binaries, ports), then Postgres and Redis
      (from DATABASE_URL / REDIS_URL, or private ones under the run directory
      when those are unset), pg_stat_statements, migrations, demo data on an
      empty database, then gunicorn, the Celery workers, Beat and Flower as
      background processes with pid files and logs in the run directory. Waits
      until /health is 200 and prints where everything listens. Running it
      again keeps what runs and starts what does not; after a crash it first
      removes what the crashed process left behind (children, pid file).
down: stops every process up started, then the private servers (never a
      server it did not start), and forgets the stack's settings.

The run directory is ``.run/`` in the checkout, or ``DISCOVERY_RUN_DIR``. Its
``stack.env`` records the settings the stack was started with (what you gave
plus the private servers' URLs), so ``make status``/``make down``/``make up``
in another shell act on the same stack without repeating them.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from deploy.database import create_embedded_database, enable_pg_stat_statements
from deploy.embedded import (
    EmbeddedPostgres,
    EmbeddedRedis,
    MissingBinary,
    ServiceError,
    find_pg_bindir,
    find_redis_server,
    port_open,
)
from deploy.processes import Process, processes, setup_commands
from deploy.runner import PidFiles
from deploy.stackenv import documented_settings, given, read_stack_env
from schema.db import DatabaseUnavailable
from schema.settings import Settings, SettingsError

ROOT = Path(__file__).resolve().parent.parent
RUN = Path(os.environ.get("DISCOVERY_RUN_DIR") or ROOT / ".run").resolve()
PIDS = RUN / "pids"
LOGS = RUN / "logs"
STACK_ENV = RUN / "stack.env"
BIN = Path(sys.executable).parent
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# Stopped together, in this order: the API first (stop taking requests), Beat
# before the workers (stop scheduling), the workers last (finish what runs).
STOP_PHASES = (("api", "beat", "flower"),)


def _say(msg: str) -> None:
    print(f"up: {msg}", flush=True)


def _shown(path: Path) -> str:
    """A path as the user would type it: relative to the checkout when inside it."""
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def embedded_postgres(env: dict[str, str], run: Path = RUN) -> EmbeddedPostgres:
    """The private Postgres of the stack in ``run`` (shared_preload_libraries has pg_stat_statements)."""
    return EmbeddedPostgres(
        run / "pg",
        int(env.get("EMBEDDED_PG_PORT") or "55432"),
        settings={"shared_buffers": env.get("EMBEDDED_PG_SHARED_BUFFERS") or "512MB"},
    )


def embedded_redis(env: dict[str, str], run: Path = RUN) -> EmbeddedRedis:
    return EmbeddedRedis(run / "redis", int(env.get("EMBEDDED_REDIS_PORT") or "56379"))


def write_stack_env(effective: dict[str, str]) -> None:
    RUN.mkdir(parents=True, exist_ok=True)
    # `export` lines, so `source .run/stack.env` hands them to the commands you run next.
    lines = [f"# Written by `make up`: the settings of the running stack. `source {_shown(STACK_ENV)}` to use them."]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(effective.items())]
    STACK_ENV.touch(mode=0o600)  # may hold JWT_SECRET / passwords you gave
    STACK_ENV.write_text("\n".join(lines) + "\n")


def preflight(env: dict[str, str], pids: PidFiles) -> Settings:
    """Every check that can fail before anything starts: settings, binaries, ports.

    Also removes what a crashed app process left (children still holding its
    port, a stale pid file), so a port held by our own leftovers is freed
    rather than reported."""
    # Validate the settings now; DATABASE_URL is only known after the private Postgres starts.
    settings = Settings.from_env({**env, "DATABASE_URL": env.get("DATABASE_URL") or "postgresql://embedded/placeholder"})
    check_flower_exposure(settings)
    if not env.get("DATABASE_URL"):
        find_pg_bindir()
    if not env.get("REDIS_URL"):
        find_redis_server()
    for proc in processes(settings, run_dir=str(RUN)):
        killed = pids.clean_up_after_crash(proc.name)
        if killed:
            _say(f"{proc.name} had crashed; stopped what it left running (pids {', '.join(map(str, killed))})")
    wanted: list[tuple[int, str, str, bool]] = [
        (settings.api_port, settings.api_host, "API_PORT", bool(pids.running("api"))),
        (settings.flower_port, settings.flower_host, "FLOWER_PORT", bool(pids.running("flower"))),
    ]
    if not env.get("DATABASE_URL"):
        pg = embedded_postgres(env)
        wanted.append((pg.port, "127.0.0.1", "EMBEDDED_PG_PORT", pg.running()))
    if not env.get("REDIS_URL"):
        rd = embedded_redis(env)
        wanted.append((rd.port, "127.0.0.1", "EMBEDDED_REDIS_PORT", rd.running()))
    for port, host, name, ours in wanted:
        if not ours and port_open(port, "127.0.0.1" if host in {"0.0.0.0", "::"} else host):
            raise ServiceError(f"port {port} ({name}) is in use by another process; stop it or set {name} to a free port")
    return settings


def resolve_services(env: dict[str, str]) -> dict[str, str]:
    """Start private servers for what the environment does not provide; return what up derived."""
    derived: dict[str, str] = {}
    if env.get("DATABASE_URL"):
        _say("using DATABASE_URL from the environment (no private Postgres)")
    else:
        pg = embedded_postgres(env)
        pg.start()
        derived.update(DATABASE_URL=create_embedded_database(pg), EMBEDDED_PG="1", EMBEDDED_PG_PORT=str(pg.port))
        _say(f"private Postgres running on 127.0.0.1:{pg.port} (data in {_shown(pg.data_dir)})")
    if env.get("REDIS_URL"):
        _say("using REDIS_URL from the environment (no private Redis)")
    else:
        rd = embedded_redis(env)
        rd.start()
        derived.update(REDIS_URL=rd.url(0), EMBEDDED_REDIS="1", EMBEDDED_REDIS_PORT=str(rd.port))
        _say(f"private Redis running on 127.0.0.1:{rd.port}")
    return derived


def start_process(proc: Process, env: dict[str, str], pids: PidFiles) -> int:
    pid = pids.running(proc.name)
    if pid:
        _say(f"{proc.name} already running (pid {pid})")
        return pid
    log = LOGS / f"{proc.name}.log"
    argv = [str(BIN / proc.argv[0]), *proc.argv[1:]]
    if proc.argv[0] == "celery":
        # Restarted if it dies (a worker can, on a broker outage), as systemd's
        # Restart=always does in production: see deploy/supervise.py.
        argv = [str(BIN / "python"), "-m", "deploy.supervise", "--name", proc.name, "--", *argv]
    pid = pids.start(proc.name, argv, env, log)
    _say(f"started {proc.name} (pid {pid}, log {_shown(log)})")
    return pid


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


def up(seed_scale: str = "demo") -> int:
    env = {**given(read_stack_env(STACK_ENV)), **given(os.environ)}
    pids = PidFiles(PIDS, ROOT)
    preflight(env, pids)
    derived = resolve_services(env)
    env.update(derived)
    settings = Settings.from_env(env)
    documented = documented_settings()
    # API_URL is not a setting: where the API answers, for the shell (README's curl examples).
    write_stack_env({**{k: v for k, v in env.items() if k in documented and v}, **derived,
                     "API_URL": f"http://{settings.api_host}:{settings.api_port}"})

    for step in setup_commands(seed_scale):
        subprocess.run([str(BIN / step[0]), *step[1:]], cwd=ROOT, env=env, check=True)

    procs = processes(settings, run_dir=str(RUN))
    for proc in procs:
        start_process(proc, env, pids)

    api = next(p for p in procs if p.name == "api")
    _say("waiting for /health to answer 200")
    ok, body = wait_http(api.health_url or "", timeout=90)
    if not ok:
        print(f"up: /health did not become healthy: {body}\n    see `make logs` or {_shown(LOGS)}/", file=sys.stderr)
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
    print(f"  Settings    source {_shown(STACK_ENV)}   (then e.g. `python -m api token --user alice`)")
    return 0


def _redact(url: str) -> str:
    if "@" in url and ":" in url.split("@", 1)[0].split("//", 1)[-1]:
        scheme, rest = url.split("//", 1)
        creds, host = rest.split("@", 1)
        return f"{scheme}//{creds.split(':', 1)[0]}:***@{host}"
    return url


def down() -> int:
    recorded = read_stack_env(STACK_ENV)
    env = {**os.environ, **recorded}  # the running stack's own ports win
    pids = PidFiles(PIDS, ROOT)
    names = pids.names()
    phases = [[n for n in phase if n in names] for phase in STOP_PHASES]
    phases.append([n for n in names if not any(n in phase for phase in STOP_PHASES)])
    for phase in phases:
        for name, pid in pids.stop(phase):
            print(f"down: stopped {name} (pid {pid})")
    if recorded.get("EMBEDDED_REDIS") or (RUN / "redis").exists():
        rd = embedded_redis(env)
        if rd.running():
            rd.stop()
            print(f"down: stopped private Redis (port {rd.port})")
    if recorded.get("EMBEDDED_PG") or (RUN / "pg").exists():
        pg = embedded_postgres(env)
        if pg.running():
            pg.stop()
            print(f"down: stopped private Postgres (port {pg.port})")
    STACK_ENV.unlink(missing_ok=True)
    print("down: nothing left running")
    return 0


def status() -> int:
    if not STACK_ENV.exists():
        print("status: the stack is not up (run `make up`)")
        return 1
    env = {**os.environ, **read_stack_env(STACK_ENV)}
    settings = Settings.from_env(env)
    pids = PidFiles(PIDS, ROOT)
    all_running = True
    for proc in processes(settings, run_dir=str(RUN)):
        pid = pids.running(proc.name)
        all_running &= pid is not None
        print(f"  {proc.name:15} {'running pid ' + str(pid) if pid else 'NOT RUNNING (make up starts it)'}")
    if env.get("EMBEDDED_PG"):
        running = embedded_postgres(env).running()
        all_running &= running
        print(f"  {'postgres':15} {'running' if running else 'NOT RUNNING'} (private, port {env.get('EMBEDDED_PG_PORT')})")
    if env.get("EMBEDDED_REDIS"):
        running = embedded_redis(env).running()
        all_running &= running
        print(f"  {'redis':15} {'running' if running else 'NOT RUNNING'} (private, port {env.get('EMBEDDED_REDIS_PORT')})")
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
    return 0 if code == 200 and all_running else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.stack")
    parser.add_argument("command", choices=["up", "down", "status", "enable-pg-stat-statements"])
    parser.add_argument("--seed-scale", default="demo")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            return up(args.seed_scale)
        if args.command == "down":
            return down()
        if args.command == "enable-pg-stat-statements":
            enable_pg_stat_statements(Settings.from_env().database_url)
            return 0
        return status()
    except (MissingBinary, ServiceError, SettingsError, DatabaseUnavailable) as exc:
        print(f"{args.command}: {exc}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as exc:
        print(f"{args.command}: `{' '.join(map(str, exc.cmd[1:]))}` failed (exit {exc.returncode})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
