"""Search latency: the phase 3 functions against the naive ILIKE search they replace.

``python -m bench.search_latency [--scale quick|bench|demo] [--database-url URL]``

Without ``--database-url`` it starts a private Postgres in a temporary
directory, migrates, seeds the scale, measures and removes everything. With a
URL it uses that database as it is (seeding it first only if it has no users).

``search_section()`` is the part ``bench/read_models.py`` imports: given a
seeded database it prints p50/p99 per function over a fixed list of realistic
queries (single words, two words, a typo, a prefix, a rare word, an absent word)
and the "before" equivalent (``ILIKE '%q%'`` over the base tables' titles and
descriptions, ranked by upvotes, as an unoptimized platform would) side by side
with the ratio, all from the same run.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from schema.db import raw_connection

# (label, query). Words from the seed's vocabulary (schema/seed.py) so the hit
# counts are those of the demo/bench data, plus input that matches nothing.
QUERIES: tuple[tuple[str, str], ...] = (
    ("single word", "blockchain"),
    ("single word", "wallet"),
    ("single word", "web3"),
    ("two words", "web3 project"),
    ("two words", "carbon credits"),
    ("typo", "blokchain"),
    ("typo", "marketplce"),
    ("prefix", "marketpl"),
    ("rare word", "nairobi"),
    ("absent word", "zyxwvutsrq"),
)

# The search calls measured; {q} and {type} are bound parameters, never formatted into SQL.
AFTER: dict[str, str] = {
    "search_content": "SELECT * FROM search_content(%(q)s, NULL, 20)",
    "search_fuzzy": "SELECT * FROM search_fuzzy(%(q)s, NULL, 0.3, 20)",
    "search_combined": "SELECT * FROM search_combined(%(q)s, NULL, 20)",
    "search_combined(project)": "SELECT * FROM search_combined(%(q)s, 'project', 20)",
}

# The "before": what a platform without a search index runs. Every kind, a
# substring match on title and body, upvotes as the only ranking signal.
BEFORE_SQL = """
SELECT kind, id, title FROM (
    SELECT 'project' AS kind, p.id, p.title,
           (SELECT count(*) FROM project_upvotes v WHERE v.project_id = p.id) AS popularity,
           p.title ILIKE %(pat)s AS in_title
    FROM projects p JOIN users u ON u.id = p.user_id
    WHERE NOT p.is_deleted AND NOT u.is_deleted AND (p.title ILIKE %(pat)s OR p.description ILIKE %(pat)s)
    UNION ALL
    SELECT 'builder', u.id, u.name, 0, u.name ILIKE %(pat)s OR u.username ILIKE %(pat)s
    FROM users u
    WHERE NOT u.is_deleted AND (u.name ILIKE %(pat)s OR u.username ILIKE %(pat)s OR u.bio ILIKE %(pat)s)
    UNION ALL
    SELECT 'chain', c.id, c.name, 0, c.name ILIKE %(pat)s
    FROM chains c
    WHERE NOT c.is_deleted AND (c.name ILIKE %(pat)s OR c.description ILIKE %(pat)s)
    UNION ALL
    SELECT 'post', cp.id, cp.title,
           (SELECT count(*) FROM post_upvotes v WHERE v.post_id = cp.id), cp.title ILIKE %(pat)s
    FROM chain_posts cp
    WHERE NOT cp.is_deleted AND (cp.title ILIKE %(pat)s OR cp.body ILIKE %(pat)s)
    UNION ALL
    SELECT 'investor', i.id, u.name, 0, u.name ILIKE %(pat)s OR i.firm_name ILIKE %(pat)s
    FROM investors i JOIN users u ON u.id = i.user_id
    WHERE NOT i.is_deleted AND (u.name ILIKE %(pat)s OR i.firm_name ILIKE %(pat)s OR i.bio ILIKE %(pat)s)
) hits
ORDER BY in_title DESC, popularity DESC
LIMIT 20
"""


@dataclass
class Series:
    """Latencies (ms) of one method, per query and overall."""

    name: str
    per_query: dict[str, list[float]] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)

    @property
    def all(self) -> list[float]:
        return [t for ts in self.per_query.values() for t in ts]


FORUM_SQL = """
SELECT id, title, upvote_count, comment_count, trending_score
FROM mv_chain_posts
WHERE chain_id = (SELECT id FROM chains LIMIT 1)
ORDER BY is_pinned DESC, trending_score DESC
LIMIT 10
"""
PHASE3_VIEWS = ("mv_search_index", "mv_chain_posts", "mv_investors_directory")


def forum_and_refresh_section(database_url: str, *, out: Callable[[str], None] = print) -> dict[str, float]:
    """The guide's Step 3.3 forum query plan at this scale, and what a refresh of each phase 3 view costs.

    The refreshes are REFRESH ... CONCURRENTLY with no data changed since the
    last one (the base tables are not written): the full recompute and diff
    that every refresh pays, the floor of the refresh cost.
    """
    timings: dict[str, float] = {}
    with raw_connection(database_url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) " + FORUM_SQL)
        plan = [r[0] for r in cur.fetchall()]
        out("guide Step 3.3 forum query (verbatim), EXPLAIN ANALYZE:")
        for line in plan:
            if "Scan" in line or "Sort" in line or "Execution Time" in line:
                out("    " + line.strip())
        cur.execute("SET work_mem = '256MB'")  # what mv_refresh_run uses
        for view in PHASE3_VIEWS:
            started = time.perf_counter()
            cur.execute(f"REFRESH MATERIALIZED VIEW CONCURRENTLY {view}")  # names from the constant above
            timings[view] = (time.perf_counter() - started) * 1000
            out(f"REFRESH MATERIALIZED VIEW CONCURRENTLY {view} (no change since the last): {timings[view]:,.0f} ms")
    return timings


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); honest for small samples (p99 of 20 = the max)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), -(-len(ordered) * p // 100)))
    return ordered[int(rank) - 1]


def _like_pattern(q: str) -> str:
    escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _time_query(cur, sql: str, params: dict) -> tuple[float, int]:
    started = time.perf_counter()
    cur.execute(sql, params)
    rows = cur.fetchall()
    return (time.perf_counter() - started) * 1000, len(rows)


def _conditions(cur) -> list[str]:
    cur.execute("SELECT version(), current_setting('shared_buffers'), current_setting('work_mem'), "
                "current_setting('jit')")
    version, shared_buffers, work_mem, jit = cur.fetchone()
    cur.execute("SELECT kind, count(*) FROM mv_search_index GROUP BY kind ORDER BY kind")
    kinds = ", ".join(f"{k} {n:,}" for k, n in cur.fetchall())
    cur.execute("SELECT pg_size_pretty(pg_total_relation_size('mv_search_index'))")
    size = cur.fetchone()[0]
    cur.execute("SELECT (SELECT count(*) FROM projects), (SELECT count(*) FROM chain_posts), (SELECT count(*) FROM users)")
    projects, posts, users = cur.fetchone()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return [
        f"server: {version.split(',')[0]}; shared_buffers {shared_buffers}; work_mem {work_mem}; jit {jit}",
        f"client: Python {platform.python_version()} psycopg2 over TCP loopback, one connection, same host "
        f"({os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start)",
        f"data: {users:,} users, {projects:,} projects, {posts:,} chain posts; "
        f"mv_search_index {size}: {kinds}",
        "timing: wall time of execute + fetch of all rows, per call, after one warm-up call per query",
    ]


def search_section(
    database_url: str,
    *,
    repeats: int = 20,
    baseline_repeats: int = 5,
    queries: tuple[tuple[str, str], ...] = QUERIES,
    jit: str | None = None,
    out: Callable[[str], None] = print,
) -> dict[str, dict[str, float]]:
    """Measure and print search latency; return {method: {p50, p99, mean, n}}.

    The "before" baseline runs fewer times (``baseline_repeats``) because each
    call can take seconds at bench scale; its p99 is then the max of few samples.
    ``jit`` ('on'/'off') overrides the server's setting for this session: the
    search plans' estimated costs cross jit_above_cost at bench scale, and JIT
    compilation then adds ~15-20 ms to a query that runs in tens.
    """
    series = {name: Series(name) for name in AFTER}
    before = Series("before: ILIKE over base tables")
    with raw_connection(database_url, autocommit=True) as conn, conn.cursor() as cur:
        if jit is not None:
            cur.execute("SELECT set_config('jit', %s, false)", (jit,))
        for line in _conditions(cur):
            out(line)
        for _label, q in queries:
            for name, sql in AFTER.items():
                _time_query(cur, sql, {"q": q})  # warm-up: plan, buffers
                times = []
                for _ in range(repeats):
                    ms, n = _time_query(cur, sql, {"q": q})
                    times.append(ms)
                series[name].per_query[q] = times
                series[name].rows[q] = n
            _time_query(cur, BEFORE_SQL, {"pat": _like_pattern(q)})
            times = []
            for _ in range(baseline_repeats):
                ms, n = _time_query(cur, BEFORE_SQL, {"pat": _like_pattern(q)})
                times.append(ms)
            before.per_query[q] = times
            before.rows[q] = n

    out("")
    out(f"per query, p50 ms (rows returned); after: {repeats} calls each, before: {baseline_repeats} calls each")
    header = f"{'query':<26}" + "".join(f"{name:>26}" for name in AFTER) + f"{'before (ILIKE)':>20}"
    out(header)
    for label, q in queries:
        cells = "".join(
            f"{statistics.median(series[name].per_query[q]):>19.2f} ({series[name].rows[q]:>3})" for name in AFTER
        )
        out(f"{(label + ': ' + q)[:25]:<26}{cells}{statistics.median(before.per_query[q]):>13.1f} ({before.rows[q]:>3})")

    out("")
    out(f"{'method':<34}{'p50 ms':>10}{'p99 ms':>10}{'mean ms':>10}{'n':>6}{'before/after p50':>18}{'p99':>8}")
    summary: dict[str, dict[str, float]] = {}
    b_all = before.all
    b50, b99 = percentile(b_all, 50), percentile(b_all, 99)
    for s in [*series.values(), before]:
        values = s.all
        p50, p99 = percentile(values, 50), percentile(values, 99)
        summary[s.name] = {"p50": p50, "p99": p99, "mean": statistics.fmean(values), "n": len(values)}
        ratio = "" if s is before else f"{b50 / p50:>17.1f}x{b99 / p99:>7.1f}x"
        out(f"{s.name:<34}{p50:>10.2f}{p99:>10.2f}{statistics.fmean(values):>10.2f}{len(values):>6}{ratio}")
    out("(ratios compare the same query list; p99 is nearest-rank over all calls of that method)")
    return summary


@contextmanager
def private_database(scale: str, out: Callable[[str], None]) -> Iterator[str]:
    """A private cluster, migrated and seeded at ``scale``; yields its URL and removes it after."""
    from deploy.embedded import EmbeddedPostgres, free_port
    from schema.migrate import migrate
    from schema.seed import seed

    work = Path(tempfile.mkdtemp(prefix="bench-search-"))
    work.chmod(0o755)  # the postgres user must reach its data directory below
    server = EmbeddedPostgres(work / "pg", free_port(), settings={"fsync": "off", "synchronous_commit": "off"})
    try:
        server.start()
        with raw_connection(server.admin_url(), autocommit=True) as conn, conn.cursor() as cur:
            cur.execute("CREATE DATABASE bench_search")
        url = server.admin_url("bench_search")
        migrate(url, out=lambda line: None)
        started = time.monotonic()
        seed(url, scale, seed=42, out=lambda line: None)
        out(f"seeded scale {scale} in {time.monotonic() - started:.0f} s (private cluster, fsync off)")
        yield url
    finally:
        server.destroy()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.search_latency", description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=["demo", "quick", "bench"], default="quick")
    parser.add_argument("--database-url", help="a migrated database (seeded at --scale if it has no users)")
    parser.add_argument("--repeats", type=int, default=None, help="calls per query per search function")
    parser.add_argument("--jit", choices=["on", "off"], default=None, help="override the server's jit setting")
    args = parser.parse_args(argv)
    repeats = args.repeats or (20 if args.scale != "bench" else 10)
    baseline_repeats = 5 if args.scale != "bench" else 3
    out = print
    out(f"== search latency, scale {args.scale} ==")
    if args.database_url:
        with raw_connection(args.database_url) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM users")
            empty = cur.fetchone()[0] == 0
        if empty:
            from schema.seed import seed

            seed(args.database_url, args.scale, seed=42, out=lambda line: None)
        search_section(args.database_url, repeats=repeats, baseline_repeats=baseline_repeats, jit=args.jit, out=out)
        forum_and_refresh_section(args.database_url, out=out)
        return 0
    with private_database(args.scale, out) as url:
        search_section(url, repeats=repeats, baseline_repeats=baseline_repeats, jit=args.jit, out=out)
        forum_and_refresh_section(url, out=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
