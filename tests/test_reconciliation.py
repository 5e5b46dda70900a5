"""The nightly reconciliation (tasks/reconciliation.py, tasks/reconcile.py) on real Postgres and Redis.

Claims:
* it finds exactly the discrepancies injected (wrong counters, a deleted row, a
  spurious row, a bogus delta, Redis members added and removed in complete
  sets) and nothing else; ``--no-auto-fix`` changes nothing; a normal run fixes
  all of them; the next run finds zero;
* a fix racing a writer waits for it and writes the value after its commit,
  never the value seen during the check;
* under a concurrent write load on hot keys it reports only the injected
  corruption, fixes it, and leaves every live row equal to the truth;
* two runs at once: the second refuses; a killed run is marked abandoned;
* the CLI's output and exit codes, and the Celery task in a real worker.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import redis as redis_lib
import sqlalchemy as sa
from engine_helpers import WorkerProcess, engine_env, wait_until

from api.cache import RedisUserCache, user_keys
from deploy.embedded import free_port
from schema.db import make_engine, raw_connection
from tasks.celery import create_app
from tasks.reconciliation import (
    ABSENT,
    EXIT_CLEAN,
    EXIT_FAILED,
    EXIT_INCOMPLETE,
    EXIT_REFUSED,
    EXIT_UNFIXED,
    EXIT_USAGE,
    MEMBER,
    PARTS,
    PRESENT,
    REDIS_TABLE,
    ROW,
    TABLES,
    ReconcileOptions,
    ReconcileResult,
    ReconciliationFailed,
    UnknownPart,
    format_value,
    parse_parts,
    run_reconciliation,
)
from tasks.routes import RECONCILE

ROOT = Path(__file__).resolve().parent.parent
DB_TABLES = tuple(TABLES)
# Main and delta tables: what --no-auto-fix must leave byte-for-byte unchanged.
CHECKSUM_TABLES = DB_TABLES + tuple(f"{t}_deltas" for t in DB_TABLES)


# -- fixtures and helpers -------------------------------------------------------

@pytest.fixture()
def db(create_database: Callable[..., str], demo_template: str) -> str:
    """A fresh copy of the demo database per test (tests corrupt it)."""
    return create_database(template=demo_template, prefix="recon")


@pytest.fixture()
def engine(db: str) -> Iterator[sa.Engine]:
    eng = make_engine(db, pool_size=4)
    yield eng
    eng.dispose()


@pytest.fixture()
def rclient(redis_url: str, redis_client: redis_lib.Redis) -> Iterator[redis_lib.Redis]:
    """A client like the job's (decoded strings) on the session's Redis, flushed before and after."""
    client = redis_lib.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


class Lines(list):
    """Collects the job's output lines."""

    def __call__(self, line: str) -> None:
        self.append(line)

    def found(self) -> list[str]:
        return [x for x in self if x.startswith("FOUND ")]


def reconcile(engine: sa.Engine, client: redis_lib.Redis | None, out: Callable[[str], None] | None = None,
              **options: Any) -> ReconcileResult:
    options.setdefault("redis_confirm_seconds", 0.2)
    return run_reconciliation(engine, client, ReconcileOptions(**options), out=Lines() if out is None else out)


def findings_of(engine: sa.Engine, run_id: int) -> list[sa.Row]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(
            "SELECT table_name, row_key, column_name, stored, truth, fixed FROM reconciliation_findings "
            "WHERE run_id = :r ORDER BY id"), {"r": run_id}))


def run_row(engine: sa.Engine, run_id: int) -> sa.RowMapping:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT * FROM reconciliation_runs WHERE id = :r"), {"r": run_id}).mappings().one()


