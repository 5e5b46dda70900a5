"""``python -m bench run [--quick]``: the guide's Success Metrics table, filled by one command.

On a private Postgres cluster it creates (fsync on, pg_stat_statements and
track_commit_timestamp on) and a private Redis, it seeds the scale (bench:
100k users, 500k projects, 5M upvotes; quick: 1/20 of that), starts the product
as ``make up`` does (bench/product.py) and measures, in this order:

  before    each page of the table (feed, leaderboard, dashboard, search) over HTTP
            from a bench-only app that computes it from the base tables
            (bench/before_app.py), one client connection: p50/p99 per page; the
            guide's cache hit ratio over that phase
  actual    the same pages, same inputs, through the product's API on gunicorn
  scenario  the guide's load test: virtual users (one connection each) that load
            the feed and wait ~1 s, ramped up step by step until a step fails
            (p99 >= 200 ms or any error), held at the highest passing step, ramped
            down (bench/wrk/users.lua)
  mixed     signed-in feed, leaderboard, dashboard, search and 5% upvote toggles
            (bench/wrk/mixed.lua), closed loop, at N gunicorn workers, N+1, and N
            again (what one more worker adds); py-spy samples the API at N
  after     the guide's cache hit ratio and MV refresh average, slow queries, and
            staleness per view of the mixed profile's writes (bench/freshness.py's
            matching: commit -> completion of the first refresh started after it)

It prints the table (Before, Target, Actual, Before/Actual), the load test, the
conditions, and writes bench/results/<timestamp>.json and .png
(bench/results.py). Phase durations are fixed per mode (FULL, QUICK, printed
at the start); flags can shorten them, and the output says so.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench import loadgen, profile, report, results
from bench.api_load import SECRET, prepare_inputs, write_lines
from bench.freshness import Write, match, quiescent, read_views
from bench.freshness import percentile as nearest_rank
from bench.product import ProductStack
from deploy.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from schema.db import load_queries, make_engine, raw_connection
from schema.migrate import migrate

ROOT = Path(__file__).resolve().parent.parent
SQL = load_queries(Path(__file__).with_name("queries.sql"))
PAGES = results.PAGES


@dataclass(frozen=True)
class Durations:
    """Seconds of each measured phase; the plan of one mode."""

    scale: str
    page_s: float  # Actual column: wrk, one connection, per page
    before_min_s: float  # Before column: per page, long enough for before_samples requests,
    before_max_s: float  # within these bounds (one base-table feed can take seconds at bench scale)
    before_samples: int
    warmup_s: float  # before every measured wrk run of the product
    ramp: tuple[int, ...]  # virtual users per ramp step (capped by the machine, see main)
    step_s: float
    hold_s: float
    mixed_s: float  # mixed profile, per worker count
    mixed_connections: int
    profile_s: float  # py-spy, a separate mixed run


FULL = Durations(scale="bench", page_s=15, before_min_s=10, before_max_s=30, before_samples=15, warmup_s=3,
                 ramp=(250, 500, 1000, 1500, 2000, 2500, 3000, 4000, 5000), step_s=10, hold_s=45, mixed_s=40,
                 mixed_connections=64, profile_s=12)
QUICK = Durations(scale="quick", page_s=8, before_min_s=5, before_max_s=20, before_samples=15, warmup_s=2,
                  ramp=(100, 250, 500, 1000, 1500, 2000, 3000), step_s=6, hold_s=15, mixed_s=20,
                  mixed_connections=64, profile_s=8)
GUIDE_USERS = 5000
PAGE_PATHS = {"feed": "/api/projects", "leaderboard": "/api/leaderboard/projects", "dashboard": "/api/dashboard",
              "search": "/api/search?q=..."}


class Clock:
    """Progress lines with the elapsed time, and the wall time of each phase."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.phases: dict[str, float] = {}
        self._phase: tuple[str, float] | None = None

    def say(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.0f}s] {msg}", flush=True)

    def phase(self, name: str, msg: str) -> None:
        self.end_phase()
        self._phase = (name, time.monotonic())
        self.say(f"== {name}: {msg}")

    def end_phase(self) -> None:
        if self._phase:
            name, start = self._phase
            self.phases[name] = round(time.monotonic() - start, 1)
            self._phase = None


