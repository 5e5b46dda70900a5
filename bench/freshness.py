"""Freshness under a steady write stream: how stale do the views get?

``python -m bench.freshness [--scale quick|bench] [--rate 200] [--duration 60] [--workers 2]``

Starts a private Postgres and Redis (or uses ``--database-url``/``--redis-url``),
migrates and seeds the scale, then runs the real engine as ``make up`` does:
``--workers`` refresh workers (``celery -A tasks worker -Q refresh -c 1``), one
worker for the sweep, and Celery Beat, with the production defaults (sweep
every SWEEP_INTERVAL = 2 s, lock TTL 60 s, the registry's debounce windows).
A writer commits upvotes and comments at ``--rate`` per second for
``--duration`` seconds, each in its own transaction, and records when each
commit returned. Afterwards each write is matched with mv_refresh_log:

    staleness(write, view) = completion of the first completed refresh of the
                             view that started after the write's commit
                             - the write's commit time

for every view that depends on the written table. Printed per view:
refreshes, refresh duration, staleness p50/p99/max, and two bounds:

* the design bound under a steady stream: max_wait + one refresh + one sweep.
  A stream that never pauses for the debounce window leaves the view due
  only by max_wait, so this is the bound that must hold;
* the issue's bound, debounce window + one refresh + one sweep, which holds
  only when writes pause for the window (it is printed, not assumed).

"No view starved": every view with writes was refreshed, and no write waited
longer than max_wait + sweep + the view's slowest refresh + 2 s hand-off slack.
"""

from __future__ import annotations

import argparse
import bisect
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2

from schema.db import raw_connection

ROOT = Path(__file__).resolve().parent.parent
TABLES = ("project_upvotes", "project_comments")


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(round(p / 100.0 * len(ordered) + 0.5))))
    return ordered[rank - 1]


@dataclass
class Write:
    table: str
    committed_at: float  # epoch seconds, taken right after COMMIT returned


@dataclass
class ViewReport:
    name: str
    debounce: float
    max_wait: float
    tables: set[str]
    refreshes: list[tuple[float, float, int]] = field(default_factory=list)  # (started, completed, duration_ms)
    statuses: dict[str, int] = field(default_factory=dict)
    staleness: list[float] = field(default_factory=list)
    unrefreshed: int = 0


@contextmanager
def private_servers(work: Path) -> Iterator[tuple[str, str]]:
    from deploy.embedded import EmbeddedPostgres, EmbeddedRedis, free_port

    pg = EmbeddedPostgres(work / "pg", free_port(), settings={"shared_buffers": "256MB"})
    redis = EmbeddedRedis(work / "redis", free_port())
    try:
        pg.start()
        redis.start()
        with raw_connection(pg.admin_url(), autocommit=True) as conn, conn.cursor() as cur:
            cur.execute("CREATE DATABASE bench_freshness")
        yield pg.admin_url("bench_freshness"), redis.url(0)
    finally:
        redis.stop()
        pg.destroy()