def scalar(engine: sa.Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar()


def execute(db_url: str, *statements: str, replica: bool = False) -> None:
    """Run statements as a plain client; ``replica`` bypasses triggers and foreign keys (a DBA's bulk load)."""
    with raw_connection(db_url) as conn, conn.cursor() as cur:
        if replica:
            cur.execute("SET session_replication_role = replica")
        for sql in statements:
            cur.execute(sql)
        conn.commit()


def checksums(engine: sa.Engine) -> dict[str, str]:
    with engine.connect() as conn:
        return {t: conn.execute(sa.text(
            f"SELECT md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) FROM {t} x")).scalar()
            for t in CHECKSUM_TABLES}


def redis_dump(client: redis_lib.Redis) -> dict[str, Any]:
    dump: dict[str, Any] = {}
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == "set":
            dump[key] = sorted(client.smembers(key))
        elif kind == "hash":
            dump[key] = client.hgetall(key)
        elif kind == "string":
            dump[key] = client.get(key)
        else:
            dump[key] = kind
    return dump


def live_differs_from_truth(engine: sa.Engine) -> dict[str, int]:
    """Rows where a *_live view and the full-table truth disagree, per table, in one snapshot."""
    counts = {}
    with engine.connect() as conn:
        conn.execute(sa.text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
        for name, spec in TABLES.items():
            cols = ", ".join((spec.key_column, *spec.columns))
            # Names come from the TABLES registry.
            counts[name] = conn.execute(sa.text(
                f"SELECT count(*) FROM ((SELECT {cols} FROM {name}_live EXCEPT SELECT {cols} FROM {name}_truth_all()) "
                f"UNION ALL (SELECT {cols} FROM {name}_truth_all() EXCEPT SELECT {cols} FROM {name}_live)) d"
            )).scalar()
        conn.rollback()
    return {k: v for k, v in counts.items() if v}


def fold_all(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        for _ in range(50):
            conn.execute(sa.text("SELECT fold_denorm_deltas()"))
            if not conn.execute(sa.text("SELECT sum(pending_deltas) FROM denorm_delta_backlog")).scalar():
                return
    raise AssertionError("deltas still pending after 50 folds")


def pick(engine: sa.Engine, sql: str, offset: int = 0) -> str:
    with engine.connect() as conn:
        return str(conn.execute(sa.text(f"{sql} OFFSET :o LIMIT 1"), {"o": offset}).scalar_one())


def cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tasks.reconcile", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def cli_env(db: str, redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DATABASE_", "REDIS_"))}
    env.update({"DATABASE_URL": db, "REDIS_URL": redis_url, "APP_ENV": "test", "PYTHONPATH": str(ROOT)})
    return env


# -- pure helpers -----------------------------------------------------------------

def test_parse_parts_and_format_value() -> None:
    assert parse_parts(None) == PARTS
    assert parse_parts(["redis", "intro_request_stats"]) == ("intro_request_stats", "redis")
    with pytest.raises(UnknownPart, match="valid: user_dashboard_stats, message_conversations_denorm"):
        parse_parts(["bogus"])
    assert format_value(None) == "null"
    assert format_value(True) == "true"
    assert format_value(12) == "12"
    assert format_value("two words") == '"two words"'
    assert format_value("a=b") == '"a=b"'


# -- the main claim: find exactly, --no-auto-fix changes nothing, fix, then zero ---