def _shared_buffers() -> str:
    """A quarter of the machine's memory (the usual advice), between 128MB and 4GB."""
    try:
        total_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20)
    except (ValueError, OSError):
        total_mb = 4096
    return f"{max(128, min(4096, total_mb // 4))}MB"


def _one(engine: sa.Engine, name: str, params: dict | None = None) -> list[Any]:
    """Rows of a named query of bench/queries.sql ([] for a statement that returns none)."""
    with engine.begin() as conn:
        result = conn.execute(SQL[name], params or {})
        return result.all() if result.returns_rows else []


def probe_seconds(url: str, token: str | None) -> float:
    """Wall time of one request (the Before pages' duration is sized from it)."""
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    started = time.perf_counter()
    with urllib.request.urlopen(req, timeout=300) as resp:
        resp.read()
    return time.perf_counter() - started


def cache_hit(engine: sa.Engine) -> dict[str, float | None]:
    """The guide's cache hit ratio query; None when nothing was read at all (0/0)."""
    try:
        heap_read, heap_hit, ratio = _one(engine, "cache_hit_ratio")[0]
    except sa.exc.DataError:  # division by zero: no block touched since the reset
        return {"heap_read": 0, "heap_hit": 0, "ratio": None}
    return {"heap_read": int(heap_read or 0), "heap_hit": int(heap_hit or 0),
            "ratio": float(ratio) if ratio is not None else None}


def conditions(engine: sa.Engine, args: argparse.Namespace, plan: Durations, stack: ProductStack,
               rows: dict[str, int], seed_s: float, gunicorn: dict, users_cap: dict) -> dict[str, Any]:
    settings = dict(_one(engine, "server_settings"))
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()[:1]
    load = os.getloadavg()
    return {
        "machine": f"{platform.processor() or platform.machine()}, {platform.platform()}",
        "cpu_count": os.cpu_count(),
        "memory_mb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20),
        "load_average_at_start": [round(x, 2) for x in args.load_at_start],
        "load_average_at_end": [round(x, 2) for x in load],
        "python": platform.python_version(),
        "postgres": settings,
        "database_size": _one(engine, "database_size")[0][0],
        "scale": plan.scale,
        "rows": rows,
        "seed_seconds": round(seed_s, 1),
        "gunicorn": gunicorn,
        "processes": {name: stack.command(name) for name in ("api", "worker-refresh", "worker-default", "beat")},
        "not_started": "flower (monitoring only); RECONCILIATION_JOB_ENABLED=false (no 03:00 run mid-bench)",
        "client": {
            "tool": " ".join(wrk_version), "same_machine_as_server": True,
            "table": "wrk -t1 -c1 (one connection), signed in as one of 200 users; search: 20,000 distinct "
                     "two-word queries (mostly page-cache misses)",
            "scenario": "bench/wrk/users.lua: anonymous GET /api/projects, then a wait uniform in 0.5-1.5 s; "
                        "per step two wrk -t2 runs: the bulk of the users, and 50 probe users started 3 s later "
                        "whose requests give the latency (wrk opens a run's connections at once); req/s and "
                        "errors of both",
            "mixed": f"wrk -t2 -c{plan.mixed_connections}, bench/wrk/mixed.lua, closed loop: feed 40%, "
                     "leaderboard 20%, dashboard 20%, search 15% (150 queries), upvote toggle 5%",
        },
        "users_cap": users_cap,
        "durations": asdict(plan),
        "durations_shortened": args.shortened,
        "fd_limit": loadgen.fd_capacity() + loadgen.FD_MARGIN,
    }


