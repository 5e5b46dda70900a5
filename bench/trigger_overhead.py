"""Write throughput with the Phase 1 triggers on vs off: ``python -m bench.trigger_overhead``.

Creates its own database (in a private Postgres cluster started for the run,
or on the admin server given by ``DATABASE_URL``), migrates it, loads rows
with triggers disabled, runs the backfill, then measures writes/s with pgbench
(8 clients, one single-row write per transaction) in two workloads:

  spread  upvote toggles, comment inserts and message inserts on random
          projects / conversations (no two writers share a counter row, mostly)
  hot     the same three writes, every client on ONE project (one builder's
          dashboard row) and ONE conversation

Each workload runs ``--rounds`` rounds of the arms in alternating order:
``off`` (the 9 Phase 1 triggers and the 3 project_stats triggers disabled; foreign keys and the other phases'
triggers stay on), ``on`` (as shipped: in-place update, delta row when the
row is busy) and, with ``--naive``, ``naive`` (the same triggers with the
delta path switched off: every change updates the main row, the textbook
trigger-kept counter). A fold runs every 2 s in every arm, as the refresh
sweep does in production. ``--segment S`` splits every arm into S-second
pieces run in turn (the order flips every piece and every round), for a
machine whose load from other work drifts over minutes; the default runs each
arm whole. After an ``on``/``naive`` arm the tables are
folded and compared with the truth recomputed from the base tables (every
row of all four tables); after an ``off`` arm the backfill resynchronises
them (outside the timed window).

Timing targets belong here, not in tests. Figures are for this machine only;
the script prints the conditions it ran under.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from deploy.embedded import EmbeddedPostgres, find_pg_bindir, free_port
from schema.db import raw_connection
from schema.migrate import MIGRATIONS_DIR, migrate

PHASE1_TRIGGERS = (
    ("users", "trg_dashboard_users"),
    ("projects", "trg_dashboard_projects"),
    ("project_upvotes", "trg_dashboard_project_upvotes"),
    ("project_comments", "trg_dashboard_project_comments"),
    ("chain_members", "trg_dashboard_chain_members"),
    ("conversations", "trg_conversation_rows"),
    ("messages", "trg_conversation_messages"),
    ("intro_requests", "trg_intro_requests"),
    ("investors", "trg_intro_investors"),
    # 0012: the per-project counters the views read, kept by the same scheme.
    ("projects", "trg_project_stats_projects"),
    ("project_upvotes", "trg_project_stats_upvotes"),
    ("project_comments", "trg_project_stats_comments"),
)
WRITE_TABLES = ("project_upvotes", "project_comments", "messages")
SHOWN_SETTINGS = ("server_version", "shared_buffers", "fsync", "synchronous_commit", "full_page_writes",
                  "wal_level", "max_wal_size", "checkpoint_timeout", "max_connections")


@dataclass(frozen=True)
class Scale:
    users: int
    projects: int
    conversations: int
    upvotes: int
    comments: int
    messages: int
    intro_requests: int


SCALES = {
    "quick": Scale(users=20_000, projects=50_000, conversations=20_000, upvotes=300_000, comments=100_000,
                   messages=100_000, intro_requests=5_000),
    # The product's bench scale (DESIGN: 100k users, 500k projects, 5M upvotes, 2M comments, 1M messages).
    "bench": Scale(users=100_000, projects=500_000, conversations=100_000, upvotes=5_000_000, comments=2_000_000,
                   messages=1_000_000, intro_requests=50_000),
}

# Deterministic ids so that pgbench (integers only) can address rows:
# bench_uuid(kind, n), kind 1 = users, 2 = projects, 3 = conversations,
# 4 = investors. It sorts like n within a kind, so conversations.user1_id <
# user2_id follows from a < b. IMMUTABLE SQL: folded to a constant at plan
# time, so it costs the same in every arm. Created in the bench database only.
BENCH_UUID_SQL = """
CREATE OR REPLACE FUNCTION bench_uuid(kind integer, n bigint) RETURNS uuid
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$ SELECT (lpad(to_hex(kind), 8, '0') || '-0000-4000-8000-' || lpad(to_hex(n), 12, '0'))::uuid $$
"""

# Set-based generation (no per-row round trips), all triggers (FK checks
# included) skipped; the backfill then computes the Phase 1 tables. Sizes are
# bound parameters. Conversation g joins users a = 1 + (g-1) % half and
# b = half + 1 + (a + (g-1)/half) % half: unique pairs with a < b. Project 1
# (owned by user 1) and conversation 1 get no seeded rows: they are the hot ones.
LOAD_SQL = (
    "SET session_replication_role = replica",
    """INSERT INTO users (id, username, name, role)
       SELECT bench_uuid(1, g), 'u' || g, 'User ' || g,
              CASE WHEN g %% 50 = 0 THEN 'investor' WHEN g %% 5 = 0 THEN 'builder' ELSE 'member' END
       FROM generate_series(1, %(users)s) g""",
    """INSERT INTO investors (id, user_id, firm_name)
       SELECT bench_uuid(4, g / 50), bench_uuid(1, g), 'Firm ' || g FROM generate_series(50, %(users)s, 50) g""",
    """INSERT INTO projects (id, user_id, title, description, is_deleted, created_at)
       SELECT bench_uuid(2, g), bench_uuid(1, 1 + (g::bigint * 7919) %% %(users)s),
              'Project ' || g, repeat('lorem ipsum ', 1 + g %% 8), g %% 50 = 0, now() - (g %% 365) * interval '1 day'
       FROM generate_series(1, %(projects)s) g""",
    """INSERT INTO conversations (id, user1_id, user2_id)
       SELECT bench_uuid(3, g), bench_uuid(1, a), bench_uuid(1, %(half)s + 1 + (a + (g - 1) / %(half)s) %% %(half)s)
       FROM (SELECT g, 1 + (g - 1) %% %(half)s AS a FROM generate_series(1, %(conversations)s) g) x""",
    """INSERT INTO project_upvotes (user_id, project_id)
       SELECT bench_uuid(1, 1 + floor(random() * %(users)s)::int),
              bench_uuid(2, 2 + floor((%(projects)s - 1) * power(random(), 2))::int)
       FROM generate_series(1, %(upvotes)s) g
       ON CONFLICT DO NOTHING""",
    """INSERT INTO project_comments (project_id, user_id, body, is_deleted)
       SELECT bench_uuid(2, 2 + floor((%(projects)s - 1) * power(random(), 2))::int),
              bench_uuid(1, 1 + floor(random() * %(users)s)::int), 'comment ' || g, g %% 20 = 0
       FROM generate_series(1, %(comments)s) g""",
    """INSERT INTO messages (conversation_id, sender_id, body, is_read, created_at)
       SELECT c.id, CASE WHEN g %% 2 = 0 THEN c.user1_id ELSE c.user2_id END, 'message ' || g, g %% 3 <> 0,
              now() - (g %% 1000) * interval '1 minute'
       FROM (SELECT g, bench_uuid(3, 2 + (g::bigint * 7) %% (%(conversations)s - 1)) AS cid
             FROM generate_series(1, %(messages)s) g) x
       JOIN conversations c ON c.id = x.cid""",
    """INSERT INTO intro_requests (requester_id, investor_id, status)
       SELECT bench_uuid(1, 1 + floor(random() * %(users)s)::int), bench_uuid(4, 1 + g %% (%(users)s / 50)),
              (ARRAY['pending', 'accepted', 'declined', 'withdrawn'])[1 + g %% 4]
       FROM generate_series(1, %(intro_requests)s) g""",
    "SET session_replication_role = origin",
)

# pgbench scripts: one single-statement transaction each; sizes come in as
# pgbench variables (-D). :p / :c are set per workload (random or the hot one).
# The upvote is a toggle (what POST /api/projects/{id}/upvote does): delete the
# pair if it exists, else insert it, so every transaction changes a counter and
# the hot project never runs out of new (user, project) pairs. A message's
# sender is one of the conversation's two participants (a or b above).
SCRIPTS = {
    "upvote": """\\set u random(1, :nusers)
{target}WITH d AS (DELETE FROM project_upvotes WHERE user_id = bench_uuid(1, :u) AND project_id = bench_uuid(2, :p) RETURNING 1) INSERT INTO project_upvotes (user_id, project_id) SELECT bench_uuid(1, :u), bench_uuid(2, :p) WHERE NOT EXISTS (SELECT 1 FROM d) ON CONFLICT DO NOTHING;
""",
    "comment": """\\set u random(1, :nusers)
{target}INSERT INTO project_comments (project_id, user_id, body) VALUES (bench_uuid(2, :p), bench_uuid(1, :u), 'bench comment');
""",
    "message": """{target}\\set a 1 + (:c - 1) % :half