def inject_corruption(db: str, engine: sa.Engine, client: redis_lib.Redis
                      ) -> tuple[set[tuple[str, str, str]], dict[str, list[str]]]:
    """Corrupt derived data in every way the job must catch.

    Returns the expected (table, key, column) set and the Redis users by kind."""
    user_sql = "SELECT user_id FROM user_dashboard_stats WHERE total_upvotes_received > 0 ORDER BY user_id"
    a, b, f = pick(engine, user_sql, 0), pick(engine, user_sql, 1), pick(engine, user_sql, 2)
    conv = pick(engine, "SELECT conversation_id FROM message_conversations_denorm WHERE message_count > 1 "
                        "ORDER BY conversation_id")
    intro_user = pick(engine, "SELECT user_id FROM intro_request_stats WHERE sent_pending > 0 ORDER BY user_id")
    intro_gone = pick(engine, "SELECT user_id FROM intro_request_stats ORDER BY user_id", 5)
    ghost_user, ghost_conv = str(uuid.uuid4()), str(uuid.uuid4())
    execute(
        db,
        f"UPDATE user_dashboard_stats SET total_upvotes_received = total_upvotes_received + 3, chains_joined = 99 "
        f"WHERE user_id = '{a}'",
        f"DELETE FROM user_dashboard_stats WHERE user_id = '{b}'",
        # A delta row with no base write behind it: the live value drifts, the main row does not.
        f"INSERT INTO user_dashboard_stats_deltas (user_id, project_count) VALUES ('{f}', 2)",
        f"UPDATE message_conversations_denorm SET message_count = message_count + 1, "
        f"last_message_preview = 'not the last message' WHERE conversation_id = '{conv}'",
        f"UPDATE intro_request_stats SET sent_pending = sent_pending + 1 WHERE user_id = '{intro_user}'",
        f"DELETE FROM intro_request_stats WHERE user_id = '{intro_gone}'",
    )
    project_sql = "SELECT project_id FROM project_stats WHERE upvote_count > 0 ORDER BY project_id"
    pa, pb, pd = pick(engine, project_sql, 0), pick(engine, project_sql, 1), pick(engine, project_sql, 2)
    execute(
        db,
        f"UPDATE project_stats SET upvote_count = upvote_count + 5 WHERE project_id = '{pa}'",
        f"DELETE FROM project_stats WHERE project_id = '{pb}'",
        f"INSERT INTO project_stats_deltas (project_id, comment_count) VALUES ('{pd}', -1)",
    )
    # Spurious rows for entities that do not exist (foreign keys bypassed, as a bulk load can).
    execute(db, f"INSERT INTO intro_request_stats (user_id, requests_sent) VALUES ('{ghost_user}', 1)",
            f"INSERT INTO message_conversations_denorm (conversation_id, user1_id, user2_id, message_count) "
            f"VALUES ('{ghost_conv}', '{a}', '{b}', 4)", replica=True)

    # Redis sets loaded the way the API loads them (complete marker included).
    voters_sql = "SELECT user_id FROM project_upvotes GROUP BY user_id HAVING count(*) > 2 ORDER BY user_id"
    u_add, u_remove, u_clean, u_unmarked = (pick(engine, voters_sql, i) for i in range(4))
    u_empty = pick(engine, "SELECT id FROM users u WHERE NOT EXISTS "
                           "(SELECT 1 FROM project_upvotes p WHERE p.user_id = u.id) ORDER BY id")
    cache = RedisUserCache(client, engine)
    for u in (u_add, u_remove, u_clean, u_unmarked, u_empty):
        assert cache.rebuild(u)
    bogus = str(uuid.uuid4())
    removed = sorted(client.smembers(user_keys(u_remove)[0]))[0]
    client.sadd(user_keys(u_add)[0], bogus)
    client.srem(user_keys(u_remove)[0], removed)
    client.sadd(user_keys(u_empty)[0], bogus)
    # Wrong, but not marked complete: never served as the truth, so not a discrepancy.
    client.sadd(user_keys(u_unmarked)[0], bogus)
    client.delete(user_keys(u_unmarked)[1])

    return {
        ("user_dashboard_stats", a, "total_upvotes_received"),
        ("user_dashboard_stats", a, "chains_joined"),
        ("user_dashboard_stats", b, ROW),
        ("user_dashboard_stats", f, "project_count"),
        ("message_conversations_denorm", conv, "message_count"),
        ("message_conversations_denorm", conv, "last_message_preview"),
        ("message_conversations_denorm", ghost_conv, ROW),
        ("intro_request_stats", intro_user, "sent_pending"),
        ("intro_request_stats", intro_gone, ROW),
        ("intro_request_stats", ghost_user, ROW),
        ("project_stats", pa, "upvote_count"),
        ("project_stats", pb, ROW),
        ("project_stats", pd, "comment_count"),
        (REDIS_TABLE, f"{u_add}/{bogus}", MEMBER),
        (REDIS_TABLE, f"{u_remove}/{removed}", MEMBER),
        (REDIS_TABLE, f"{u_empty}/{bogus}", MEMBER),
    }, {"corrupted": [u_add, u_remove, u_empty], "clean": [u_clean], "unmarked": [u_unmarked]}