def staleness(url: str, engine: sa.Engine, since: float, until: float) -> tuple[dict, dict]:
    """Per view: staleness p50/p99/max of the window's upvote writes, and (t, s) points for the plot."""
    with engine.begin() as conn:
        times = [float(t) for (t,) in conn.execute(SQL["upvote_commit_times"], {"since": since, "until": until})]
    writes = [Write("project_upvotes", t) for t in times]
    views = read_views(url, since - 1)
    match(views, writes)
    per_view, series = {}, {}
    for v in views.values():
        if "project_upvotes" not in v.tables:
            continue
        durations = [ms for *_, ms in v.refreshes]
        per_view[v.name] = {
            "writes": len(v.staleness) + v.unrefreshed, "unrefreshed": v.unrefreshed, "refreshes": len(v.refreshes),
            "refresh_ms_p50": nearest_rank(durations, 50) if durations else None,
            "p50": nearest_rank(v.staleness, 50) if v.staleness else None,
            "p99": nearest_rank(v.staleness, 99) if v.staleness else None,
            "max": max(v.staleness) if v.staleness else None,
            "debounce_s": v.debounce, "max_wait_s": v.max_wait,
        }
        # match() walks the writes in commit order and stops matching at the first write no refresh
        # followed (refresh starts are sorted), so the first len(staleness) writes are the matched ones.
        step = max(1, len(v.staleness) // 1500)  # keep the plot data small
        series[v.name] = [(round(t - since, 3), round(s, 3))
                          for t, s in list(zip(times, v.staleness, strict=False))[::step]]
    return per_view, series


def page_entry(page: str, before: loadgen.WrkStats, actual: loadgen.WrkStats) -> dict[str, Any]:
    return {
        "path": PAGE_PATHS[page],
        "before": {"p50": before.p50_ms, "p99": before.p99_ms, "requests": before.requests,
                   "errors": before.error_count, "seconds": round(before.duration_s, 1)},
        "actual": {"p50": actual.p50_ms, "p99": actual.p99_ms, "requests": actual.requests,
                   "errors": actual.error_count, "seconds": round(actual.duration_s, 1)},
        "target": report.TARGETS_MS[page],
        "ratio_p50": before.p50_ms / actual.p50_ms if actual.p50_ms else None,
        "ratio_p99": before.p99_ms / actual.p99_ms if actual.p99_ms else None,
    }


def run(args: argparse.Namespace) -> int:
    plan = QUICK if args.quick else FULL
    plan = replace(plan, **{k: v for k, v in args.overrides.items() if v is not None})
    clock = Clock()
    started_at = dt.datetime.now(dt.UTC)
    stamp = started_at.strftime("%Y%m%dT%H%M%SZ") + ("-quick" if args.quick else "")
    out_dir = Path(args.results_dir) if args.results_dir else results.RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    args.load_at_start = os.getloadavg()
    loadgen.raise_fd_limit()
    report.print_plan(plan, args, clock.say)
    work = Path(tempfile.mkdtemp(prefix="bench-run-"))
    work.chmod(0o755)  # the postgres user must reach its data directory below
    pg = redis = stack = engine = None
    try:
        # ---------------------------------------------------------------- servers and data
        clock.phase("setup", "private Postgres (fsync on) and Redis, migrations")
        shared_buffers = args.shared_buffers or _shared_buffers()
        pg = EmbeddedPostgres(work / "pg", free_port(), settings={
            "shared_buffers": shared_buffers, "track_commit_timestamp": "on", "max_connections": "300"})
        pg.start()
        redis = EmbeddedRedis(work / "redis", free_port())
        redis.start()
        with raw_connection(pg.admin_url(), autocommit=True) as conn, conn.cursor() as cur:
            cur.execute("CREATE DATABASE bench")
        url = pg.admin_url("bench")
        migrate(url, out=lambda line: None)
        engine = make_engine(url, pool_size=2, application_name="bench-run")
        _one(engine, "create_pg_stat_statements")
        clock.phase("seed", f"python -m schema seed --scale {plan.scale}")
        from schema.seed import seed

        t_seed = time.monotonic()
        seed(url, plan.scale, seed=42, out=lambda line: clock.say(f"  {line}"))
        seed_s = time.monotonic() - t_seed
        rows = dict(_one(engine, "row_counts"))

        # ---------------------------------------------------------------- the product
        clock.phase("start", "the product as `make up` runs it (gunicorn API, refresh + default workers, Beat)")
        env = {k: v for k, v in os.environ.items()
               if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "API_HOST",
                            "API_PORT", "JWT_SECRET", "APP_ENV", "MV_REFRESH_WORKER_ENABLED"}}
        env.update({"DATABASE_URL": url, "REDIS_URL": redis.url(0), "JWT_SECRET": SECRET, "APP_ENV": "production",
                    "API_HOST": "127.0.0.1", "MV_REFRESH_WORKER_ENABLED": "true",
                    "RECONCILIATION_JOB_ENABLED": "false", "PYTHONPATH": str(ROOT),
                    "GUNICORN_CMD_ARGS": "--log-level warning"})
        from schema.settings import Settings
        from tasks.celery import create_app as celery_app

        settings = Settings.from_env(env)
        workers = args.workers or settings.gunicorn_workers
        stack = ProductStack(env, work)
        app = celery_app(settings, main="bench-run")
        stack.start_workers()
        stack.wait_workers(app)
        app.close()
        stack.start_api(workers)
        clock.say(f"API on {stack.api_base} ({workers} workers x {settings.gunicorn_threads} threads, "
                  f"{settings.gunicorn_worker_class}); workers and Beat answering")
        inputs = prepare_inputs(engine, work)
        tokens = inputs["feed_signed"][1]
        page_inputs = {"feed": inputs["feed_signed"], "leaderboard": (
            write_lines(work / "lb_signed.txt", ["/api/leaderboard/projects"]), tokens),
            "dashboard": inputs["dashboard"], "search": (inputs["search_cold"][0], tokens)}
        upvotes = write_lines(work / "upvotes.txt", [p.strip() + "/upvote" for p in
                                                     inputs["details"][0].read_text().splitlines() if p.strip()])
        token_list = tokens.read_text().split()
        first_user = _first_user(engine)

        # ---------------------------------------------------------------- Before
        clock.phase("before", "the pages computed from the base tables (bench/before_app.py), one connection")
        _one(engine, "reset_statistics")
        stack.start_before()
        before: dict[str, loadgen.WrkStats] = {}
        for page in PAGES:
            paths, toks = page_inputs[page]
            first_path = paths.read_text().split()[0]
            t = probe_seconds(stack.before_base + first_path, token_list[0])
            # Long enough for before_samples requests within the bounds, and for three in any case.
            seconds = max(min(plan.before_max_s, max(plan.before_min_s, plan.before_samples * t)), 3 * t + 1)
            before[page] = loadgen.run_wrk(stack.before_base, "pages.lua", [str(paths), str(toks)], label=page,
                                           connections=1, threads=1, duration=seconds, timeout_s=300)
            clock.say(f"  before  {before[page].line()}")
        hit_before = cache_hit(engine)
        stack.stop_before()

        # ---------------------------------------------------------------- Actual
        clock.phase("actual", "the same pages through the product's API, one connection")
        _one(engine, "reset_statistics")
        _one(engine, "reset_statements")
        actual: dict[str, loadgen.WrkStats] = {}
        for page in PAGES:
            paths, toks = page_inputs[page]
            wrk_args = [str(paths), str(toks)]
            loadgen.run_wrk(stack.api_base, "pages.lua", wrk_args, label="warm-up", connections=1, threads=1,
                            duration=plan.warmup_s)
            actual[page] = loadgen.run_wrk(stack.api_base, "pages.lua", wrk_args, label=page, connections=1,
                                           threads=1, duration=plan.page_s)
            clock.say(f"  actual  {actual[page].line()}")

        # ---------------------------------------------------------------- the guide's scenario
        gunicorn = report.gunicorn_facts(settings, workers)
        users_cap = {"guide": GUIDE_USERS, "fd_capacity": loadgen.fd_capacity(),
                     "server_connections": workers * gunicorn["worker_connections"]}
        cap = min(GUIDE_USERS, users_cap["fd_capacity"], args.max_users or GUIDE_USERS)
        ramp = [u for u in plan.ramp if u <= cap] or [cap]
        users_cap["tried_up_to"] = ramp[-1]
        clock.phase("scenario", f"virtual users on the feed, ~1 s think time; ramp {ramp} x {plan.step_s:.0f} s, "
                                f"hold {plan.hold_s:.0f} s, ramp down")
        scenario = loadgen.Scenario(ramp=ramp, step_s=plan.step_s, hold_s=plan.hold_s)
        scenario.run(lambda phase, users, seconds: loadgen.users_step(stack.api_base, users, seconds), clock.say)

        # ---------------------------------------------------------------- mixed profile
        clock.phase("mixed", f"mixed profile, {plan.mixed_connections} connections, closed loop, "
                             f"{plan.mixed_s:.0f} s at {workers}, {workers + 1}, then {workers} workers again")
        mixed_args = [str(tokens), str(inputs["search"][0]), str(upvotes)]
        t_mixed0 = time.time()
        windows = []

        def mixed(label: str, seconds: float) -> loadgen.WrkStats:
            loadgen.run_wrk(stack.api_base, "mixed.lua", mixed_args, label="warm-up",
                            connections=plan.mixed_connections, duration=plan.warmup_s)
            start = time.time()
            stats = loadgen.run_wrk(stack.api_base, "mixed.lua", mixed_args, label=label,
                                    connections=plan.mixed_connections, duration=seconds)
            windows.append((round(start - t_mixed0, 1), round(time.time() - t_mixed0, 1), label))
            clock.say(f"  {stats.line()}")
            return stats

        mixed_n = mixed(f"mixed, {workers} workers", plan.mixed_s)
        prof: dict[str, Any] = {"samples": 0, "skipped": "--profile-seconds 0" if plan.profile_s <= 0 else
                                "py-spy not installed (pip install -r requirements-dev.txt)"}
        if plan.profile_s > 0 and profile.pyspy_path():
            spies = profile.start_pyspy(stack.api_worker_pids(), plan.profile_s + 1, out_dir, stamp)
            start = time.time()
            loadgen.run_wrk(stack.api_base, "mixed.lua", mixed_args, label="profiled", duration=plan.profile_s,
                            connections=plan.mixed_connections)
            windows.append((round(start - t_mixed0, 1), round(time.time() - t_mixed0, 1), "py-spy"))
            errors = [p.communicate(timeout=60)[1].strip() for p, _ in spies]
            prof = profile.summarize([path for _, path in spies])
            if not prof["samples"]:
                prof["skipped"] = "; ".join(e for e in errors if e)[:300] or "no samples"
        # A-B-A: the refreshes the writes cause (every max_wait, ~30 s) take CPU from whichever run
        # they fall in; measuring N before and after N+1 keeps that from favouring one side.
        stack.start_api(workers + 1)
        mixed_n1 = mixed(f"mixed, {workers + 1} workers", plan.mixed_s)
        stack.start_api(workers)
        mixed_again = mixed(f"mixed, {workers} again", plan.mixed_s)
        t_mixed1 = time.time()

        # ---------------------------------------------------------------- after the load test
        clock.phase("drain", "until no view has a pending or running refresh")
        deadline = time.monotonic() + args.drain_timeout
        while not quiescent(url) and time.monotonic() < deadline:
            time.sleep(0.5)
        clock.phase("after", "the guide's queries; staleness of the mixed profile's writes; EXPLAIN")
        hit_actual = cache_hit(engine)
        refresh_rows = [(v, float(avg), int(n)) for v, avg, n in _one(engine, "mv_refresh_avg")]
        engine_rows = [(v, float(avg), int(n)) for v, avg, n in _one(engine, "mv_refresh_avg_engine")]
        slow = [(int(c), float(m), " ".join(q.split())) for c, m, q in _one(engine, "slow_queries")]
        per_view, series = staleness(url, engine, t_mixed0, t_mixed1)
        slowest = max(PAGES, key=lambda p: actual[p].p99_ms)
        q = inputs["search_cold"][0].read_text().split()[0].split("q=", 1)[1]
        explain = profile.explain_page(engine, slowest, first_user, urllib.parse.unquote(q))
        clock.phase("stop", "the product's processes")
        stack.stop()

        # ---------------------------------------------------------------- report
        clock.end_phase()
        stale_p99 = [v["p99"] for v in per_view.values() if v["p99"] is not None]
        result: dict[str, Any] = {
            "version": 1, "started_at": started_at.isoformat(timespec="seconds"),
            "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "quick": bool(args.quick), "scale": plan.scale, "durations_shortened": args.shortened,
            **{f"{p}_ms": page_entry(p, before[p], actual[p]) for p in PAGES},
            "targets": {**report.TARGETS_MS, "cache_hit_rate": 95, "peak_concurrent_users": GUIDE_USERS,
                        "mv_refresh_avg_ms": 500},
            "guide_before": report.GUIDE_BEFORE,
            "cache_hit_rate": hit_actual["ratio"], "cache_hit_rate_before": hit_before["ratio"],
            "cache_hit": {"before_pages": hit_before, "after_load": hit_actual},
            "peak_concurrent_users": scenario.peak,
            "mv_refresh_avg_ms": _weighted(refresh_rows),
            "mv_refresh_by_view": {v: {"avg_ms": avg, "count": n} for v, avg, n in refresh_rows},
            "mv_refresh_avg_ms_engine": _weighted(engine_rows),
            "mv_refresh_by_view_engine": {v: {"avg_ms": avg, "count": n} for v, avg, n in engine_rows},
            "staleness_p99_s": max(stale_p99) if stale_p99 else None,
            "staleness": per_view, "staleness_series": series, "load_windows": windows,
            "load": {
                "workers": workers,
                "scenario": {"steps": scenario.steps, "peak": scenario.peak, "note": scenario.peak_note,
                             "ramp": ramp, "users_cap": users_cap},
                "mixed": mixed_n.as_dict(), "mixed_plus_one": mixed_n1.as_dict(), "mixed_again": mixed_again.as_dict(),
                "rps_per_added_worker": mixed_n1.rps - (mixed_n.rps + mixed_again.rps) / 2,
            },
            "slow_queries": [{"calls": c, "mean_ms": m, "query": q[:300]} for c, m, q in slow],
            "explain": {"page": slowest, "plan": explain},
            "profile": prof,
            "phases_s": clock.phases,
        }
        result["conditions"] = conditions(engine, args, plan, stack, rows, seed_s, gunicorn, users_cap)
        if args.quick:
            slowest_refresh_ms = max((v["avg_ms"] for v in result["mv_refresh_by_view_engine"].values()), default=0.0)
            result["estimate_full_s"] = report.estimate_full(clock.phases, FULL, QUICK, slowest_refresh_ms / 1000)
        report.print_all(result, clock.say)
        path = results.write(result, stamp, out_dir)
        png = results.plot(result, out_dir / f"{stamp}.png")
        missing = results.problems(result)
        print(f"\nresult: {path}\nplot:   {png}")
        if missing:
            print(f"bench: the result is incomplete: {'; '.join(missing)}", file=sys.stderr)
            return 1
        return 0
    finally:
        if stack is not None:
            stack.stop()
        if engine is not None:
            engine.dispose()
        if redis is not None:
            redis.stop()
        if pg is not None:
            pg.destroy()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _weighted(rows: list[tuple[str, float, int]]) -> float | None:
    """One average over all views from the guide's per-view (avg, count) rows."""
    n = sum(count for *_, count in rows)
    return sum(avg * count for _, avg, count in rows) / n if n else None