\\set b :half + 1 + (:a + (:c - 1) / :half) % :half
\\set s random(0, 1)
INSERT INTO messages (conversation_id, sender_id, body) VALUES (bench_uuid(3, :c), bench_uuid(1, CASE WHEN :s = 0 THEN :a ELSE :b END), 'bench message');
""",
}
TARGETS = {
    "spread": {"upvote": "\\set p random(2, :nprojects)\n", "comment": "\\set p random(2, :nprojects)\n",
               "message": "\\set c random(2, :nconversations)\n"},
    "hot": {"upvote": "\\set p 1\n", "comment": "\\set p 1\n", "message": "\\set c 1\n"},
}

# The shipped add functions with the delta path cut out (always UPDATE the main
# row): the "naive" arm. Restored from the migration file after the arm.
NAIVE_SQL = """
CREATE OR REPLACE FUNCTION pg_try_advisory_xact_lock_naive(a integer, b integer) RETURNS boolean
LANGUAGE sql AS 'SELECT true';
"""


@dataclass
class ArmResult:
    workload: str
    arm: str
    round: int
    tps: float
    latency_ms: float
    inserted: dict[str, int]
    mismatches: int | None = None
    folded: int = 0
    deltas_left: int = 0
    notes: list[str] = field(default_factory=list)


def _url_parts(url: str) -> dict[str, str]:
    u = sa.engine.make_url(url)
    return {"host": u.host or "127.0.0.1", "port": str(u.port or 5432), "user": u.username or "postgres",
            "dbname": u.database or "postgres", "password": u.password or ""}


@contextmanager
def bench_database(admin_url: str | None) -> Iterator[tuple[str, str]]:
    """(database url, where) for a fresh database, dropped (with its private cluster) afterwards."""
    server = None
    tmp = None
    if admin_url is None:
        tmp = Path(tempfile.mkdtemp(prefix="bench-trigger-"))
        tmp.chmod(0o755)
        # Production-like durability (fsync, synchronous_commit on): the hot-row
        # cost is the row lock held through the commit's WAL flush.
        server = EmbeddedPostgres(tmp / "pg", free_port(), settings={"shared_buffers": "512MB"})
        server.start()
        admin_url = server.admin_url()
        where = f"private cluster {tmp / 'pg'} (port {server.port})"
    else:
        where = f"server from DATABASE_URL ({_url_parts(admin_url)['host']}:{_url_parts(admin_url)['port']})"
    name = f"bench_trigger_{uuid.uuid4().hex[:8]}"
    with raw_connection(admin_url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')  # generated name, not input
    url = sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url, where
    finally:
        try:
            with raw_connection(admin_url, autocommit=True) as conn, conn.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            if server is not None:
                server.destroy()
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)


def run_sql(url: str, sql: str, *, notices: list[str] | None = None) -> None:
    with raw_connection(url, autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.execute(sql)
        if notices is not None:
            notices.extend(n.strip() for n in conn.notices)


def scalar(url: str, sql: str) -> object:
    with raw_connection(url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()[0]


def backfill_sql() -> str:
    """The Phase 1 backfill file, then project_stats' own backfill (what the seed runs after a load)."""
    return (next(MIGRATIONS_DIR.glob("*phase1_backfill_data.sql")).read_text()
            + "\nSELECT backfill_project_stats();\n")