def test_finds_exactly_the_injected_discrepancies_report_only_changes_nothing_fix_then_zero(
        db: str, engine: sa.Engine, rclient: redis_lib.Redis) -> None:
    assert reconcile(engine, rclient).found == 0, "the demo data starts consistent"
    expected, redis_users = inject_corruption(db, engine, rclient)
    before_db, before_redis = checksums(engine), redis_dump(rclient)

    out = Lines()
    report = reconcile(engine, rclient, out, auto_fix=False)
    got = {(r.table_name, r.row_key, r.column_name) for r in findings_of(engine, report.run_id)}
    assert got == expected
    assert len(out.found()) == len(expected)
    assert (report.found, report.fixed, report.exit_code) == (len(expected), 0, EXIT_UNFIXED)
    assert checksums(engine) == before_db, "--no-auto-fix wrote to a denormalized table"
    assert redis_dump(rclient) == before_redis, "--no-auto-fix changed Redis"
    row = run_row(engine, report.run_id)
    assert (row["status"], row["auto_fix"], row["discrepancies_found"], row["discrepancies_fixed"]) == \
        ("completed", False, len(expected), 0)
    # The line format the guide's `grep FOUND | sort | uniq -c` relies on.
    a_line = next(x for x in out.found() if "column=total_upvotes_received" in x)
    assert a_line.startswith("FOUND table=user_dashboard_stats key=") and " stored=" in a_line and " true=" in a_line
    assert any(f"column={ROW} stored={ABSENT} true={PRESENT}" in x for x in out.found())
    assert any(f"table={REDIS_TABLE}" in x and f"column={MEMBER} stored={PRESENT} true={ABSENT}" in x
               for x in out.found())
    assert out[-1].startswith(f"SUMMARY run={report.run_id} status=completed auto_fix=false")

    fix = reconcile(engine, rclient, auto_fix=True)
    rows = findings_of(engine, fix.run_id)
    assert {(r.table_name, r.row_key, r.column_name) for r in rows} == expected
    assert all(r.fixed for r in rows)
    assert (fix.found, fix.fixed, fix.exit_code) == (len(expected), len(expected), EXIT_CLEAN)
    assert live_differs_from_truth(engine) == {}
    for u in redis_users["corrupted"]:
        assert rclient.exists(*user_keys(u)[:2]) == 0, "a corrupted set must be invalidated"
    for u in redis_users["clean"]:
        assert rclient.exists(user_keys(u)[1]) == 1, "a correct set must be left alone"

    again = reconcile(engine, rclient, auto_fix=True)
    assert (again.found, again.exit_code) == (0, EXIT_CLEAN)
    # The invalidated sets rebuild correctly from Postgres on the next read.
    cache = RedisUserCache(rclient, engine)
    for u in redis_users["corrupted"]:
        assert cache.rebuild(u)
    assert reconcile(engine, rclient, tables=("redis",)).found == 0


def test_redis_difference_from_a_write_in_flight_is_not_reported(
        engine: sa.Engine, rclient: redis_lib.Redis) -> None:
    """Postgres committed, Redis not yet updated: the difference goes away within the confirm window."""
    user = pick(engine, "SELECT user_id FROM project_upvotes GROUP BY user_id ORDER BY user_id")
    project = pick(engine, f"SELECT id FROM projects p WHERE NOT EXISTS (SELECT 1 FROM project_upvotes v "
                           f"WHERE v.user_id = '{user}' AND v.project_id = p.id) ORDER BY id")
    cache = RedisUserCache(rclient, engine)
    assert cache.rebuild(user)
    with engine.begin() as conn:
        changed_us = conn.execute(sa.text(
            "INSERT INTO project_upvotes (user_id, project_id) VALUES (:u, :p) "
            "RETURNING (extract(epoch FROM clock_timestamp()) * 1e6)::bigint"), {"u": user, "p": project}).scalar()

    def out(line: str) -> None:
        if line.startswith("redis:") and "confirming" in line:
            cache.add_upvote(user, project, changed_us)  # the API's post-commit update arrives

    result = reconcile(engine, rclient, out, tables=("redis",), redis_confirm_seconds=0.5)
    assert (result.found, result.parts["redis"].unsettled) == (0, 1)


# -- fixes under concurrency ---------------------------------------------------------

def wait_for_lock_wait(engine: sa.Engine) -> None:
    """Until a backend of this database (the fix: nothing else runs here) waits for a lock."""
    wait_until(lambda: scalar(engine, """
        SELECT count(*) FROM pg_stat_activity
        WHERE datname = current_database() AND wait_event_type = 'Lock'"""),
        20, what="the fix to wait for the writer's lock")


def test_fix_waits_for_an_in_flight_writer_and_writes_the_value_after_its_commit(
        db: str, engine: sa.Engine) -> None:
    """The check sees a drifted row; a writer is updating that row right now. A fix
    that wrote the truth seen during the check would lose the writer's upvote."""
    with engine.connect() as conn:
        owner, project = (str(x) for x in conn.execute(sa.text(
            "SELECT p.user_id, p.id FROM projects p WHERE NOT p.is_deleted ORDER BY p.id LIMIT 1")).one())
    voter = pick(engine, f"SELECT id FROM users u WHERE NOT EXISTS (SELECT 1 FROM project_upvotes v "
                         f"WHERE v.user_id = u.id AND v.project_id = '{project}') ORDER BY id")
    truth_before = scalar(engine, "SELECT total_upvotes_received FROM user_dashboard_stats_truth(ARRAY[CAST(:u AS uuid)])",
                          u=owner)
    execute(db, f"UPDATE user_dashboard_stats SET total_upvotes_received = total_upvotes_received + 10 "
                f"WHERE user_id = '{owner}'")

    writer = psycopg2.connect(db)
    try:
        with writer.cursor() as cur:  # holds the owner's row lock (in-place update) until commit
            cur.execute("INSERT INTO project_upvotes (user_id, project_id) VALUES (%s, %s)", (voter, project))
        box: dict[str, Any] = {}
        out = Lines()
        t = threading.Thread(target=lambda: box.setdefault(
            "r", reconcile(engine, None, out, tables=("user_dashboard_stats",))))
        t.start()
        wait_for_lock_wait(engine)
        writer.commit()
        t.join(30)
    finally:
        writer.close()
    result: ReconcileResult = box["r"]
    rows = findings_of(engine, result.run_id)
    assert [(r.row_key, r.column_name, r.stored, r.truth, r.fixed) for r in rows] == \
        [(owner, "total_upvotes_received", str(truth_before + 10), str(truth_before), True)]
    live = scalar(engine, "SELECT total_upvotes_received FROM user_dashboard_stats_live WHERE user_id = :u", u=owner)
    assert live == truth_before + 1, "the fix must include the upvote committed while it waited"
    assert live_differs_from_truth(engine) == {}