def _first_user(engine: sa.Engine) -> str:
    return str(_one(engine, "top_builder")[0][0])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="quick scale (1/20 of bench) and shorter phases")
    parser.add_argument("--workers", type=int, help="gunicorn workers (default: GUNICORN_WORKERS, i.e. 2)")
    parser.add_argument("--shared-buffers", help="Postgres shared_buffers (default: 1/4 of RAM, 128MB..4GB)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (logs, wrk inputs)")
    parser.add_argument("--results-dir", help="where the JSON, the plot and py-spy's stacks go (default bench/results)")
    short = parser.add_argument_group("shorter phases (the output and the result file say they were shortened)")
    short.add_argument("--page-seconds", type=float, help="Actual column, per page")
    short.add_argument("--warmup-seconds", type=float, help="warm-up before each measured run of the product")
    short.add_argument("--before-max-seconds", type=float, help="Before column, at most, per page")
    short.add_argument("--step-seconds", type=float, help="each ramp step of the scenario")
    short.add_argument("--hold-seconds", type=float, help="the scenario's hold")
    short.add_argument("--mixed-seconds", type=float, help="mixed profile, per worker count")
    short.add_argument("--profile-seconds", type=float, help="py-spy run (0: no profile)")
    short.add_argument("--max-users", type=int, help="stop the ramp at this many virtual users")
    args = parser.parse_args(argv)
    args.overrides = {"page_s": args.page_seconds, "warmup_s": args.warmup_seconds, "before_max_s": args.before_max_seconds,
                      "step_s": args.step_seconds, "hold_s": args.hold_seconds, "mixed_s": args.mixed_seconds,
                      "profile_s": args.profile_seconds}
    if args.before_max_seconds is not None:
        args.overrides["before_min_s"] = min(args.before_max_seconds, (QUICK if args.quick else FULL).before_min_s)
    args.shortened = any(v is not None for v in args.overrides.values()) or args.max_users is not None
    args.drain_timeout = 180
    for name, value in vars(args).items():
        if name.endswith("_seconds") and value is not None and value < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0")
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be >= 1")
    if args.max_users is not None and args.max_users < 1:
        parser.error("--max-users must be >= 1")
    if shutil.which("wrk") is None:
        print("bench: wrk is not installed (apt-get install -y wrk; `make install` does it on Debian)",
              file=sys.stderr)
        return 2
    return run(args)