def set_triggers(url: str, enabled: bool) -> None:
    verb = "ENABLE" if enabled else "DISABLE"
    # Table and trigger names come from the constant above, never from input.
    run_sql(url, ";".join(f"ALTER TABLE {t} {verb} TRIGGER {trg}" for t, trg in PHASE1_TRIGGERS))


def set_naive(url: str, naive: bool) -> None:
    """Swap the add functions between shipped and always-in-place (naive)."""
    sql = (MIGRATIONS_DIR / "0010_phase1_denormalized_tables.sql").read_text()
    bodies = []
    sql += (MIGRATIONS_DIR / "0012_project_stats.sql").read_text()
    for fn in ("dashboard_stats_add", "conversation_stats_add", "intro_stats_add", "project_stats_add"):
        start = sql.index(f"CREATE OR REPLACE FUNCTION {fn}(")
        body = sql[start:sql.index("\n$$;", start) + 4]  # these bodies hold no nested $$
        if naive:
            body = body.replace("pg_try_advisory_xact_lock(", "pg_try_advisory_xact_lock_naive(")
        bodies.append(body)
    run_sql(url, NAIVE_SQL + "\n".join(bodies))


# Rows of the four live views that differ from the truth, in both directions.
MISMATCH_SQL = (
    """SELECT count(*) FROM (
         (SELECT * FROM user_dashboard_stats_truth_all()
          EXCEPT SELECT user_id, project_count, active_projects, total_upvotes_received, total_comments_received,
                        chains_joined FROM user_dashboard_stats_live)
         UNION ALL
         (SELECT user_id, project_count, active_projects, total_upvotes_received, total_comments_received,
                 chains_joined FROM user_dashboard_stats_live
          EXCEPT SELECT * FROM user_dashboard_stats_truth_all())) x""",
    """SELECT count(*) FROM (
         (SELECT * FROM message_conversations_denorm_truth_all()
          EXCEPT SELECT conversation_id, user1_id, user2_id, is_deleted, message_count, user1_unread_count,
                        user2_unread_count, last_message_id, last_message_at, last_message_sender_id,
                        last_message_preview FROM message_conversations_denorm_live)
         UNION ALL
         (SELECT conversation_id, user1_id, user2_id, is_deleted, message_count, user1_unread_count,
                 user2_unread_count, last_message_id, last_message_at, last_message_sender_id, last_message_preview
          FROM message_conversations_denorm_live
          EXCEPT SELECT * FROM message_conversations_denorm_truth_all())) x""",
    """SELECT count(*) FROM (
         (SELECT * FROM intro_request_stats_truth_all()
          EXCEPT SELECT user_id, requests_sent, sent_pending, sent_accepted, sent_declined, requests_received,
                        received_pending, received_accepted, received_declined FROM intro_request_stats_live)
         UNION ALL
         (SELECT user_id, requests_sent, sent_pending, sent_accepted, sent_declined, requests_received,
                 received_pending, received_accepted, received_declined FROM intro_request_stats_live
          EXCEPT SELECT * FROM intro_request_stats_truth_all())) x""",
    """SELECT count(*) FROM (
         (SELECT * FROM project_stats_truth_all()
          EXCEPT SELECT project_id, upvote_count, comment_count FROM project_stats_live)
         UNION ALL
         (SELECT project_id, upvote_count, comment_count FROM project_stats_live
          EXCEPT SELECT * FROM project_stats_truth_all())) x""",
)