LOAD_WRITERS = 6
LOAD_MIN_SECONDS = 4.0


def test_under_concurrent_writes_on_hot_keys_only_real_drift_is_found_and_fixed(
        db: str, engine: sa.Engine, rclient: redis_lib.Redis) -> None:
    """Writers hit a few hot keys (so delta rows happen) while runs go on; one corruption is
    injected on the hottest row before the load. Every run reports only that corruption, the
    first fixes it under the load, and afterwards every live row equals the truth."""
    hot_owner = pick(engine, "SELECT p.user_id FROM projects p JOIN project_upvotes v ON v.project_id = p.id "
                             "WHERE NOT p.is_deleted GROUP BY p.user_id ORDER BY count(*) DESC, p.user_id")
    with engine.connect() as conn:
        hot_projects = [str(x) for x in conn.execute(sa.text(
            "SELECT id FROM projects WHERE user_id = :u AND NOT is_deleted ORDER BY id LIMIT 3"),
            {"u": hot_owner}).scalars()]
        users = [str(x) for x in conn.execute(sa.text("SELECT id FROM users ORDER BY id LIMIT 300")).scalars()]
        hot_convs = [str(x) for x in conn.execute(sa.text(
            "SELECT conversation_id FROM messages GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 2")).scalars()]
        hot_investor = str(conn.execute(sa.text(
            "SELECT investor_id FROM intro_requests GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1")).scalar())
        chains = [str(x) for x in conn.execute(sa.text("SELECT id FROM chains ORDER BY id LIMIT 2")).scalars()]
    execute(db,
            f"UPDATE user_dashboard_stats SET total_upvotes_received = total_upvotes_received + 7 "
            f"WHERE user_id = '{hot_owner}'",
            f"UPDATE message_conversations_denorm SET user1_unread_count = user1_unread_count + 3 "
            f"WHERE conversation_id = '{hot_convs[0]}'")
    injected = {("user_dashboard_stats", hot_owner, "total_upvotes_received"),
                ("message_conversations_denorm", hot_convs[0], "user1_unread_count")}

    stop = threading.Event()
    errors: list[str] = []
    counts = {"ops": 0, "folded": 0, "retried": 0}
    lock = threading.Lock()

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        ops = [
            (6, "INSERT INTO project_upvotes (user_id, project_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
             lambda: (rng.choice(users), rng.choice(hot_projects))),
            (4, "DELETE FROM project_upvotes WHERE user_id = %s AND project_id = %s",
             lambda: (rng.choice(users), rng.choice(hot_projects))),
            (3, "INSERT INTO project_comments (project_id, user_id, body) VALUES (%s, %s, 'load')",
             lambda: (rng.choice(hot_projects), rng.choice(users))),
            (2, "UPDATE project_comments SET is_deleted = NOT is_deleted WHERE id = "
                "(SELECT id FROM project_comments WHERE project_id = %s ORDER BY random() LIMIT 1)",
             lambda: (rng.choice(hot_projects),)),
            (5, "INSERT INTO messages (conversation_id, sender_id, body, is_read) "
                "SELECT c.id, CASE WHEN %s THEN c.user1_id ELSE c.user2_id END, 'load', %s FROM conversations c "
                "WHERE c.id = %s", lambda: (rng.random() < 0.5, rng.random() < 0.3, rng.choice(hot_convs))),
            (3, "UPDATE messages SET is_read = NOT is_read WHERE id = "
                "(SELECT id FROM messages WHERE conversation_id = %s ORDER BY random() LIMIT 1)",
             lambda: (rng.choice(hot_convs),)),
            # Only on the second hot conversation: deleting a last message rebuilds its row from
            # the truth (Phase 1's rare path), which would repair the corruption injected in the first.
            (1, "UPDATE messages SET is_deleted = NOT is_deleted WHERE id = (SELECT id FROM messages "
                "WHERE conversation_id = %s ORDER BY created_at DESC LIMIT 1 OFFSET floor(random() * 3)::int)",
             lambda: (hot_convs[1],)),
            (2, "INSERT INTO intro_requests (requester_id, investor_id) VALUES (%s, %s)",
             lambda: (rng.choice(users), hot_investor)),
            (3, "UPDATE intro_requests SET status = (ARRAY['pending','accepted','declined','withdrawn'])"
                "[1 + floor(random() * 4)::int] WHERE id = (SELECT id FROM intro_requests WHERE investor_id = %s "
                "ORDER BY random() LIMIT 1)", lambda: (hot_investor,)),
            (2, "INSERT INTO chain_members (chain_id, user_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
             lambda: (rng.choice(chains), hot_owner)),
            (2, "DELETE FROM chain_members WHERE chain_id = %s AND user_id = %s",
             lambda: (rng.choice(chains), hot_owner)),
        ]
        weights = [w for w, _, _ in ops]
        try:
            with raw_connection(db, autocommit=True) as conn, conn.cursor() as c:
                while not stop.is_set():
                    _, sql, params = rng.choices(ops, weights)[0]
                    try:
                        c.execute(sql, params())
                    except psycopg2.errors.DeadlockDetected:
                        with lock:  # writers racing each other on a message delete; not the job's doing
                            counts["retried"] += 1
                        continue
                    with lock:
                        counts["ops"] += 1
        except Exception as exc:
            errors.append(f"writer {seed}: {type(exc).__name__}: {exc}")
            stop.set()

    def folder() -> None:  # what the sweep does every couple of seconds
        try:
            with raw_connection(db, autocommit=True) as conn, conn.cursor() as c:
                while not stop.wait(0.3):
                    c.execute("SELECT fold_denorm_deltas()")
                    with lock:
                        counts["folded"] += c.fetchone()[0]
        except Exception as exc:
            errors.append(f"folder: {type(exc).__name__}: {exc}")
            stop.set()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(LOAD_WRITERS)]
    threads.append(threading.Thread(target=folder))
    for t in threads:
        t.start()
    runs: list[ReconcileResult] = []
    try:
        wait_until(lambda: counts["ops"] > 50 or stop.is_set(), 30, what="the load to start")
        started = time.monotonic()
        # Small batches: more snapshots, so more chances to catch a race as a false finding.
        while not stop.is_set() and (len(runs) < 3 or time.monotonic() - started < LOAD_MIN_SECONDS):
            runs.append(reconcile(engine, rclient, tables=DB_TABLES, batch_size=200))
        ops_during = counts["ops"]
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert errors == [], errors
    print("load:", counts, "runs:", [(r.found, r.fixed, round(r.seconds, 2)) for r in runs])

    first = {(r.table_name, r.row_key, r.column_name) for r in findings_of(engine, runs[0].run_id)}
    assert first == injected
    assert runs[0].fixed == runs[0].found == len(injected)
    for later in runs[1:]:
        assert findings_of(engine, later.run_id) == [], "a finding during the load that was not injected"
    assert ops_during > 300, counts
    pending = scalar(engine, "SELECT sum(pending_deltas) FROM denorm_delta_backlog")
    assert counts["folded"] + pending > 0, "no delta rows happened: the hot keys were not contended"

    fold_all(engine)
    assert live_differs_from_truth(engine) == {}
    final = reconcile(engine, rclient)
    assert (final.found, final.exit_code) == (0, EXIT_CLEAN)


