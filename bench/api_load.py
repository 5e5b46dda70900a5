"""API throughput and latency under wrk: ``python -m bench.api_load [--scale quick|bench]``.

Starts a private Postgres cluster and redis-server (or uses the admin server of
``BENCH_DATABASE_URL``), creates a database, migrates and seeds it at the
scale (or uses ``--database-url`` as it is, seeding it only if empty), then for each gunicorn worker class (``--worker-classes``, default
``gthread,sync``) runs, on the SAME gunicorn settings and in the same run:

  hello          a minimal Falcon endpoint (bench/api_minimal.py): the baseline
  feed           GET /api/projects, anonymous (sort trending/newest, two pages)
  leaderboard    GET /api/leaderboard/projects, anonymous (two pages)
  feed_signed    GET /api/projects signed in as one of 200 users (Redis overlay)
  dashboard      GET /api/dashboard signed in as one of 200 users (Postgres, *_live views)
  details        GET /api/projects/{id} for 1,000 different projects, anonymous
  search         GET /api/search?q=... over 150 different queries (words, pairs, typos),
                 each asked once before the warm-up: answered from the page cache (keyed by
                 the index's generation; per process, then shared in Redis)
  search_cold    GET /api/search?q=... over 20,000 different word pairs: mostly cache
                 misses, i.e. what search_combined itself costs per request

Each endpoint gets a short warm-up, then ``wrk -t2 -c<connections> -d<duration>s
--latency`` (bench/wrk/rotate.lua varies paths and bearer tokens). Printed per
endpoint: req/s, p50, p99, non-2xx and socket errors, and req/s as a ratio of
``hello`` measured in the same round. wrk and the server share the machine's
cores, so the figures are for this box, not a server-class one.

Targets (issue): anonymous feed and leaderboard >= 0.60 x hello; signed-in reads
>= 2,500 req/s; dashboard p99 <= 20 ms and search p99 <= 50 ms at 64 connections.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from api.auth import issue_token
from deploy.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from schema.db import make_engine, raw_connection
from schema.migrate import migrate

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "bench" / "wrk" / "rotate.lua"
SECRET = "bench-secret-" + "b" * 40
TARGETS = {"feed": 0.60, "leaderboard": 0.60}
# Endpoints measured with their page cache primed (every path asked once first):
# "search" is the repeated-queries profile; "search_cold" (20,000 distinct
# queries, never primed) is what a search costs when it is not cached.
PRIMED = ("search",)


@dataclass
class Result:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non2xx: int
    socket_errors: str

    @property
    def failed(self) -> int:
        """Requests that got no 2xx answer: non-2xx plus wrk's socket errors (timeouts included).

        wrk leaves timed-out requests out of its latency percentiles, so a run
        whose requests all timed out shows p99 0 ms: a target is never "met"
        by a run with failures."""
        counts = [int(n) for n in re.findall(r"\d+", self.socket_errors)]
        return self.non2xx + sum(counts)


def verdict(ok: bool, result: Result) -> str:
    if result.failed:
        return f"NOT met ({result.failed} failed requests)"
    return "met" if ok else "NOT met"


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def parse_wrk(name: str, out: str) -> Result:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {m.group(1): _ms(m.group(2), m.group(3)) for m in re.finditer(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s|m)\s*$",
                                                                          out, re.MULTILINE)}
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors:\s+(.*)", out)
    return Result(name, rps, lat.get("50", float("nan")), lat.get("99", float("nan")), requests,
                  int(non2xx.group(1)) if non2xx else 0, sock.group(1).strip() if sock else "none")


def prime(base: str, paths_file: Path, clients: int = 4) -> tuple[int, float]:
    """Request every path of the file once (``clients`` at a time): the page cache
    then holds each, as it would for queries asked before. Returns (paths, seconds)."""
    from concurrent.futures import ThreadPoolExecutor

    paths = [line for line in paths_file.read_text().splitlines() if line]

    def get(path: str) -> None:
        with urllib.request.urlopen(base + path, timeout=60) as r:
            r.read()

    t0 = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(get, paths))
    return len(paths), time.monotonic() - t0


def run_wrk(base: str, paths_file: Path, tokens_file: Path | None, *, duration: int, connections: int,
            warmup: int = 3) -> str:
    def cmd(seconds: int) -> list[str]:
        return ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(LUA), base, "--",
                str(paths_file), str(tokens_file) if tokens_file else "-"]

    subprocess.run(cmd(warmup), capture_output=True, text=True, timeout=warmup + 60)
    return subprocess.run(cmd(duration), capture_output=True, text=True, timeout=duration + 60, check=True).stdout


@contextmanager
def gunicorn(app: str, env: dict[str, str], port: int, log: Path, probe: str) -> Iterator[str]:
    base = f"http://127.0.0.1:{port}"
    with open(log, "ab") as out:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "gunicorn"), "-c", "api/gunicorn_conf.py", app],
                                cwd=ROOT, env={**env, "API_PORT": str(port)}, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"gunicorn {app} exited; see {log}")
                try:
                    with urllib.request.urlopen(base + probe, timeout=1) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"gunicorn {app} did not answer within 30 s; see {log}")
                time.sleep(0.2)
            yield base
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def prepare_inputs(engine: sa.Engine, work: Path) -> dict[str, tuple[Path, Path | None]]:
    with engine.connect() as conn:
        users = conn.execute(sa.text(
            "SELECT id::text, role FROM users WHERE NOT is_deleted ORDER BY md5(id::text) LIMIT 200")).all()
        projects = [str(x) for x in conn.execute(sa.text(
            "SELECT id FROM mv_project_details ORDER BY md5(id::text) LIMIT 1000")).scalars()]
        words = [w for w in conn.execute(sa.text(
            "SELECT DISTINCT lower(w) FROM (SELECT regexp_split_to_table(title, '\\s+') AS w "
            "FROM (SELECT title FROM mv_feed_projects ORDER BY md5(id::text) LIMIT 400) t) s "
            "WHERE length(w) >= 4 ORDER BY 1")).scalars()]
    tokens = write_lines(work / "tokens.txt",
                         [issue_token(SECRET, uid, role=role, admin=False, ttl=6 * 3600) for uid, role in users])
    queries = words[:60]
    queries += [f"{a} {b}" for a, b in zip(words[::3], words[1::3], strict=False)][:50]
    queries += [w[:2] + w[3:] for w in words[5:45]]  # typos: one letter dropped
    search_paths = [f"/api/search?q={urllib.parse.quote(q)}" for q in queries]
    rng = random.Random(42)
    cold = {f"{rng.choice(words)} {rng.choice(words)}" for _ in range(40_000)}
    cold_paths = [f"/api/search?q={urllib.parse.quote(q)}" for q in sorted(cold)[:20_000]]
    return {
        "feed": (write_lines(work / "feed.txt", ["/api/projects", "/api/projects?sort=newest",
                                                 "/api/projects?limit=20&sort=trending"]), None),
        "leaderboard": (write_lines(work / "lb.txt", ["/api/leaderboard/projects",
                                                      "/api/leaderboard/projects?limit=50"]), None),
        "feed_signed": (write_lines(work / "feed_signed.txt", ["/api/projects"]), tokens),
        "dashboard": (write_lines(work / "dashboard.txt", ["/api/dashboard"]), tokens),
        "details": (write_lines(work / "details.txt", [f"/api/projects/{p}" for p in projects]), None),
        "search": (write_lines(work / "search.txt", search_paths), None),
        "search_cold": (write_lines(work / "search_cold.txt", cold_paths), None),
        "_counts": (Path(f"{len(users)} users, {len(projects)} projects, {len(search_paths)} queries, "
                         f"{len(cold_paths)} cold queries"), None),
    }


def conditions(engine: sa.Engine, args: argparse.Namespace) -> list[str]:
    with engine.connect() as conn:
        version = conn.execute(sa.text("SHOW server_version")).scalar()
        settings = dict(conn.execute(sa.text(
            "SELECT name, setting || coalesce(unit, '') FROM pg_settings WHERE name IN "
            "('shared_buffers', 'fsync', 'synchronous_commit', 'max_connections')")).all())
        rows = dict(conn.execute(sa.text(
            "SELECT 'users', count(*) FROM users UNION ALL SELECT 'projects', count(*) FROM projects "
            "UNION ALL SELECT 'project_upvotes', count(*) FROM project_upvotes "
            "UNION ALL SELECT 'project_comments', count(*) FROM project_comments "
            "UNION ALL SELECT 'mv_feed_projects', count(*) FROM mv_feed_projects "
            "UNION ALL SELECT 'mv_search_index', count(*) FROM mv_search_index")).all())
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()[0:1]
    return [
        f"machine: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), {platform.platform()}",
        f"python {platform.python_version()}, PostgreSQL {version} {settings}, wrk: {' '.join(wrk_version)}",
        f"scale {args.scale}: " + ", ".join(f"{k}={v:,}" for k, v in sorted(rows.items())),
        f"gunicorn: {args.workers} workers, threads {args.threads} (gthread), preload off, access log off",
        f"wrk: -t2 -c{args.connections} -d{args.duration}s --latency after a 3 s warm-up, same machine as the server",
        "API: per-process generation memo 0.5 s, response cache on (anonymous pages), user cache in Redis",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.api_load", description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="quick", help="seed scale: demo | quick | bench (default quick)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per endpoint (default 10)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--worker-classes", default="gthread,sync")
    parser.add_argument("--endpoints", default="feed,leaderboard,feed_signed,dashboard,details,search,search_cold")
    parser.add_argument("--database-url", help="use this database (migrated; seeded at --scale if it has no users) "
                                               "instead of creating one")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (logs, inputs)")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install -y wrk)", file=sys.stderr)
        return 1

    work = Path(tempfile.mkdtemp(prefix="bench-api-"))
    work.chmod(0o755)
    pg = redis = None
    admin = os.environ.get("BENCH_DATABASE_URL")
    try:
        if not admin and not args.database_url:
            pg = EmbeddedPostgres(work / "pg", free_port(), settings={"shared_buffers": "512MB"})
            pg.start()
            admin = pg.admin_url()
        redis = EmbeddedRedis(work / "redis", free_port())
        redis.start()
        from schema.seed import seed

        t0 = time.monotonic()
        if args.database_url:
            url = args.database_url
            dbname = sa.engine.make_url(url).database
            with raw_connection(url, autocommit=True) as conn, conn.cursor() as cur:
                cur.execute("SELECT EXISTS (SELECT 1 FROM users)")
                seeded = cur.fetchone()[0]
            if not seeded:
                seed(url, args.scale, seed=42, out=lambda line: None)
            print(f"# using database {dbname} (--database-url)" + ("" if seeded else
                  f", seeded at scale {args.scale} in {time.monotonic() - t0:.0f} s"), flush=True)
        else:
            dbname = f"bench_api_{int(time.time())}"
            with raw_connection(admin, autocommit=True) as conn, conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{dbname}"')  # generated name, not input
            url = str(sa.engine.make_url(admin).set(database=dbname).render_as_string(hide_password=False))
            migrate(url, out=lambda line: None)
            seed(url, args.scale, seed=42, out=lambda line: None)
            print(f"# prepared database {dbname} at scale {args.scale} in {time.monotonic() - t0:.0f} s", flush=True)
        engine = make_engine(url, pool_size=2)
        with engine.begin() as conn:  # give every view a logged generation (as the engine would)
            conn.execute(sa.text("INSERT INTO mv_refresh_requests (view_name) SELECT view_name FROM mv_registry"))
            conn.execute(sa.text("SELECT * FROM process_mv_refresh_queue()"))
        inputs = prepare_inputs(engine, work)
        print("# " + "\n# ".join(conditions(engine, args)), flush=True)
        print(f"# inputs: {inputs.pop('_counts')[0]}", flush=True)
        engine.dispose()

        env = {**os.environ, "DATABASE_URL": url, "REDIS_URL": redis.url(0), "JWT_SECRET": SECRET,
               "APP_ENV": "production", "API_HOST": "127.0.0.1", "GUNICORN_WORKERS": str(args.workers),
               "GUNICORN_THREADS": str(args.threads), "GUNICORN_CMD_ARGS": "--log-level warning",
               "PYTHONPATH": str(ROOT), "DB_POOL_SIZE": str(max(args.threads, 2))}
        hello_paths = write_lines(work / "hello.txt", ["/hello"])
        endpoints = [e for e in args.endpoints.split(",") if e]
        summary: list[str] = []
        for worker_class in args.worker_classes.split(","):
            cenv = {**env, "GUNICORN_WORKER_CLASS": worker_class}
            with gunicorn("bench.api_minimal:create_app()", cenv, free_port(), work / "gunicorn.log", "/hello") as base:
                hello = parse_wrk("hello", run_wrk(base, hello_paths, None, duration=args.duration,
                                                   connections=args.connections))
            results = [hello]
            with gunicorn("api:create_app()", cenv, free_port(), work / "gunicorn.log",
                          "/api/chains?limit=1") as base:
                for name in endpoints:
                    paths, tokens = inputs[name]
                    if name in PRIMED:
                        n, secs = prime(base, paths)
                        print(f"# {name}: primed: each of its {n} paths requested once in {secs:.1f} s "
                              "(4 at a time) before the warm-up", flush=True)
                    results.append(parse_wrk(name, run_wrk(base, paths, tokens, duration=args.duration,
                                                           connections=args.connections)))
            print(f"\n## worker_class={worker_class} workers={args.workers}"
                  + (f" threads={args.threads}" if worker_class == "gthread" else ""), flush=True)
            print(f"{'endpoint':<13}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'requests':>10}{'non-2xx':>9}"
                  f"{'x hello':>9}  socket errors")
            for r in results:
                print(f"{r.name:<13}{r.rps:>9.0f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{r.requests:>10}{r.non2xx:>9}"
                      f"{r.rps / hello.rps:>9.2f}  {r.socket_errors}", flush=True)
            by = {r.name: r for r in results}
            for name, ratio in TARGETS.items():
                if name in by:
                    got = by[name].rps / hello.rps
                    summary.append(f"{worker_class}: {name} {got:.2f} x hello (target >= {ratio:.2f}): "
                                   f"{verdict(got >= ratio, by[name])}")
            if "feed_signed" in by:
                summary.append(f"{worker_class}: feed_signed {by['feed_signed'].rps:.0f} req/s (target >= 2500): "
                               f"{verdict(by['feed_signed'].rps >= 2500, by['feed_signed'])}")
            if "dashboard" in by:
                summary.append(f"{worker_class}: dashboard p99 {by['dashboard'].p99_ms:.1f} ms (target <= 20): "
                               f"{verdict(by['dashboard'].p99_ms <= 20, by['dashboard'])}")
            for name in ("search", "search_cold"):
                if name in by:
                    summary.append(f"{worker_class}: {name} p99 {by[name].p99_ms:.1f} ms (target <= 50): "
                                   f"{verdict(by[name].p99_ms <= 50, by[name])}")
        print("\n## targets (a run with failed requests never meets a target)")
        for line in summary:
            print(line)
        return 0
    finally:
        if redis is not None:
            redis.stop()
        if pg is not None:
            pg.destroy()
        if args.keep:
            print(f"# kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
