"""Read models against the base tables: ``python -m bench.read_models [--scale quick|bench]``.

On a freshly seeded database (``schema.seed``, seed 42) it prints, side by side
and from the same run:

  reads    the feed, leaderboards, chains, project page and dashboard read from
           the materialized views / phase 1 tables, against the same answer
           computed from the base tables (the guide's "before"): p50 and p99 of
           client-side wall time, the ratio, and whether the answers agree;
  refresh  REFRESH ... CONCURRENTLY per view (through mv_refresh_run, as the
           engine runs it) with nothing changed, after 100 new upvotes and
           after one new upvote on 5% of projects, with the rows each refresh
           wrote (n_tup_ins + n_tup_del of the view) and the "no requests, no
           refresh" path;
  writers  pgbench writes/s (8 clients) with the refresh-request triggers off,
           on (as shipped: one narrow row per table and transaction) and, for
           comparison, the design it replaced (one indexed row per dependent
           view and statement), in alternating order;
  search   phase 3's search latency (bench/search_latency.py), when present.

Database: ``--database-url`` (used as is, seeded if empty), else a new
database under ``BENCH_ADMIN_URL``, else a private Postgres cluster in a
temporary directory (production-like durability: fsync on), removed after.
Timing targets live here, never in tests. Figures are for the machine it runs
on; the conditions are printed first.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg2
import sqlalchemy as sa

from schema.db import queries, raw_connection
from schema.migrate import migrate

PHASE2_VIEWS = ("mv_feed_projects", "mv_leaderboard_projects", "mv_leaderboard_builders", "mv_chains_discovery",
                "mv_project_details")
SHOWN_SETTINGS = ("server_version", "shared_buffers", "work_mem", "fsync", "synchronous_commit",
                  "max_parallel_workers_per_gather", "jit", "max_wal_size")
Out = Callable[[str], None]


# --------------------------------------------------------------------------
# Reads: (name, after SQL, before SQL). The before is the same answer computed
# from the base tables (the views' own count subqueries and score), with the
# same columns and order so the two can be compared.
# --------------------------------------------------------------------------
READS: tuple[tuple[str, str, str], ...] = (
    ("feed: trending, top 20",
     # As the API reads it (api_reads.sql): a page of the view, names by primary key.
     "SELECT f.id, f.title, u.username, c.name, f.upvote_count, f.comment_count "
     "FROM (SELECT * FROM mv_feed_projects ORDER BY trending_score DESC, id DESC LIMIT 20) f "
     "JOIN users u ON u.id = f.author_id LEFT JOIN chains c ON c.id = f.chain_id "
     "ORDER BY f.trending_score DESC, f.id DESC",
     "SELECT p.id, p.title, u.username, c.name, coalesce(v.n, 0)::int, coalesce(k.n, 0)::int "
     "FROM projects p JOIN users u ON u.id = p.user_id AND NOT u.is_deleted "
     "LEFT JOIN chains c ON c.id = p.chain_id AND NOT c.is_deleted "
     "LEFT JOIN (SELECT project_id, count(*) AS n FROM project_upvotes GROUP BY project_id) v ON v.project_id = p.id "
     "LEFT JOIN (SELECT project_id, count(*) AS n FROM project_comments WHERE NOT is_deleted GROUP BY project_id) k "
     "ON k.project_id = p.id "
     "WHERE NOT p.is_deleted ORDER BY log(greatest(coalesce(v.n, 0) + 2 * coalesce(k.n, 0), 1)::float8) + date_part('epoch', p.created_at) / 45000.0 DESC, p.id DESC LIMIT 20"),
    ("feed: newest, top 20",
     "SELECT id, title, upvote_count, comment_count FROM mv_feed_projects ORDER BY created_at DESC, id DESC LIMIT 20",
     "SELECT p.id, p.title, coalesce(v.n, 0)::int, coalesce(k.n, 0)::int FROM projects p "
     "JOIN users u ON u.id = p.user_id AND NOT u.is_deleted "
     "LEFT JOIN (SELECT project_id, count(*) AS n FROM project_upvotes GROUP BY project_id) v ON v.project_id = p.id "
     "LEFT JOIN (SELECT project_id, count(*) AS n FROM project_comments WHERE NOT is_deleted GROUP BY project_id) k "
     "ON k.project_id = p.id "
     "WHERE NOT p.is_deleted ORDER BY p.created_at DESC, p.id DESC LIMIT 20"),
    ("leaderboard: projects, top 20",
     "SELECT id, upvote_count FROM mv_leaderboard_projects ORDER BY rank LIMIT 20",
     "SELECT p.id, coalesce(v.n, 0)::int FROM projects p JOIN users u ON u.id = p.user_id AND NOT u.is_deleted "
     "LEFT JOIN (SELECT project_id, count(*) AS n FROM project_upvotes GROUP BY project_id) v ON v.project_id = p.id "
     "LEFT JOIN (SELECT project_id, count(*) AS n FROM project_comments WHERE NOT is_deleted GROUP BY project_id) k "
     "ON k.project_id = p.id "
     "WHERE NOT p.is_deleted ORDER BY coalesce(v.n, 0) DESC, coalesce(k.n, 0) DESC, p.created_at, p.id LIMIT 20"),
    ("leaderboard: builders, top 20",
     "SELECT user_id, upvotes_received FROM mv_leaderboard_builders ORDER BY rank LIMIT 20",
     "SELECT p.user_id, sum(coalesce(v.n, 0))::bigint AS up FROM projects p "
     "JOIN users u ON u.id = p.user_id AND NOT u.is_deleted "
     "LEFT JOIN (SELECT project_id, count(*) AS n FROM project_upvotes GROUP BY project_id) v ON v.project_id = p.id "
     "WHERE NOT p.is_deleted GROUP BY p.user_id ORDER BY up DESC, count(*) DESC, p.user_id LIMIT 20"),
    ("chains: by members, top 20",
     "SELECT id, member_count FROM mv_chains_discovery ORDER BY member_count DESC, id LIMIT 20",
     "SELECT c.id, count(m.user_id)::int AS n FROM chains c LEFT JOIN chain_members m ON m.chain_id = c.id "
     "WHERE NOT c.is_deleted GROUP BY c.id ORDER BY n DESC, c.id LIMIT 20"),
    ("project page (most upvoted)",
     "SELECT d.id, d.title, d.description, s.upvote_count, s.comment_count FROM mv_project_details d "
     "JOIN project_stats_live s ON s.project_id = d.id WHERE d.id = %(project)s",
     "SELECT p.id, p.title, p.description, "
     "(SELECT count(*) FROM project_upvotes v WHERE v.project_id = p.id)::int, "
     "(SELECT count(*) FROM project_comments k WHERE k.project_id = p.id AND NOT k.is_deleted)::int "
     "FROM projects p WHERE p.id = %(project)s"),
)


def _dashboard_after() -> str:
    # The API's own query (schema/queries/api_me.sql), with psycopg2 placeholders.
    return str(queries("api_me")["dashboard"]).replace(":user_id", "%(user)s")


DASHBOARD_BEFORE = ("SELECT user_id, project_count, active_projects, total_upvotes_received, total_comments_received, "
                    "chains_joined FROM user_dashboard_stats_truth(ARRAY[%(user)s]::uuid[])")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]


def timed(cur: Any, sql: str, params: dict) -> tuple[float, list[tuple]]:
    started = time.perf_counter()
    cur.execute(sql, params)
    rows = cur.fetchall()
    return (time.perf_counter() - started) * 1000, rows


def reads_section(url: str, out: Out, repeats: int, base_repeats: int) -> dict[str, Any]:
    out("\n== reads: materialized views vs the same answer from the base tables ==")
    out(f"client wall time per query (psycopg2, TCP loopback); views {repeats} runs, base tables {base_repeats} runs, "
        "one warm-up each; p50 (p99)")
    results = {}
    with raw_connection(url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM mv_leaderboard_projects ORDER BY rank LIMIT 1")
        project = cur.fetchone()[0]
        cur.execute("SELECT user_id FROM mv_leaderboard_builders ORDER BY rank LIMIT 1")
        user = cur.fetchone()[0]
        params = {"project": project, "user": user}
        pairs = list(READS)
        cur.execute("SELECT to_regclass('user_dashboard_stats_live') IS NOT NULL "
                    "AND to_regprocedure('user_dashboard_stats_truth(uuid[])') IS NOT NULL")
        if cur.fetchone()[0]:
            pairs.append(("dashboard (top builder)", _dashboard_after(), DASHBOARD_BEFORE))
        out(f"{'read':32} {'view/table ms':>18} {'base tables ms':>20} {'ratio':>9}  same answer")
        for name, after_sql, before_sql in pairs:
            timed(cur, after_sql, params)
            after = [timed(cur, after_sql, params) for _ in range(repeats)]
            timed(cur, before_sql, params)
            before = [timed(cur, before_sql, params) for _ in range(base_repeats)]
            a = [t for t, _ in after]
            b = [t for t, _ in before]
            same = _same_answer(name, after[-1][1], before[-1][1])
            ratio = statistics.median(b) / statistics.median(a)
            out(f"{name:32} {statistics.median(a):9.2f} ({percentile(a, .99):6.2f}) "
                f"{statistics.median(b):11.1f} ({percentile(b, .99):7.1f}) {ratio:8.0f}x  {same}")
            results[name] = {"after_p50_ms": statistics.median(a), "before_p50_ms": statistics.median(b),
                             "ratio": ratio, "same": same}
    return results


def _same_answer(name: str, after: list[tuple], before: list[tuple]) -> str:
    if name.startswith("dashboard"):
        # The API row carries more columns; compare the five counters.
        a = [tuple(r[3:8]) for r in after]
        b = [tuple(r[1:6]) for r in before]
    else:
        a, b = [tuple(r) for r in after], [tuple(r) for r in before]
    return "yes" if a == b else "NO"


# --------------------------------------------------------------------------
# Refresh
# --------------------------------------------------------------------------

CHANGES: dict[str, str] = {
    "nothing changed": "",
    "100 new upvotes": """
        WITH u AS (SELECT array_agg(id) AS a FROM users WHERE NOT is_deleted),
             p AS (SELECT array_agg(id) AS a FROM projects WHERE NOT is_deleted)
        INSERT INTO project_upvotes (user_id, project_id)
        SELECT u.a[1 + floor(random() * cardinality(u.a))::int], p.a[1 + floor(random() * cardinality(p.a))::int]
        FROM u, p, generate_series(1, 100)
        ON CONFLICT DO NOTHING""",
    # In transactions of at most 2,000 rows (CHUNKED below): the phase 1 upvote
    # trigger takes an advisory lock per row, and one 25k-row statement runs
    # out of lock table ("out of shared memory").
    "+1 upvote on 5% of projects": """
        WITH u AS (SELECT array_agg(id) AS a FROM users WHERE NOT is_deleted)
        INSERT INTO project_upvotes (user_id, project_id)
        SELECT u.a[1 + floor(random() * cardinality(u.a))::int], p.id
        FROM u, (SELECT id FROM projects WHERE NOT is_deleted AND random() < 0.05 / %(chunks)s) p
        ON CONFLICT DO NOTHING""",
}
CHUNKED = {"+1 upvote on 5% of projects"}


def write_stats(admin: Any, views: tuple[str, ...]) -> dict[str, int]:
    with admin.cursor() as cur:
        cur.execute("SELECT pg_stat_clear_snapshot()")
        cur.execute("SELECT relname, n_tup_ins + n_tup_del FROM pg_stat_user_tables WHERE relname = ANY(%s)",
                    (list(views),))
        return dict(cur.fetchall())


def refresh_once(url: str, admin: Any, view: str, force: bool = True) -> tuple[str, int, float]:
    """mv_refresh_run in a session of its own that then exits (its statistics are flushed on exit)."""
    with raw_connection(url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        pid = cur.fetchone()[0]
        started = time.perf_counter()
        cur.execute("SELECT status, duration_ms FROM mv_refresh_run(%s, NULL, NULL, %s)", (view, force))
        status, server_ms = cur.fetchone()
        wall = (time.perf_counter() - started) * 1000
    deadline = time.monotonic() + 30
    with admin.cursor() as cur:
        while time.monotonic() < deadline:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
            if cur.fetchone()[0] == 0:
                break
            time.sleep(0.02)
    return status, server_ms or 0, wall


def refresh_section(url: str, out: Out, rounds: int, views: tuple[str, ...]) -> dict[str, Any]:
    out("\n== REFRESH MATERIALIZED VIEW CONCURRENTLY, through mv_refresh_run (force), one session per refresh ==")
    out("time = server-side duration_ms (refresh + exact row count); rows = base rows the change inserted; "
        "rows written = n_tup_ins + n_tup_del of the view (a changed view row counts 2: delete + insert)")
    results: dict[str, Any] = {}
    with raw_connection(url, autocommit=True) as admin:
        with admin.cursor() as cur:
            for view in views:  # a settled start: every view current
                refresh_once(url, admin, view)
            cur.execute("SELECT relname, n_live_tup, pg_size_pretty(pg_total_relation_size(relid)) "
                        "FROM pg_stat_user_tables WHERE relname = ANY(%s) ORDER BY relname", (list(views),))
            out("view sizes: " + ", ".join(f"{r}={n:,} rows/{s}" for r, n, s in cur.fetchall()))
        out(f"{'change':28} {'rows':>7} {'view':26} {'round':>5} {'ms':>8} {'rows written':>13}")
        for rnd in range(1, rounds + 1):
            for change, sql in CHANGES.items():
                changed = 0
                if sql:
                    with admin.cursor() as cur:
                        cur.execute("SELECT count(*) FROM projects")
                        chunks = max(1, cur.fetchone()[0] // 40_000) if change in CHUNKED else 1
                        for _ in range(chunks):  # each sample ~5%/chunks of projects: ~2,000 rows per transaction
                            cur.execute(sql, {"chunks": chunks})
                            changed += cur.rowcount
                for view in views:
                    before = write_stats(admin, (view,)).get(view, 0)
                    status, ms, _wall = refresh_once(url, admin, view)
                    written = write_stats(admin, (view,)).get(view, 0) - before
                    note = "" if status == "completed" else " " + status
                    out(f"{change:28} {changed:7,} {view:26} {rnd:5} {ms:8,} {written:13,}{note}")
                    results.setdefault(change, {}).setdefault(view, []).append({"ms": ms, "rows_written": written})
        # No requests, no refresh.
        timings = []
        for view in views:
            status, _ms, wall = refresh_once(url, admin, view, force=False)
            timings.append((view, status, wall))
        out("no pending request (force off): " + ", ".join(f"{v} {s} in {w:.1f} ms" for v, s, w in timings))
    return results


# --------------------------------------------------------------------------
# Writers: request triggers off / on / per-view rows
# --------------------------------------------------------------------------

PER_VIEW_DESIGN_SQL = """
CREATE TABLE IF NOT EXISTS bench_requests_per_view (
    id bigserial, view_name text NOT NULL, requested_at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE INDEX IF NOT EXISTS bench_requests_per_view_idx ON bench_requests_per_view (view_name, id);
CREATE OR REPLACE FUNCTION bench_request_per_view() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench_requests_per_view (view_name)
    SELECT d.view_name FROM mv_dependencies d JOIN mv_registry r ON r.view_name = d.view_name
    WHERE d.table_name = TG_TABLE_NAME AND r.enabled;
    RETURN NULL;
END $$;
"""

WORKLOADS = {
    # One upvote per transaction (what POST /api/projects/{id}/upvote writes).
    "single upvote": "\\set u random(1, :nusers)\n\\set p random(1, :nprojects)\n"
                     "INSERT INTO project_upvotes (user_id, project_id) VALUES "
                     "(('{users}' || lpad(to_hex(:u), 12, '0'))::uuid, ('{projects}' || lpad(to_hex(:p), 12, '0'))::uuid) "
                     "ON CONFLICT DO NOTHING;\n",
    # Three statements on two tables in one transaction (request rows: one per table).
    "2 upvotes + comment": "\\set u random(1, :nusers)\n\\set p random(1, :nprojects)\nBEGIN;\n"
                            "INSERT INTO project_upvotes (user_id, project_id) VALUES "
                            "(('{users}' || lpad(to_hex(:u), 12, '0'))::uuid, "
                            "('{projects}' || lpad(to_hex(:p), 12, '0'))::uuid) ON CONFLICT DO NOTHING;\n"
                            "INSERT INTO project_comments (project_id, user_id, body) VALUES "
                            "(('{projects}' || lpad(to_hex(:p), 12, '0'))::uuid, "
                            "('{users}' || lpad(to_hex(:u), 12, '0'))::uuid, 'bench');\n"
                            "INSERT INTO project_upvotes (user_id, project_id) VALUES "
                            "(('{users}' || lpad(to_hex(1 + :u % :nusers), 12, '0'))::uuid, "
                            "('{projects}' || lpad(to_hex(:p), 12, '0'))::uuid) ON CONFLICT DO NOTHING;\nCOMMIT;\n",
}


def _trigger_tables(admin: Any) -> list[str]:
    with admin.cursor() as cur:
        cur.execute("SELECT DISTINCT tgrelid::regclass::text FROM pg_trigger "
                    "WHERE tgname IN ('trg_mv_request_refresh', 'bench_trg_request_per_view') ORDER BY 1")
        return [r[0] for r in cur.fetchall()]


def set_arm(admin: Any, tables: list[str], arm: str) -> None:
    with admin.cursor() as cur:
        for table in tables:  # names from pg_trigger, quoted below
            ident = psycopg2.extensions.quote_ident(table, cur)
            cur.execute(f"ALTER TABLE {ident} {'ENABLE' if arm == 'on' else 'DISABLE'} TRIGGER trg_mv_request_refresh")
            cur.execute(f"DROP TRIGGER IF EXISTS bench_trg_request_per_view ON {ident}")
            if arm == "per-view rows":
                cur.execute(f"CREATE TRIGGER bench_trg_request_per_view AFTER INSERT OR UPDATE OR DELETE ON {ident} "
                            "FOR EACH STATEMENT EXECUTE FUNCTION bench_request_per_view()")
        cur.execute("TRUNCATE mv_refresh_requests, bench_requests_per_view")
        cur.execute("CHECKPOINT")


def cluster_cpu_seconds(postmaster_pid: int) -> float:
    """CPU time used so far by a Postgres cluster: the postmaster, its live children and its reaped ones.

    The per-transaction server CPU this gives is steadier than tps on a shared
    2-core machine, where other processes (and pgbench itself) take CPU at random.
    """
    tick = os.sysconf("SC_CLK_TCK")

    def fields(pid: int) -> list[str]:
        raw = Path(f"/proc/{pid}/stat").read_text()
        return raw[raw.rindex(")") + 2:].split()  # fields from 3 (state) on

    own = fields(postmaster_pid)
    total = sum(int(own[i]) for i in (11, 12, 13, 14))  # utime, stime, cutime, cstime
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                f = fields(int(entry))
            except (OSError, ValueError):
                continue  # exited meanwhile
            if int(f[1]) == postmaster_pid:
                total += int(f[11]) + int(f[12])
    return total / tick


def local_postmaster_pid(url: str) -> int | None:
    """The postmaster's pid when the server runs on this machine (our backend's parent), else None."""
    with raw_connection(url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        backend = cur.fetchone()[0]
        try:
            raw = Path(f"/proc/{backend}/stat").read_text()
            parent = int(raw[raw.rindex(")") + 2:].split()[1])
            if b"postgres" in Path(f"/proc/{parent}/cmdline").read_bytes():
                return parent
        except (OSError, ValueError):
            pass
    return None


def wait_backends_reaped(admin: Any, postmaster_pid: int, timeout: float = 10.0) -> None:
    """Wait until pgbench's backends have exited and been reaped, so their CPU is in the postmaster's cutime."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with admin.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgbench'")
            busy = cur.fetchone()[0]
        zombies = 0
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    raw = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                f = raw[raw.rindex(")") + 2:].split()
                zombies += f[0] == "Z" and int(f[1]) == postmaster_pid
        if not busy and not zombies:
            return
        time.sleep(0.02)