def test_mass_drift_every_row_missing_is_found_and_rebuilt(db: str, engine: sa.Engine) -> None:
    """An operator's mistake (rows deleted wholesale) is found row by row and repaired in chunks."""
    users = scalar(engine, "SELECT count(*) FROM users")
    execute(db, "DELETE FROM user_dashboard_stats")
    out = Lines()
    result = reconcile(engine, None, out, tables=("user_dashboard_stats",))
    assert (result.found, result.fixed, result.exit_code) == (users, users, EXIT_CLEAN)
    assert all(f"column={ROW} stored={ABSENT} true={PRESENT}" in x for x in out.found())
    assert scalar(engine, "SELECT count(*) FROM user_dashboard_stats") == users
    assert live_differs_from_truth(engine) == {}


# -- one run at a time -------------------------------------------------------------

def test_a_second_run_refuses_while_one_is_running(db: str, engine: sa.Engine, rclient: redis_lib.Redis,
                                                     redis_url: str) -> None:
    holding, release = threading.Event(), threading.Event()

    def slow_out(line: str) -> None:
        if line.startswith("reconciliation run="):
            holding.set()
            release.wait(30)

    box: dict[str, Any] = {}
    t = threading.Thread(target=lambda: box.setdefault("r", reconcile(engine, rclient, slow_out)))
    t.start()
    try:
        assert holding.wait(30)
        second = reconcile(engine, rclient)
        assert second.status == "refused" and second.run_id is None
        assert second.exit_code == EXIT_REFUSED
        assert "another reconciliation is running" in (second.detail or "")
        first_id = scalar(engine, "SELECT id FROM reconciliation_runs WHERE status = 'running'")
        assert f"run {first_id} " in (second.detail or "")
        proc = cli(cli_env(db, redis_url), "--no-auto-fix")
        assert proc.returncode == EXIT_REFUSED
        assert proc.stderr.strip().startswith("refused: another reconciliation is running")
        assert scalar(engine, "SELECT count(*) FROM reconciliation_runs") == 1, "a refused run records nothing"
    finally:
        release.set()
        t.join(60)
    assert box["r"].status == "completed"
    assert reconcile(engine, rclient).status == "completed", "the lock is released after a run"


