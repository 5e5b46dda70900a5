"""``make bench`` / ``make bench-quick`` / ``make bench-compare``: every benchmark in one run.

    python -m bench run [--quick] [--only NAMES] [--database-url URL --redis-url URL]
    python -m bench compare A.json B.json
    python -m bench summary A.json

``run`` seeds ONE database (bench scale, or quick with ``--quick``) in a private
Postgres and Redis started for the run (or uses the URLs given, seeding the
database only if it has no users), prints the seed's time and database size,
then runs each benchmark as its own process against that database, in an order
that keeps the writing ones last:

  read_models     reads vs base tables, REFRESH CONCURRENTLY per view, request-trigger writers
  search_latency  search p50/p99 per function vs ILIKE; the forum query plan
  api_load        wrk: req/s, p50/p99 per endpoint next to a minimal Falcon app
  freshness       staleness under a steady write stream with real workers (writes upvotes)
  reconciliation  the nightly job, clean and with drift (corrupts and repairs rows)
  trigger_overhead  Phase 1 trigger cost with pgbench, on a database of its own (own data)
                  on the same server

Each benchmark's output streams to the terminal and goes, with its command and
time, into ``bench/results/<UTC time>-<scale>.json`` (``compare`` diffs two).
Timing targets live in the benchmarks, never in tests.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def steps(scale: str, quick: bool) -> dict[str, list[str]]:
    """Each benchmark's arguments after ``--database-url``; quick runs use short durations."""
    s = ["--scale", scale]
    if quick:
        return {
            "read_models": [*s, "--sections", "reads,refresh,writers", "--writer-rounds", "2", "--duration", "5"],
            "search_latency": [*s, "--repeats", "10"],
            "api_load": [*s, "--duration", "5", "--worker-classes", "gthread"],
            "freshness": [*s, "--duration", "30"],
            "reconciliation": [*s, "--load-seconds", "3"],
            "trigger_overhead": [*s, "--duration", "8", "--rounds", "1"],
        }
    return {
        "read_models": [*s, "--sections", "reads,refresh,writers"],
        "search_latency": [*s],
        "api_load": [*s, "--worker-classes", "gthread"],
        "freshness": [*s],
        "reconciliation": [*s],
        "trigger_overhead": [*s],
    }


@contextmanager
def servers(args: argparse.Namespace) -> Iterator[tuple[str, str, str | None]]:
    """(database url, redis url, admin url or None) for the run; private ones are removed afterwards."""
    if args.database_url:
        if not args.redis_url:
            raise SystemExit("bench: --redis-url is required with --database-url")
        yield args.database_url, args.redis_url, None
        return
    from deploy.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
    from schema.db import raw_connection

    work = Path(tempfile.mkdtemp(prefix="bench-run-"))
    work.chmod(0o755)  # the postgres OS user must reach its data directory
    pg = EmbeddedPostgres(work / "pg", free_port(), settings={"shared_buffers": "1GB"})
    redis = EmbeddedRedis(work / "redis", free_port())
    try:
        pg.start()
        redis.start()
        with raw_connection(pg.admin_url(), autocommit=True) as conn, conn.cursor() as cur:
            cur.execute("CREATE DATABASE bench")
        print(f"bench: private Postgres (port {pg.port}, fsync on) and Redis (port {redis.port}) in {work}", flush=True)
        yield pg.admin_url("bench"), redis.url(0), pg.admin_url()
    finally:
        redis.stop()
        pg.destroy()
        shutil.rmtree(work, ignore_errors=True)