def pgbench(url: str, script: Path, clients: int, duration: int, defines: dict[str, int]) -> tuple[float, int]:
    u = sa.engine.make_url(url)
    exe = shutil.which("pgbench") or str(_pg_bindir() / "pgbench")
    cmd = [exe, "-n", "-c", str(clients), "-j", str(min(clients, os.cpu_count() or 2)), "-T", str(duration),
           "-h", u.host or "127.0.0.1", "-p", str(u.port or 5432), "-U", u.username or "postgres", "-f", str(script)]
    for k, v in defines.items():
        cmd += ["-D", f"{k}={v}"]
    cmd.append(u.database)
    env = dict(os.environ, PGPASSWORD=u.password) if u.password else dict(os.environ)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=duration + 120)
    text = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"pgbench failed ({proc.returncode}): {text[-1200:]}")
    tps = float(next(line.split("=")[1].split()[0] for line in text.splitlines() if line.startswith("tps =")))
    done = int(next(line.split(":")[1] for line in text.splitlines()
                    if line.startswith("number of transactions actually processed")))
    return tps, done


def _pg_bindir() -> Path:
    from deploy.embedded import find_pg_bindir

    return find_pg_bindir()


def writers_section(url: str, out: Out, rounds: int, duration: int, clients: int,
                    postmaster_pid: int | None) -> dict[str, Any]:
    from schema.seed import id_prefix

    out(f"\n== writers: pgbench, {clients} clients, {duration} s per arm, arm order alternates per round ==")
    out("arms: off = request triggers disabled; on = as shipped (one unindexed row per table and transaction); "
        "per-view rows = the replaced design (one row per dependent view and statement, indexed (view_name, id)). "
        "Phase 1 triggers stay on in every arm. Request rows are truncated between arms (no refresh runs).")
    if postmaster_pid:
        out("cpu = server CPU per transaction (all Postgres processes of the private cluster, from /proc), "
            "steadier than tps when other processes share the CPUs; ratios are off/arm, so < 1 means costlier")
    arms = ("off", "on", "per-view rows")
    results: dict[str, Any] = {}
    with raw_connection(url, autocommit=True) as admin, tempfile.TemporaryDirectory(prefix="bench-rm-") as tmp:
        with admin.cursor() as cur:
            cur.execute(PER_VIEW_DESIGN_SQL)
            cur.execute("SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM projects)")
            nusers, nprojects = cur.fetchone()
        tables = _trigger_tables(admin)
        defines = {"nusers": nusers, "nprojects": nprojects}
        prefixes = {"users": id_prefix(42, "users"), "projects": id_prefix(42, "projects")}
        with admin.cursor() as cur:  # the generated ids must address seeded rows
            cur.execute("SELECT count(*) FROM users WHERE id = (%s || lpad(to_hex(1), 12, '0'))::uuid",
                        (prefixes["users"],))
            if cur.fetchone()[0] != 1:
                out("writers: skipped (the database was not seeded by schema.seed with seed 42)")
                return results
        out(f"{'workload':22} {'round':>5} " + " ".join(f"{a + ' tps (cpu us)':>26}" for a in arms)
            + "   tps on/off  per-view/off   cpu on  per-view")
        try:
            for name, template in WORKLOADS.items():
                script = Path(tmp) / f"{name.replace(' ', '_').replace('+', '_')}.sql"
                script.write_text(template.format(**prefixes))
                for rnd in range(1, rounds + 1):
                    order = arms if rnd % 2 else tuple(reversed(arms))
                    tps: dict[str, float] = {}
                    cpu: dict[str, float] = {}
                    for arm in order:
                        set_arm(admin, tables, arm)
                        before = cluster_cpu_seconds(postmaster_pid) if postmaster_pid else 0.0
                        tps[arm], done = pgbench(url, script, clients, duration, defines)
                        if postmaster_pid:
                            wait_backends_reaped(admin, postmaster_pid)
                            cpu[arm] = (cluster_cpu_seconds(postmaster_pid) - before) / max(done, 1) * 1e6
                    cells = " ".join(f"{tps[a]:14,.0f} ({cpu.get(a, float('nan')):6.0f} us)" for a in arms)
                    ratios = f"   {tps['on'] / tps['off']:10.2f}  {tps['per-view rows'] / tps['off']:12.2f}"
                    if cpu:
                        ratios += f"   {cpu['off'] / cpu['on']:6.2f}  {cpu['off'] / cpu['per-view rows']:8.2f}"
                    out(f"{name:22} {rnd:5} {cells}{ratios}")
                    results.setdefault(name, []).append({"tps": tps, "cpu_us": cpu})
            for name, runs in results.items():
                line = (f"{name}: median over {len(runs)} rounds: tps on/off "
                        f"{statistics.median(r['tps']['on'] / r['tps']['off'] for r in runs):.2f}, per-view rows/off "
                        f"{statistics.median(r['tps']['per-view rows'] / r['tps']['off'] for r in runs):.2f}")
                if postmaster_pid:
                    line += (f"; server cpu off/on {statistics.median(r['cpu_us']['off'] / r['cpu_us']['on'] for r in runs):.2f}"
                             f", off/per-view {statistics.median(r['cpu_us']['off'] / r['cpu_us']['per-view rows'] for r in runs):.2f}")
                out(line)
        finally:
            set_arm(admin, tables, "on")
            with admin.cursor() as cur:
                cur.execute("DROP TABLE IF EXISTS bench_requests_per_view; "
                            "DROP FUNCTION IF EXISTS bench_request_per_view()")
    return results