def test_a_killed_run_is_marked_abandoned_by_the_next(db: str, engine: sa.Engine, rclient: redis_lib.Redis,
                                                       redis_url: str) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "tasks.reconcile", "--batch-size", "50", "--pause-ms", "500"],
                            cwd=ROOT, env=cli_env(db, redis_url), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        killed_id = wait_until(lambda: scalar(engine, "SELECT id FROM reconciliation_runs WHERE status = 'running'"),
                               30, what="the CLI run to start")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    # Postgres ends the dead client's session (and its lock) once it notices the closed socket.
    result = wait_until(lambda: (r := reconcile(engine, rclient)).status != "refused" and r, 30,
                        what="the killed run's lock to go")
    assert result.status == "completed"
    old = run_row(engine, killed_id)
    assert old["status"] == "abandoned" and old["finished_at"] is not None
    assert f"marked by run {result.run_id}" in old["error"]


def test_a_failing_run_is_recorded_failed_and_releases_the_lock(engine: sa.Engine) -> None:
    with pytest.raises(ReconciliationFailed) as failed:
        # A 1 ms statement budget: the first batch's truth query is cancelled.
        reconcile(engine, None, tables=("user_dashboard_stats",), statement_timeout_ms=1)
    row = run_row(engine, failed.value.result.run_id)
    assert row["status"] == "failed" and row["finished_at"] is not None
    assert "statement timeout" in row["error"]
    assert failed.value.result.exit_code == EXIT_FAILED
    assert reconcile(engine, None, tables=("user_dashboard_stats",)).status == "completed"


# -- Redis unavailable ---------------------------------------------------------------

def test_redis_down_the_database_part_still_runs_and_the_run_is_partial(db: str, engine: sa.Engine) -> None:
    execute(db, "UPDATE intro_request_stats SET requests_sent = requests_sent + 1 WHERE user_id = "
                "(SELECT user_id FROM intro_request_stats ORDER BY user_id LIMIT 1)")
    dead = redis_lib.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5, socket_timeout=0.5,
                           decode_responses=True)
    result = reconcile(engine, dead)
    assert result.status == "partial"
    assert result.parts["redis"].status == "unavailable" and "Connection" in (result.parts["redis"].error or "")
    assert result.parts["intro_request_stats"].found == 1 and result.fixed == 1
    assert result.exit_code == EXIT_INCOMPLETE
    assert run_row(engine, result.run_id)["status"] == "partial"


# -- the command ------------------------------------------------------------------------