class Stack:
    """The engine's processes, as `make up` runs them (refresh workers, sweep worker, Beat)."""

    def __init__(self, env: dict[str, str], workers: int, log_dir: Path) -> None:
        self.env, self.log_dir = env, log_dir
        self.procs: list[subprocess.Popen] = []
        self.argvs = [["worker", "-Q", "refresh", "-n", f"refresh{i}@%h", "-c", "1"] for i in range(1, workers + 1)]
        self.argvs.append(["worker", "-Q", "default", "-n", "default@%h", "-c", "1"])
        self.argvs.append(["beat", "-s", str(log_dir / "celerybeat-schedule"), "--pidfile="])

    def start(self) -> None:
        for n, argv in enumerate(self.argvs):
            extra = ["--without-gossip", "--without-mingle"] if argv[0] == "worker" else []
            with (self.log_dir / f"proc{n}.log").open("ab") as log:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "celery", "-A", "tasks", *argv, *extra, "-l", "INFO"],
                    cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    def wait_ready(self, app, names: list[str], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = {name.split("@")[0] for reply in (app.control.ping(timeout=0.5) or []) for name in reply}
            if set(names) <= seen:
                return
        raise RuntimeError(f"workers {names} did not answer within {timeout} s; logs in {self.log_dir}")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def load_targets(url: str, rng: random.Random) -> tuple[list[str], list[str]]:
    with raw_connection(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT id::text FROM users WHERE NOT is_deleted ORDER BY id LIMIT 5000")
        users = [r[0] for r in cur.fetchall()]
        cur.execute("SELECT id::text FROM projects WHERE NOT is_deleted ORDER BY id LIMIT 5000")
        projects = [r[0] for r in cur.fetchall()]
    if not users or not projects:
        raise SystemExit("the database has no users or projects: seed it first")
    rng.shuffle(projects)
    return users, projects


def write_stream(url: str, rate: float, duration: float, rng: random.Random, writes: list[Write],
                 stop: threading.Event) -> None:
    """One write per transaction at ``rate`` per second (paced on a fixed schedule)."""
    users, projects = load_targets(url, rng)
    hot = projects[: max(1, len(projects) // 20)]  # a skew like real traffic: 5% of projects get half the writes
    conn = psycopg2.connect(url)
    cur = conn.cursor()
    start = time.monotonic()
    n = 0
    try:
        while not stop.is_set():
            due = start + n / rate
            now = time.monotonic()
            if due - start >= duration:
                break
            if due > now:
                time.sleep(due - now)
            project = rng.choice(hot) if rng.random() < 0.5 else rng.choice(projects)
            if rng.random() < 0.75:
                cur.execute("INSERT INTO project_upvotes (user_id, project_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                            (rng.choice(users), project))
                table = "project_upvotes"
            else:
                cur.execute("INSERT INTO project_comments (project_id, user_id, body) VALUES (%s, %s, %s)",
                            (project, rng.choice(users), f"bench comment {n}"))
                table = "project_comments"
            conn.commit()
            writes.append(Write(table, time.time()))
            n += 1
    finally:
        conn.close()


def read_views(url: str, since: float) -> dict[str, ViewReport]:
    with raw_connection(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT view_name, debounce_seconds, max_wait_seconds FROM mv_registry WHERE enabled ORDER BY refresh_order")
        views = {name: ViewReport(name, float(d), float(m), set()) for name, d, m in cur.fetchall()}
        cur.execute("SELECT view_name, table_name FROM mv_dependencies")
        for name, table in cur.fetchall():
            if name in views:
                views[name].tables.add(table)
        cur.execute(
            "SELECT view_name, status, extract(epoch FROM refresh_started_at), extract(epoch FROM refresh_completed_at), "
            "duration_ms FROM mv_refresh_log WHERE refresh_started_at >= to_timestamp(%s) ORDER BY refresh_started_at",
            (since,))
        for name, status, started, completed, ms in cur.fetchall():
            if name not in views:
                continue
            v = views[name]
            v.statuses[status] = v.statuses.get(status, 0) + 1
            if status == "completed":
                v.refreshes.append((float(started), float(completed), int(ms or 0)))
    return views


def quiescent(url: str) -> bool:
    with raw_connection(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM mv_refresh_queue WHERE enabled AND status IN ('pending', 'in_progress')")
        return cur.fetchone()[0] == 0


def match(views: dict[str, ViewReport], writes: list[Write]) -> None:
    for v in views.values():
        starts = [r[0] for r in v.refreshes]
        for w in writes:
            if w.table not in v.tables:
                continue
            i = bisect.bisect_right(starts, w.committed_at)
            if i == len(starts):
                v.unrefreshed += 1
            else:
                v.staleness.append(v.refreshes[i][1] - w.committed_at)


def conditions(args: argparse.Namespace, env: dict[str, str]) -> list[str]:
    load = os.getloadavg()
    return [
        f"scale={args.scale} rate={args.rate}/s duration={args.duration:.0f}s refresh workers={args.workers} (-c 1 each)"
        f" + 1 sweep worker + Beat",
        f"SWEEP_INTERVAL={env['SWEEP_INTERVAL']}s REFRESH_LOCK_TTL={env['REFRESH_LOCK_TTL']}s;"
        f" debounce/max_wait from mv_registry (the migrations' defaults unless --debounce/--max-wait)",
        f"machine: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start"
        " (shared: other processes may be using the CPUs)",
    ]


def run(args: argparse.Namespace, url: str, redis_url: str, log_dir: Path) -> int:
    from tasks.celery import create_app

    out = print
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DATABASE_", "REDIS_"))}
    env.update({"DATABASE_URL": url, "REDIS_URL": redis_url, "APP_ENV": "development", "PYTHONPATH": str(ROOT),
                "SWEEP_INTERVAL": str(args.sweep_interval), "REFRESH_LOCK_TTL": str(args.lock_ttl),
                "RECONCILIATION_JOB_ENABLED": "false"})
    with raw_connection(url, autocommit=True) as conn, conn.cursor() as cur:
        if args.debounce is not None:
            cur.execute("UPDATE mv_registry SET debounce_seconds = %s", (args.debounce,))
        if args.max_wait is not None:
            cur.execute("UPDATE mv_registry SET max_wait_seconds = greatest(%s, debounce_seconds)", (args.max_wait,))
    for line in conditions(args, env):
        out(line)
    from schema.settings import Settings

    app = create_app(Settings.from_env(env), main="bench-freshness")
    stack = Stack(env, args.workers, log_dir)
    writes: list[Write] = []
    stop = threading.Event()
    try:
        stack.start()
        stack.wait_ready(app, [f"refresh{i}" for i in range(1, args.workers + 1)] + ["default"])
        # Start from a clean state: whatever seeding left is refreshed first.
        deadline = time.monotonic() + 120
        while not quiescent(url) and time.monotonic() < deadline:
            time.sleep(0.5)
        t0 = time.time()
        writer = threading.Thread(target=write_stream,
                                  args=(url, args.rate, args.duration, random.Random(args.seed), writes, stop))
        writer.start()
        writer.join()
        t_end = time.time()
        achieved = len(writes) / max(1e-9, t_end - t0)
        out(f"writes: {len(writes)} in {t_end - t0:.1f} s = {achieved:.0f}/s (target {args.rate}/s)")
        views = read_views(url, t0 - 1)
        drain = max((v.max_wait for v in views.values()), default=30) + 3 * args.sweep_interval + 60
        deadline = time.monotonic() + drain
        while not quiescent(url) and time.monotonic() < deadline:
            time.sleep(0.5)
        out(f"drained in {time.time() - t_end:.1f} s after the last write")
    finally:
        stop.set()
        stack.stop()
        app.close()
    views = read_views(url, t0 - 1)
    match(views, writes)
    return report(views, args, out)


def report(views: dict[str, ViewReport], args: argparse.Namespace, out) -> int:
    sweep = args.sweep_interval
    header = (f"{'view':<26}{'deb':>5}{'max':>5}{'refr':>6}{'skip':>5}{'fail':>5}{'dur p50':>9}{'dur max':>9}"
              f"{'stale p50':>11}{'p99':>8}{'max':>8}{'bound A':>9}{'p99/A':>7}{'bound B':>9}{'p99/B':>7}")
    out("")
    out("durations and staleness in seconds; bound A = max_wait + refresh max + sweep (steady stream);")
    out("bound B = debounce + refresh max + sweep (the issue's check; needs pauses of one window)")
    out(header)
    ok = True
    starved: list[str] = []
    for v in views.values():
        if not v.tables & set(TABLES):
            continue
        durations = [ms / 1000 for _, _, ms in v.refreshes]
        dur_max = max(durations, default=0.0)
        a = v.max_wait + dur_max + sweep
        b = v.debounce + dur_max + sweep
        if not v.staleness:
            out(f"{v.name:<26} no refresh after any write ({v.unrefreshed} writes unrefreshed)")
            starved.append(v.name)
            ok = False
            continue
        p50, p99, worst = percentile(v.staleness, 50), percentile(v.staleness, 99), max(v.staleness)
        out(f"{v.name:<26}{v.debounce:>5.0f}{v.max_wait:>5.0f}{len(v.refreshes):>6}{v.statuses.get('skipped', 0):>5}"
            f"{v.statuses.get('failed', 0):>5}{percentile(durations, 50):>9.2f}{dur_max:>9.2f}"
            f"{p50:>11.2f}{p99:>8.2f}{worst:>8.2f}{a:>9.1f}{p99 / a:>7.2f}{b:>9.1f}{p99 / b:>7.2f}")
        if v.unrefreshed or worst > a + 2.0:
            starved.append(v.name)
        if p99 > a:
            ok = False
    out("")
    checks = [
        ("staleness p99 <= max_wait + one refresh + one sweep (A), every view", ok),
        ("no view starved (every write refreshed within A + 2 s)", not starved),
    ]
    stricter = all(percentile(v.staleness, 99) <= v.debounce + max((ms / 1000 for *_, ms in v.refreshes), default=0)
                   + sweep for v in views.values() if v.staleness)
    for label, passed in checks:
        out(f"[{'PASS' if passed else 'FAIL'}] {label}")
    same_bounds = all(v.debounce >= v.max_wait for v in views.values())
    why = ("the same bound as A (max_wait = debounce window)" if same_bounds else
           "can fail when max_wait > window under a stream that never pauses for the window; A bounds it then")
    out(f"[{'holds' if stricter else 'does not hold'}] staleness p99 <= debounce window + one refresh + one sweep (B):"
        f" {why}")
    if starved:
        out(f"starved: {', '.join(starved)}")
    return 0 if all(p for _, p in checks) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.freshness", description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=["quick", "bench", "demo"], default="quick")
    parser.add_argument("--rate", type=float, default=200.0, help="writes per second")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of writing")
    parser.add_argument("--workers", type=int, default=2, help="refresh worker processes")
    parser.add_argument("--sweep-interval", type=float, default=2.0)
    parser.add_argument("--lock-ttl", type=float, default=60.0)
    parser.add_argument("--debounce", type=float, default=None, help="override every view's debounce window")
    parser.add_argument("--max-wait", type=float, default=None, help="override every view's max wait")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--database-url", help="a migrated database (seeded at --scale if it has no users)")
    parser.add_argument("--redis-url", help="a Redis database this run may use (required with --database-url)")
    args = parser.parse_args(argv)
    print(f"== freshness under a steady write stream, scale {args.scale} ==")
    work = Path(tempfile.mkdtemp(prefix="bench-freshness-"))
    work.chmod(0o755)  # the postgres user must reach its data directory below
    try:
        if args.database_url:
            if not args.redis_url:
                parser.error("--redis-url is required with --database-url")
            _seed_if_empty(args.database_url, args.scale)
            return run(args, args.database_url, args.redis_url, work)
        with private_servers(work) as (url, redis_url):
            from schema.migrate import migrate

            migrate(url, out=lambda line: None)
            _seed_if_empty(url, args.scale)
            return run(args, url, redis_url, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _seed_if_empty(url: str, scale: str) -> None:
    with raw_connection(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM users")
        if cur.fetchone()[0]:
            return
    from schema.seed import seed

    started = time.monotonic()
    seed(url, scale, seed=42, out=lambda line: None)
    print(f"seeded scale {scale} in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