# --------------------------------------------------------------------------
# Search (phase 3 adds its section in bench/search_latency.py)
# --------------------------------------------------------------------------


def search_section(url: str, out: Out, scale: str) -> dict[str, Any]:
    try:
        from bench.search_latency import search_section as phase3_search
    except ImportError:
        out("\n== search: bench/search_latency.py not present, skipped ==")
        return {}
    out("\n== search (bench/search_latency.py) ==")
    repeats, baseline = (10, 3) if scale == "bench" else (20, 5)
    return phase3_search(url, repeats=repeats, baseline_repeats=baseline, out=out)


# --------------------------------------------------------------------------
# Conditions, database, main
# --------------------------------------------------------------------------


def conditions_section(url: str, out: Out, where: str, scale: str, seed_seconds: float | None) -> None:
    out(f"== conditions: scale {scale} ==")
    out(f"database: {where}" + (f"; seeded in {seed_seconds:.0f} s" if seed_seconds is not None else ""))
    load = os.getloadavg()
    out(f"machine: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), load average at start "
        f"{load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}; client and server share the CPUs")
    with raw_connection(url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT relname, n_live_tup FROM pg_stat_user_tables WHERE relname = ANY(%s) ORDER BY relname",
                    (["users", "projects", "project_upvotes", "project_comments", "chains", "chain_members",
                      "chain_posts", "messages"],))
        out("rows: " + ", ".join(f"{r}={n:,}" for r, n in cur.fetchall()))
        settings = []
        for name in SHOWN_SETTINGS:
            cur.execute("SELECT current_setting(%s)", (name,))
            settings.append(f"{name}={cur.fetchone()[0]}")
        out("postgres: " + ", ".join(settings) + " (mv_refresh_run sets work_mem=256MB, jit=off, default_statistics_target=10, "
            "parallel_tuple_cost=0.01 for a refresh)")