def mismatches(url: str) -> int:
    """Rows of the four live views that differ from the truth, all read in one snapshot."""
    total = 0
    with raw_connection(url) as conn, conn.cursor() as cur:
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        cur.execute("SET LOCAL work_mem = '256MB'")
        for sql in MISMATCH_SQL:
            cur.execute(sql)
            total += cur.fetchone()[0]
        conn.rollback()
    return total


def inserted_counts(url: str) -> dict[str, int]:
    with raw_connection(url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_stat_clear_snapshot()")
        cur.execute("SELECT relname, n_tup_ins + n_tup_del FROM pg_stat_user_tables WHERE relname = ANY(%s)",
                    (list(WRITE_TABLES),))
        return dict(cur.fetchall())


class Folder(threading.Thread):
    """Calls fold_denorm_deltas() every ``interval`` seconds, like the refresh sweep."""

    def __init__(self, url: str, interval: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.url, self.interval, self.folded = url, interval, 0
        self.stop = threading.Event()

    def run(self) -> None:
        with raw_connection(self.url, autocommit=True) as conn, conn.cursor() as cur:
            while not self.stop.wait(self.interval):
                cur.execute("SELECT fold_denorm_deltas()")
                self.folded += cur.fetchone()[0]


def pgbench(url: str, script_dir: Path, scale: Scale, clients: int, duration: int) -> tuple[float, float, str]:
    parts = _url_parts(url)
    exe = shutil.which("pgbench") or str(find_pg_bindir() / "pgbench")
    weights = [f"{script_dir / name}.sql@1" for name in ("upvote", "comment", "message")]
    cmd = [exe, "-n", "-c", str(clients), "-j", str(min(clients, os.cpu_count() or 2)), "-T", str(duration),
           "-h", parts["host"], "-p", parts["port"], "-U", parts["user"]]
    for w in weights:
        cmd += ["-f", w]
    for name, value in (("nusers", scale.users), ("nprojects", scale.projects),
                        ("nconversations", scale.conversations), ("half", scale.users // 2)):
        cmd += ["-D", f"{name}={value}"]
    cmd.append(parts["dbname"])
    env = dict(os.environ, PGPASSWORD=parts["password"]) if parts["password"] else dict(os.environ)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=duration + 120)
    text = out.stdout + out.stderr
    if out.returncode != 0:
        raise RuntimeError(f"pgbench failed ({out.returncode}): {text[-1500:]}")
    tps = float(next(line.split("=")[1].split()[0] for line in text.splitlines() if line.startswith("tps =")))
    lat = float(next(line.split("=")[1].split()[0] for line in text.splitlines()
                     if line.startswith("latency average")))
    return tps, lat, text


def run_segment(url: str, arm: str, seconds: int, script_dir: Path, args: argparse.Namespace,
                verify: bool) -> ArmResult:
    """One pgbench run of ``seconds`` in one arm; afterwards the tables are made exact again."""
    set_triggers(url, arm != "off")
    if arm != "off":
        set_naive(url, arm == "naive")
    run_sql(url, "CHECKPOINT")
    before = inserted_counts(url)
    folder = Folder(url)
    folder.start()
    try:
        tps, lat, _ = pgbench(url, script_dir, SCALES[args.scale], args.clients, seconds)
    finally:
        folder.stop.set()
        folder.join()
    after = inserted_counts(url)
    result = ArmResult("", arm, 0, tps, lat, {t: after.get(t, 0) - before.get(t, 0) for t in WRITE_TABLES},
                       folded=folder.folded)
    if arm == "off":
        run_sql(url, backfill_sql())  # the off arm's writes bypassed the triggers: resync
    else:
        result.deltas_left = int(scalar(url, "SELECT sum(pending_deltas) FROM denorm_delta_backlog"))
        while int(scalar(url, "SELECT fold_denorm_deltas()")) > 0:
            pass
        if verify:
            result.mismatches = mismatches(url)
        set_naive(url, False)
    return result


def run_round(url: str, workload: str, rnd: int, arms: list[str], script_dir: Path,
              args: argparse.Namespace) -> list[ArmResult]:
    """Every arm for ``args.duration`` seconds, split into segments of ``args.segment`` seconds
    (0: one piece) run in turn, order reversed every other round and every other segment, so
    that load drifting over minutes hits each arm alike."""
    pieces = max(1, args.duration // args.segment) if args.segment else 1
    seconds = args.duration // pieces
    order = arms if rnd % 2 else list(reversed(arms))
    totals: dict[str, ArmResult] = {}
    for k in range(pieces):
        for arm in order if k % 2 == 0 else list(reversed(order)):
            last = k == pieces - 1
            seg = run_segment(url, arm, seconds, script_dir, args,
                              verify=args.verify == "each" or (args.verify == "last" and last))
            t = totals.setdefault(arm, ArmResult(workload, arm, rnd, 0.0, 0.0, dict.fromkeys(WRITE_TABLES, 0)))
            t.tps += seg.tps / pieces  # equal-length pieces: the mean is the arm's writes/s
            t.latency_ms += seg.latency_ms / pieces
            t.inserted = {name: t.inserted[name] + seg.inserted[name] for name in WRITE_TABLES}
            t.folded += seg.folded + seg.deltas_left
            if seg.mismatches is not None:
                t.mismatches = (t.mismatches or 0) + seg.mismatches
    for arm in order:
        print(f"  {workload} round {rnd} {arm}: {totals[arm].tps:.0f} writes/s", flush=True)
    return [totals[arm] for arm in order]


def hot_updates(url: str) -> str:
    with raw_connection(url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_stat_clear_snapshot()")
        cur.execute("SELECT relname, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = ANY(%s) "
                    "ORDER BY relname", (["user_dashboard_stats", "message_conversations_denorm",
                                          "intro_request_stats"],))
        return ", ".join(f"{name} {hot:,}/{upd:,} ({100 * hot / upd if upd else 0:.0f}%)"
                         for name, upd, hot in cur.fetchall())


def truth_batch_ms(url: str) -> dict[str, float]:
    """Time each *_truth(keys) for 1000 keys, passed as a literal array as the reconciliation does."""
    timings = {}
    with raw_connection(url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT id::text FROM users ORDER BY id LIMIT 1000 OFFSET 500")
        users = [r[0] for r in cur.fetchall()]
        cur.execute("SELECT id::text FROM conversations ORDER BY id LIMIT 1000 OFFSET 500")
        conversations = [r[0] for r in cur.fetchall()]
        for name, sql, ids in (
            # Whole rows: count(*) would let the planner drop the joined aggregates.
            ("user_dashboard_stats", "SELECT * FROM user_dashboard_stats_truth(%s::uuid[])", users),
            ("message_conversations_denorm", "SELECT * FROM message_conversations_denorm_truth(%s::uuid[])",
             conversations),
            ("intro_request_stats", "SELECT * FROM intro_request_stats_truth(%s::uuid[])", users),
        ):
            cur.execute(sql, (ids,))  # warm
            cur.fetchall()
            started = time.monotonic()
            cur.execute(sql, (ids,))
            assert len(cur.fetchall()) == len(ids)
            timings[name] = (time.monotonic() - started) * 1000
    return timings


def conditions(url: str, where: str, s: Scale, args: argparse.Namespace) -> list[str]:
    with raw_connection(url, autocommit=True) as conn, conn.cursor() as cur:
        settings = []
        for name in SHOWN_SETTINGS:
            cur.execute("SELECT current_setting(%s)", (name,))
            settings.append(f"{name}={cur.fetchone()[0]}")
        cur.execute("SELECT relname, n_live_tup FROM pg_stat_user_tables WHERE relname = ANY(%s) ORDER BY 1",
                    (["users", "projects", "project_upvotes", "project_comments", "conversations", "messages",
                      "intro_requests"],))
        rows = ", ".join(f"{r}={n:,}" for r, n in cur.fetchall())
    return [
        f"database: {where}",
        f"rows after load: {rows}",
        f"clients: {args.clients} (pgbench -j {min(args.clients, os.cpu_count() or 2)}), {args.duration} s per arm, "
        f"{args.rounds} rounds, arm order alternates per round"
        + (f", each arm in {max(1, args.duration // args.segment)} interleaved pieces of "
           f"{args.duration // max(1, args.duration // args.segment)} s" if args.segment else ", whole arms")
        + f"; CPUs: {os.cpu_count()} (shared with pgbench itself and anything else running on the machine)",
        f"exactness check (every row of the four counter tables vs the truth, after folding): {args.verify}",
        "each transaction: one of upvote toggle / comment insert / message insert (equal weights)",
        "postgres: " + ", ".join(settings),
    ]


def report(results: list[ArmResult], arms: list[str]) -> list[str]:
    lines = []
    header = (f"{'workload':8} {'round':>5} {'arm':6} {'writes/s':>9} {'lat ms':>7} {'rows written (upv/com/msg)':>28} "
              f"{'deltas':>7} {'exact':>6}")
    lines.append(header)
    for r in results:
        rows = "/".join(str(r.inserted[t]) for t in WRITE_TABLES)
        exact = "-" if r.mismatches is None else ("yes" if r.mismatches == 0 else f"NO:{r.mismatches}")
        lines.append(f"{r.workload:8} {r.round:>5} {r.arm:6} {r.tps:>9.0f} {r.latency_ms:>7.2f} {rows:>28} "
                     f"{r.folded + r.deltas_left:>7} {exact:>6}")
    lines.append("")
    lines.append("ratios (same round, arm / off):")
    for workload in dict.fromkeys(r.workload for r in results):
        for arm in arms:
            if arm == "off":
                continue
            ratios = []
            for rnd in sorted({r.round for r in results}):
                off = [r.tps for r in results if (r.workload, r.arm, r.round) == (workload, "off", rnd)]
                on = [r.tps for r in results if (r.workload, r.arm, r.round) == (workload, arm, rnd)]
                if off and on:
                    ratios.append(on[0] / off[0])
            if ratios:
                lines.append(f"  {workload:8} {arm:6}/off: " + "  ".join(f"{x:.2f}" for x in ratios)
                             + f"   (mean {statistics.mean(ratios):.2f})")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.trigger_overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="quick")
    parser.add_argument("--duration", type=int, default=None, help="seconds per arm (default 15 quick, 20 bench)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workloads", default="spread,hot")
    parser.add_argument("--naive", action="store_true", help="add a third arm: triggers without the delta path")
    parser.add_argument("--segment", type=int, default=0,
                        help="split each arm into interleaved pieces of this many seconds (0: whole arms, "
                             "the issue's protocol); use on a machine whose load drifts")
    parser.add_argument("--verify", choices=("each", "last", "none"), default=None,
                        help="compare every row with the truth after each on/naive piece, only after an arm's "
                             "last piece, or never (default: each at quick scale, last at bench scale)")
    args = parser.parse_args(argv)
    args.duration = args.duration or (20 if args.scale == "bench" else 15)
    args.verify = args.verify or ("last" if args.scale == "bench" else "each")
    scale = SCALES[args.scale]
    arms = ["off", "on"] + (["naive"] if args.naive else [])
    admin_url = os.environ.get("DATABASE_URL") or None

    with bench_database(admin_url) as (url, where), tempfile.TemporaryDirectory(prefix="bench-scripts-") as sd:
        t0 = time.monotonic()
        migrate(url, out=lambda line: None)
        run_sql(url, BENCH_UUID_SQL)
        params = {**scale.__dict__, "half": scale.users // 2}
        with raw_connection(url, autocommit=True) as conn, conn.cursor() as cur:
            for statement in LOAD_SQL:
                cur.execute(statement, params)
        t1 = time.monotonic()
        notices: list[str] = []
        run_sql(url, backfill_sql(), notices=notices)
        backfill_s = time.monotonic() - t1
        run_sql(url, "VACUUM ANALYZE")
        print(f"loaded in {t1 - t0:.0f} s; backfill {backfill_s:.1f} s: " + "; ".join(notices), flush=True)
        truth_ms = truth_batch_ms(url)
        script_dir = Path(sd)
        results: list[ArmResult] = []
        for workload in args.workloads.split(","):
            for name, text in SCRIPTS.items():
                (script_dir / f"{name}.sql").write_text(text.replace("{target}", TARGETS[workload][name]))
            for rnd in range(1, args.rounds + 1):
                results += run_round(url, workload, rnd, arms, script_dir, args)
        print()
        for line in conditions(url, where, scale, args):
            print(line)
        print(f"backfill (0011, whole tables, after the load): {backfill_s:.1f} s")
        print("in-place updates of the main tables that were HOT (no index touched): " + hot_updates(url))
        print("truth for a batch of 1000 keys (reconciliation unit): "
              + ", ".join(f"{name} {ms:.0f} ms" for name, ms in truth_ms.items()))
        print()
        for line in report(results, arms):
            print(line)
        bad = [r for r in results if r.mismatches]
        if bad:
            print(f"\nFAILED: {len(bad)} arm(s) left rows different from the truth", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
