"""Reconciliation run time: the nightly job at a given scale, clean and with drift, idle and under writes.

``python -m bench.reconciliation [--scale demo|quick|bench] [--database-url URL --redis-url URL]``

Without URLs it starts a private Postgres (fsync off) and a private Redis in a
temporary directory, migrates, seeds the scale, measures, removes everything.
With URLs it uses them as they are (seeding the database first only if it has
no users) and writes to them: it corrupts and repairs rows, and loads
``user:upvotes:*`` sets into that Redis. Never point it at production.

What it prints, all from one run:
* conditions (scale, row counts, server settings, load average: other work on
  the machine makes every figure noisy);
* the reference: one statement per table comparing the whole ``*_live`` view
  with ``*_truth_all()`` (what a quick job would do: one long snapshot, whole
  table in one query), and the batched job's time beside it (ratio);
* the job: clean with --no-auto-fix, clean with auto-fix (the nightly case),
  after corrupting a fraction of rows and Redis sets (report, then fix), and
  once more (must find 0);
* the write load with and without the job running beside it (ops/s ratio).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import redis as redis_lib
import sqlalchemy as sa

from schema.db import make_engine, raw_connection
from tasks.reconciliation import TABLES, ReconcileOptions, ReconcileResult, run_reconciliation

Out = Callable[[str], None]
REDIS_SETS_MAX = 20_000  # users whose set is loaded (a cache holds the active users, not all)


@contextmanager
def private_services(scale: str, out: Out) -> Iterator[tuple[str, str]]:
    from deploy.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
    from schema.migrate import migrate
    from schema.seed import seed

    work = Path(tempfile.mkdtemp(prefix="bench-recon-"))
    work.chmod(0o755)  # the postgres user must reach its data directory below
    pg = EmbeddedPostgres(work / "pg", free_port(), settings={"fsync": "off", "synchronous_commit": "off"})
    rd = EmbeddedRedis(work / "redis", free_port())
    try:
        pg.start()
        rd.start()
        with raw_connection(pg.admin_url(), autocommit=True) as conn, conn.cursor() as cur:
            cur.execute("CREATE DATABASE bench_recon")
        url = pg.admin_url("bench_recon")
        migrate(url, out=lambda line: None)
        started = time.monotonic()
        seed(url, scale, seed=42, out=lambda line: None)
        out(f"seeded scale {scale} in {time.monotonic() - started:.0f} s (private cluster, fsync off)")
        yield url, rd.url(0)
    finally:
        rd.stop()
        pg.destroy()
        shutil.rmtree(work, ignore_errors=True)


def conditions(engine: sa.Engine, out: Out) -> None:
    with engine.connect() as conn:
        # Table names come from the TABLES registry and literals here, never from input.
        counts = {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar()  # noqa: S608
                  for t in (*TABLES, "project_upvotes", "messages", "intro_requests")}
        settings = dict(conn.execute(sa.text(
            "SELECT name, setting || coalesce(unit, '') FROM pg_settings "
            "WHERE name IN ('server_version', 'shared_buffers', 'fsync', 'synchronous_commit', 'jit')")).all())
    out(f"machine: {platform.machine()} {os.cpu_count()} cpu, python {platform.python_version()}, "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} (other work on this machine adds noise)")
    out("postgres: " + ", ".join(f"{k}={v}" for k, v in sorted(settings.items())))
    out("rows: " + ", ".join(f"{k}={v:,}" for k, v in counts.items()))


def load_redis(engine: sa.Engine, client: redis_lib.Redis, limit: int) -> int:
    """Complete sets for up to ``limit`` users, installed the way api/cache.py installs them."""
    with engine.connect() as conn:
        users = [str(u) for u in conn.execute(sa.text("SELECT id FROM users ORDER BY id LIMIT :n"), {"n": limit})
                 .scalars()]
        rows = conn.execute(sa.text(
            "SELECT user_id::text, project_id::text FROM project_upvotes WHERE user_id = ANY(CAST(:ids AS uuid[]))"),
            {"ids": users}).all()
    sets: dict[str, list[str]] = {u: [] for u in users}
    for u, p in rows:
        sets[u].append(p)
    pipe = client.pipeline(transaction=False)
    for i, (u, members) in enumerate(sets.items()):
        if members:
            pipe.sadd(f"user:upvotes:{u}", *members)
        pipe.set(f"user:upvotes:{u}:complete", "1")
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()
    return len(sets)


def reference_compare(engine: sa.Engine) -> dict[str, tuple[float, int]]:
    """Seconds and differing rows of a one-statement whole-table compare, per table."""
    result = {}
    with engine.connect() as conn:
        for name, spec in TABLES.items():
            cols = ", ".join((spec.key_column, *spec.columns))
            started = time.perf_counter()
            # Names come from the TABLES registry, never from input.
            n = conn.execute(sa.text(
                f"SELECT count(*) FROM ((SELECT {cols} FROM {name}_live EXCEPT SELECT {cols} FROM {name}_truth_all()) "  # noqa: S608
                f"UNION ALL (SELECT {cols} FROM {name}_truth_all() EXCEPT SELECT {cols} FROM {name}_live)) d"
            )).scalar()
            result[name] = (time.perf_counter() - started, int(n))
            conn.commit()
    return result


def corrupt(engine: sa.Engine, client: redis_lib.Redis, fraction: float, rng: random.Random) -> int:
    """Move one counter of ``fraction`` of the rows of each table and of the Redis sets; returns how many."""
    n = 0
    with engine.begin() as conn:
        for name, spec in TABLES.items():
            col = next(c for c in spec.columns if not c.startswith(("user1_id", "user2_id", "is_deleted")))
            # Names come from the TABLES registry, never from input.
            n += conn.execute(sa.text(
                f"UPDATE {name} SET {col} = {col} + 1 WHERE {spec.key_column} IN "  # noqa: S608
                f"(SELECT {spec.key_column} FROM {name} TABLESAMPLE BERNOULLI (:pct) REPEATABLE (:seed))"),
                {"pct": fraction * 100, "seed": rng.randrange(1 << 30)}).rowcount
    users = [k[len("user:upvotes:"):-len(":complete")] for k in client.scan_iter(match="user:upvotes:*:complete",
                                                                                 count=1000)]
    for u in rng.sample(users, int(len(users) * fraction)):
        client.sadd(f"user:upvotes:{u}", str(uuid.uuid4()))
        n += 1
    return n


def timed_run(engine: sa.Engine, client: redis_lib.Redis, **options: object) -> ReconcileResult:
    return run_reconciliation(engine, client, ReconcileOptions(source="bench", **options), out=lambda line: None)


def write_load(url: str, seconds: float, writers: int, during: Callable[[], None] | None) -> float:
    """Upvote toggles on random projects from ``writers`` threads; ops/s (``during`` runs meanwhile)."""
    with raw_connection(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT id::text FROM users ORDER BY random() LIMIT 500")
        users = [r[0] for r in cur.fetchall()]
        cur.execute("SELECT id::text FROM projects WHERE NOT is_deleted ORDER BY random() LIMIT 500")
        projects = [r[0] for r in cur.fetchall()]
    stop = threading.Event()
    ops = [0] * writers

    def writer(i: int) -> None:
        rng = random.Random(i)
        with raw_connection(url, autocommit=True) as conn, conn.cursor() as cur:
            while not stop.is_set():
                u, p = rng.choice(users), rng.choice(projects)
                if rng.random() < 0.5:
                    cur.execute("INSERT INTO project_upvotes (user_id, project_id) VALUES (%s, %s) "
                                "ON CONFLICT DO NOTHING", (u, p))
                else:
                    cur.execute("DELETE FROM project_upvotes WHERE user_id = %s AND project_id = %s", (u, p))
                ops[i] += 1

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
    started = time.monotonic()
    for t in threads:
        t.start()
    side: threading.Thread | None = None
    if during is not None:
        def loop() -> None:
            while not stop.is_set():
                during()
        side = threading.Thread(target=loop)
        side.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    if side is not None:
        side.join()
    return sum(ops) / elapsed


def measure(url: str, redis_url: str, *, fraction: float, load_seconds: float, writers: int, out: Out) -> None:
    engine = make_engine(url, pool_size=4, application_name="bench-reconcile")
    client = redis_lib.Redis.from_url(redis_url, decode_responses=True)
    rng = random.Random(42)
    try:
        conditions(engine, out)
        started = time.monotonic()
        loaded = load_redis(engine, client, REDIS_SETS_MAX)
        out(f"redis: loaded {loaded:,} complete user:upvotes sets in {time.monotonic() - started:.1f} s")
        timed_run(engine, client, auto_fix=False)  # warm the caches: every figure below is warm

        out("")
        ref = reference_compare(engine)
        clean_report = timed_run(engine, client, auto_fix=False)
        clean_fix = timed_run(engine, client, auto_fix=True)
        n_bad = corrupt(engine, client, fraction, rng)
        bad_report = timed_run(engine, client, auto_fix=False)
        bad_fix = timed_run(engine, client, auto_fix=True)
        after = timed_run(engine, client, auto_fix=True)

        out(f"{'table':<30}{'rows':>9}{'one statement s':>17}{'job (clean, fix) s':>20}{'job/one':>9}"
            f"{'job rows/s':>12}")
        for name in TABLES:
            part = clean_fix.parts[name]
            ref_s, ref_n = ref[name]
            out(f"{name:<30}{part.rows_checked:>9,}{ref_s:>17.3f}{part.seconds:>20.3f}"
                f"{part.seconds / ref_s if ref_s else 0:>8.1f}x{part.rows_checked / part.seconds:>12,.0f}")
        rp = clean_fix.parts["redis"]
        out(f"{'redis user:upvotes sets':<30}{rp.rows_checked:>9,}{'-':>17}{rp.seconds:>20.3f}{'':>9}"
            f"{rp.rows_checked / rp.seconds if rp.seconds else 0:>12,.0f}")
        out("(one statement: whole *_live view EXCEPT *_truth_all() both ways, one snapshot held throughout; "
            "the job: batches of 1,000 keys, a snapshot each)")
        out("")
        out(f"{'full run':<44}{'seconds':>9}{'rows':>9}{'found':>8}{'fixed':>8}{'vs clean':>10}")
        base = clean_fix.seconds
        for label, r in (("clean, --no-auto-fix", clean_report), ("clean, auto-fix (the nightly case)", clean_fix),
                         (f"{n_bad:,} corrupted ({fraction:.1%}), --no-auto-fix", bad_report),
                         (f"{n_bad:,} corrupted ({fraction:.1%}), auto-fix", bad_fix),
                         ("after the fix, auto-fix", after)):
            out(f"{label:<44}{r.seconds:>9.2f}{r.rows_checked:>9,}{r.found:>8,}{r.fixed:>8,}{r.seconds / base:>9.2f}x")
        out(f"(Redis differences are confirmed after {ReconcileOptions().redis_confirm_seconds:g} s, "
            "once per batch that has any: that wait is part of the corrupted runs' time)")
        if after.found or bad_fix.unfixed or bad_report.found != bad_fix.found:
            out(f"WARNING: expected the fix to clear everything: report found {bad_report.found}, "
                f"fix found {bad_fix.found} fixed {bad_fix.fixed}, next run found {after.found}")

        if load_seconds > 0:
            out("")
            durations: list[float] = []

            def job() -> None:
                durations.append(timed_run(engine, client, auto_fix=True, tables=tuple(TABLES)).seconds)

            alone = write_load(url, load_seconds, writers, None)
            beside = write_load(url, load_seconds, writers, job)
            idle = min(timed_run(engine, client, auto_fix=True, tables=tuple(TABLES)).seconds for _ in range(2))
            out(f"write load: {writers} threads toggling upvotes on 500 projects, {load_seconds:g} s each way")
            out(f"  writes alone            {alone:>9,.0f} ops/s")
            out(f"  writes beside the job   {beside:>9,.0f} ops/s   ({beside / alone:.2f}x)")
            if durations:
                out(f"  job (tables only) under load: {len(durations)} runs, "
                    f"median {sorted(durations)[len(durations) // 2]:.2f} s vs {idle:.2f} s idle "
                    f"({sorted(durations)[len(durations) // 2] / idle:.1f}x)")
            found = timed_run(engine, client, auto_fix=False, tables=tuple(TABLES))
            out(f"  after the load: a report-only run of the tables found {found.found} discrepancies "
                "(the Redis sets are stale by construction: these writes bypassed the API's cache updates)")
    finally:
        engine.dispose()
        client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reconciliation", description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=["demo", "quick", "bench"], default="quick")
    parser.add_argument("--database-url", help="a migrated database it may corrupt and repair")
    parser.add_argument("--redis-url", help="a Redis database it may fill with user:upvotes sets")
    parser.add_argument("--corrupt-fraction", type=float, default=0.01)
    parser.add_argument("--load-seconds", type=float, default=5.0, help="0 skips the write-load section")
    parser.add_argument("--writers", type=int, default=4)
    args = parser.parse_args(argv)
    out = print
    out(f"== reconciliation, scale {args.scale} ==")
    kwargs = {"fraction": args.corrupt_fraction, "load_seconds": args.load_seconds, "writers": args.writers, "out": out}
    if args.database_url or args.redis_url:
        if not (args.database_url and args.redis_url):
            parser.error("--database-url and --redis-url go together")
        with raw_connection(args.database_url) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM users")
            empty = cur.fetchone()[0] == 0
        if empty:
            from schema.seed import seed

            seed(args.database_url, args.scale, seed=42, out=lambda line: None)
        measure(args.database_url, args.redis_url, **kwargs)
        return 0
    with private_services(args.scale, out) as (url, redis_url):
        measure(url, redis_url, **kwargs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