@contextmanager
def bench_database(args: argparse.Namespace, out: Out) -> Iterator[tuple[str, str, float | None, int | None]]:
    """(url, where, seconds spent seeding, postmaster pid if the cluster is ours) of a seeded database.

    Dropped afterwards if created here."""
    from schema.seed import seed

    if args.database_url:
        with raw_connection(args.database_url, autocommit=True) as conn, conn.cursor() as cur:
            cur.execute("SELECT to_regclass('users') IS NOT NULL AND EXISTS (SELECT 1 FROM users)")
            seeded = cur.fetchone()[0]
        started = time.monotonic()
        if not seeded:
            migrate(args.database_url, out=lambda line: None)
            seed(args.database_url, args.scale, seed=42, out=lambda line: out(f"  seed: {line}"))
        yield args.database_url, "given by --database-url", None if seeded else time.monotonic() - started, None
        return
    server = tmp = None
    admin = os.environ.get("BENCH_ADMIN_URL")
    if admin:
        where = f"new database under BENCH_ADMIN_URL ({sa.engine.make_url(admin).host})"
    else:
        from deploy.embedded import EmbeddedPostgres, free_port

        tmp = Path(tempfile.mkdtemp(prefix="bench-read-models-"))
        tmp.chmod(0o755)  # the postgres user must reach its data directory below
        server = EmbeddedPostgres(tmp / "pg", free_port(), settings={"shared_buffers": "1GB"})
        server.start()
        admin = server.admin_url()
        where = f"private cluster in {tmp} (port {server.port}), fsync on"
    name = f"bench_read_models_{uuid.uuid4().hex[:8]}"
    with raw_connection(admin, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')  # generated name, not input
    url = sa.engine.make_url(admin).set(database=name).render_as_string(hide_password=False)
    try:
        migrate(url, out=lambda line: None)
        started = time.monotonic()
        seed(url, args.scale, seed=42, out=lambda line: out(f"  seed: {line}"))
        pid = int((server.data_dir / "postmaster.pid").read_text().split()[0]) if server is not None else None
        yield url, where, time.monotonic() - started, pid
    finally:
        try:
            with raw_connection(admin, autocommit=True) as conn, conn.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            if server is not None:
                server.destroy()
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)