def test_cli_reports_with_no_auto_fix_fixes_without_and_rejects_a_bogus_table(
        db: str, engine: sa.Engine, redis_url: str, rclient: redis_lib.Redis) -> None:
    env = cli_env(db, redis_url)
    user = pick(engine, "SELECT user_id FROM user_dashboard_stats ORDER BY user_id")
    execute(db, f"UPDATE user_dashboard_stats SET project_count = project_count + 2 WHERE user_id = '{user}'")

    report = cli(env, "--no-auto-fix")
    assert report.returncode == EXIT_UNFIXED, report.stderr
    lines = report.stdout.splitlines()
    assert [x for x in lines if x.startswith("FOUND")] == [
        f"FOUND table=user_dashboard_stats key={user} column=project_count "
        f"stored={scalar(engine, 'SELECT project_count FROM user_dashboard_stats WHERE user_id = :u', u=user)} "
        f"true={scalar(engine, 'SELECT project_count FROM user_dashboard_stats_truth(ARRAY[CAST(:u AS uuid)])', u=user)}"
    ]
    summary = lines[-1]
    assert summary.startswith("SUMMARY run=") and "found=1 fixed=0 unfixed=1" in summary and "seconds=" in summary
    assert "rows_checked=" in summary

    fixed = cli(env)
    assert fixed.returncode == EXIT_CLEAN, fixed.stdout + fixed.stderr
    assert "found=1 fixed=1 unfixed=0" in fixed.stdout.splitlines()[-1]
    clean = cli(env, "--table", "user_dashboard_stats", "--no-auto-fix")
    assert clean.returncode == EXIT_CLEAN
    assert "tables=user_dashboard_stats " in clean.stdout

    bogus = cli(env, "--table", "bogus")
    assert bogus.returncode == EXIT_USAGE
    assert bogus.stdout == ""
    assert bogus.stderr.strip().splitlines() == [
        "error: unknown table 'bogus'; valid: user_dashboard_stats, message_conversations_denorm, "
        "intro_request_stats, project_stats, redis"]
    helped = cli(env, "--help")
    assert helped.returncode == 0 and "Exit status:" in helped.stdout and "--no-auto-fix" in helped.stdout

    unset = cli({k: v for k, v in env.items() if k != "DATABASE_URL"})
    assert unset.returncode == EXIT_USAGE and "DATABASE_URL" in unset.stderr
    down = cli({**env, "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"})
    assert down.returncode == EXIT_FAILED and down.stdout == ""
    assert len(down.stderr.strip().splitlines()) == 1 and "cannot connect to PostgreSQL" in down.stderr


def test_cli_progress_lines_at_small_batches(db: str, redis_url: str, redis_client: redis_lib.Redis) -> None:
    proc = cli(cli_env(db, redis_url), "--table", "user_dashboard_stats", "--batch-size", "100")
    assert proc.returncode == EXIT_CLEAN
    progress = [x for x in proc.stdout.splitlines() if x.startswith("progress ")]
    assert progress, proc.stdout
    assert "table=user_dashboard_stats batches=10 rows_checked=1000 " in progress[0] and "rate=" in progress[0]


# -- the Celery task in a real worker ---------------------------------------------------

def test_celery_task_runs_in_a_maintenance_worker(db: str, engine: sa.Engine, redis_url: str,
                                                  redis_client: redis_lib.Redis, tmp_path: Path) -> None:
    user = pick(engine, "SELECT user_id FROM intro_request_stats ORDER BY user_id", 7)
    execute(db, f"UPDATE intro_request_stats SET received_pending = 5 WHERE user_id = '{user}'")
    env = engine_env(db, redis_url)
    from schema.settings import Settings

    app = create_app(Settings.from_env(env), main="recon-tests")
    worker = WorkerProcess.create("recon", env, tmp_path, queues="maintenance", concurrency=1).start()
    try:
        worker.wait_ready(app)
        report = app.send_task(RECONCILE, kwargs={"auto_fix": False, "tables": ["intro_request_stats"]}
                               ).get(timeout=60)
        assert (report["status"], report["found"], report["fixed"], report["exit_code"]) == \
            ("completed", 1, 0, EXIT_UNFIXED)
        row = run_row(engine, report["run_id"])
        assert (row["source"], row["auto_fix"], row["tables"], row["status"]) == \
            ("celery", False, ["intro_request_stats"], "completed")
        assert f"FOUND table=intro_request_stats key={user} column=received_pending" in worker.log_tail(200)
        with pytest.raises(UnknownPart):
            app.send_task(RECONCILE, kwargs={"tables": ["bogus"]}).get(timeout=60)
        fixed = app.send_task(RECONCILE).get(timeout=120)
        assert (fixed["status"], fixed["found"], fixed["fixed"]) == ("completed", 1, 1)
        assert run_row(engine, fixed["run_id"])["tables"] == list(PARTS)
    except BaseException:
        print(worker.log_tail())
        raise
    finally:
        worker.stop()
        app.close()