def prepare(url: str, scale: str) -> dict[str, object]:
    """Migrate and seed (if empty); the seed's own lines show progress, rows and seconds per table."""
    from schema.db import raw_connection
    from schema.migrate import migrate
    from schema.seed import seed

    migrate(url, out=lambda line: None)
    with raw_connection(url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT EXISTS (SELECT 1 FROM users)")
        seeded = cur.fetchone()[0]
    seconds = None
    if not seeded:
        started = time.monotonic()
        seed(url, scale, seed=42, out=lambda line: print(f"  seed: {line}", flush=True))
        seconds = round(time.monotonic() - started, 1)
    with raw_connection(url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_size_pretty(pg_database_size(current_database())), pg_database_size(current_database())")
        pretty, size = cur.fetchone()
    print(f"bench: database {sa.engine.make_url(url).database}: "
          + (f"seeded at scale {scale} in {seconds:.0f} s, " if seconds is not None else "already seeded, ")
          + f"size {pretty}", flush=True)
    return {"seed_seconds": seconds, "database_bytes": size, "database_size": pretty}


def run_step(name: str, argv: list[str], env: dict[str, str]) -> dict[str, object]:
    print(f"\n######## {name}: python -m bench.{name} {' '.join(argv)}", flush=True)
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", f"bench.{name}", *argv], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=1)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:  # streamed: long benchmarks show their progress
        print(line, end="", flush=True)
        lines.append(line.rstrip("\n"))
    rc = proc.wait()
    seconds = round(time.monotonic() - started, 1)
    print(f"######## {name}: exit {rc} after {seconds:.0f} s", flush=True)
    return {"name": name, "argv": argv, "rc": rc, "seconds": seconds, "output": lines}


def run(args: argparse.Namespace) -> int:
    scale = "quick" if args.quick else "bench"
    plan = steps(scale, args.quick)
    only = [n.strip() for n in args.only.split(",")] if args.only else list(plan)
    unknown = set(only) - set(plan)
    if unknown:
        raise SystemExit(f"bench: unknown benchmark(s) {', '.join(sorted(unknown))}; choose from {', '.join(plan)}")
    started_at = datetime.now(UTC)
    load = os.getloadavg()
    print(f"bench: scale {scale}, {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
          flush=True)
    record: dict[str, object] = {"scale": scale, "started": started_at.isoformat(), "host": platform.node(),
                                 "cpus": os.cpu_count(), "steps": []}
    with servers(args) as (url, redis_url, admin_url):
        record["database"] = prepare(url, scale)
        base_env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_", "CELERY_"))}
        base_env["PYTHONPATH"] = str(ROOT)
        for name in only:
            argv, env = list(plan[name]), dict(base_env)
            if name == "trigger_overhead":
                # Its own database with its own data (pgbench addresses rows by generated ids),
                # created on the same server rather than in another cluster.
                if admin_url:
                    env["DATABASE_URL"] = admin_url
            else:
                argv += ["--database-url", url]
                if name in ("freshness", "reconciliation"):
                    argv += ["--redis-url", redis_url]
            record["steps"].append(run_step(name, argv, env))  # type: ignore[union-attr]
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{started_at.strftime('%Y%m%dT%H%M%SZ')}-{scale}.json"
    path.write_text(json.dumps(record, indent=1))
    print("\nbench: the guide's success metrics (this machine, this run)")
    for line in summary(record):
        print("  " + line)
    print("\nbench: steps")
    for step in record["steps"]:  # type: ignore[union-attr]
        print(f"  {step['name']:<18} exit {step['rc']}  {step['seconds']:>7.0f} s")
    print(f"bench: results in {path.relative_to(ROOT)} (compare two with `make bench-compare A=... B=...`)")
    return 0 if all(step["rc"] == 0 for step in record["steps"]) else 1  # type: ignore[union-attr]


# The guide's "Success Metrics" rows, filled from the benchmarks' own output lines.
GUIDE_ROWS = (  # (metric, guide's before, guide's target, read_models read, api_load endpoint)
    ("Feed Load Time", "800ms", "120ms", "feed: trending, top 20", "feed"),
    ("Leaderboard Load Time", "1200ms", "80ms", "leaderboard: projects, top 20", "leaderboard"),
    ("Dashboard Load Time", "600ms", "50ms", "dashboard (top builder)", "dashboard"),
    ("Search Response Time", "1500ms", "150ms", None, "search"),
)
READ_RE = re.compile(r"^(?P<name>\S.*?)\s+(?P<a>[\d.]+) \(\s*(?P<a99>[\d.]+)\)\s+(?P<b>[\d.]+) \(\s*(?P<b99>[\d.]+)\)"
                     r"\s+(?P<ratio>\d+)x")
API_RE = re.compile(r"^(?P<name>[a-z_]+)\s+(?P<rps>\d+)\s+(?P<p50>[\d.]+)\s+(?P<p99>[\d.]+)\s+\d+\s+\d+\s+"
                    r"(?P<x>[\d.]+)\s")
SEARCH_RE = re.compile(r"^(?P<name>search_combined|before: ILIKE over base tables)\s+(?P<p50>[\d.]+)\s+(?P<p99>[\d.]+)")
REFRESH_RE = re.compile(r"^(?P<change>nothing changed|100 new upvotes|\+1 upvote on 5% of projects)\s+[\d,]+ "
                        r"(?P<view>mv_\w+)\s+\d+\s+(?P<ms>[\d,]+)\s+(?P<rows>[\d,]+)")


def summary(record: dict) -> list[str]:
    """The guide's success-metrics table (as far as the steps that ran measured it)."""
    out = {step["name"]: step["output"] for step in record["steps"]}
    reads = {m["name"].strip(): m for line in out.get("read_models", []) if (m := READ_RE.match(line))}
    api = {m["name"]: m for line in out.get("api_load", []) if (m := API_RE.match(line))}
    search = {m["name"]: m for line in out.get("search_latency", []) if (m := SEARCH_RE.match(line))}
    refresh = [m for line in out.get("read_models", []) if (m := REFRESH_RE.match(line))]
    lines = [f"{'metric':<24}{'guide before':>13}{'target':>8}  {'base tables p50':>16}{'view p50 (p99)':>18}"
             f"{'API p50 / p99 ms':>19}{'API req/s':>11}"]
    for metric, before, target, read, endpoint in GUIDE_ROWS:
        base = view = "n/a"
        if read and read in reads:
            r = reads[read]
            base, view = f"{float(r['b']):.1f} ms", f"{float(r['a']):.2f} ({float(r['a99']):.2f}) ms"
        elif endpoint == "search" and "search_combined" in search:
            base = f"{float(search['before: ILIKE over base tables']['p50']):.1f} ms" if len(search) > 1 else "n/a"
            view = f"{float(search['search_combined']['p50']):.1f} ({float(search['search_combined']['p99']):.1f}) ms"
        a = api.get(endpoint)
        api_lat = f"{float(a['p50']):.1f} / {float(a['p99']):.1f}" if a else "n/a"
        api_rps = f"{a['rps']}" if a else "n/a"
        lines.append(f"{metric:<24}{before:>13}{target:>8}  {base:>16}{view:>18}{api_lat:>19}{api_rps:>11}")
    for change in ("nothing changed", "100 new upvotes", "+1 upvote on 5% of projects"):
        ms = [int(m["ms"].replace(",", "")) for m in refresh if m["change"] == change]
        if ms:
            feed = [int(m["ms"].replace(",", "")) for m in refresh
                    if m["change"] == change and m["view"] == "mv_feed_projects"]
            lines.append(f"MV refresh (avg), {change}: {sum(ms) / len(ms):,.0f} ms over {len(ms)} refreshes "
                         f"(guide target < 500 ms); mv_feed_projects {', '.join(f'{x:,}' for x in feed)} ms")
    if "hello" in api:
        lines.append(f"minimal Falcon (hello) on the same gunicorn: {api['hello']['rps']} req/s; "
                     + ", ".join(f"{n} {float(m['x']):.2f}x" for n, m in api.items() if n != "hello"))
    return lines


def compare(a_path: str, b_path: str) -> int:
    a, b = (json.loads(Path(p).read_text()) for p in (a_path, b_path))
    print(f"A: {a_path} (scale {a['scale']}, {a['started']})\nB: {b_path} (scale {b['scale']}, {b['started']})")
    a_db, b_db = a.get("database", {}), b.get("database", {})
    print(f"database: A {a_db.get('database_size')} seeded in {a_db.get('seed_seconds')} s; "
          f"B {b_db.get('database_size')} seeded in {b_db.get('seed_seconds')} s")
    b_steps = {s["name"]: s for s in b["steps"]}
    for step in a["steps"]:
        other = b_steps.get(step["name"])
        if other is None:
            print(f"\n== {step['name']}: only in A")
            continue
        print(f"\n== {step['name']}: A {step['seconds']:.0f} s exit {step['rc']}, B {other['seconds']:.0f} s "
              f"exit {other['rc']}")
        diff = difflib.unified_diff(step["output"], other["output"], "A", "B", n=0, lineterm="")
        for line in list(diff)[2:]:
            if not line.startswith("@@"):
                print(line)
    for name in set(b_steps) - {s["name"] for s in a["steps"]}:
        print(f"\n== {name}: only in B")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="seed one database and run every benchmark against it")
    r.add_argument("--quick", action="store_true", help="quick scale and short durations (a few minutes)")
    r.add_argument("--only", help="comma list of benchmarks to run (default: all)")
    r.add_argument("--database-url", help="a migrated database to use (seeded if empty); the benchmarks write to it")
    r.add_argument("--redis-url", help="a Redis database the benchmarks may use (required with --database-url)")
    c = sub.add_parser("compare", help="differences between two result files")
    c.add_argument("a")
    c.add_argument("b")
    m = sub.add_parser("summary", help="the guide's success-metrics table of a result file")
    m.add_argument("file")
    args = parser.parse_args(argv)
    if args.command == "run":
        return run(args)
    if args.command == "summary":
        for line in summary(json.loads(Path(args.file).read_text())):
            print(line)
        return 0
    return compare(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main())