# The run's sections, in order. Each takes (url, out, args) and returns its figures.
SECTIONS: dict[str, Callable[[str, Out, argparse.Namespace], Any]] = {  # args.postmaster_pid set in main
    "reads": lambda url, out, a: reads_section(url, out, a.repeats, a.base_repeats),
    "refresh": lambda url, out, a: refresh_section(url, out, a.rounds, PHASE2_VIEWS),
    "writers": lambda url, out, a: writers_section(url, out, a.writer_rounds, a.duration, a.clients,
                                                   a.postmaster_pid),
    "search": lambda url, out, a: search_section(url, out, a.scale),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.read_models", description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=["quick", "bench", "demo"], default="quick")
    parser.add_argument("--database-url", help="use this database (migrated and seeded at --scale if empty)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the refresh measurements")
    parser.add_argument("--writer-rounds", type=int, default=4, help="rounds of the writer arms (order alternates)")
    parser.add_argument("--repeats", type=int, default=50, help="runs per view read")
    parser.add_argument("--base-repeats", type=int, default=None, help="runs per base-table read")
    parser.add_argument("--duration", type=int, default=None, help="seconds per pgbench arm")
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args(argv)
    args.base_repeats = args.base_repeats or (5 if args.scale == "bench" else 10)
    args.duration = args.duration or (15 if args.scale == "bench" else 8)
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")

    def out(line: str) -> None:
        print(line, flush=True)

    with bench_database(args, out) as (url, where, seed_seconds, postmaster_pid):
        args.postmaster_pid = postmaster_pid or local_postmaster_pid(url)
        conditions_section(url, out, where, args.scale, seed_seconds)
        for name in chosen:
            SECTIONS[name](url, out, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
