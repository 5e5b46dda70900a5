"""The nightly reconciliation: compare every derived value with the base tables, fix what drifted.

A plain service (no Celery here): ``tasks/reconcile.py`` wraps it as the task
``tasks.reconcile`` and as ``python -m tasks.reconcile``.

What is compared
    * the three Phase 1 tables, row by row: the value the system serves (the
      ``*_live`` views: main row plus pending deltas) against the truth
      recomputed from the base tables (``*_truth(keys)``), including rows that
      are missing and rows whose entity does not exist;
    * every Redis set ``user:upvotes:<u>`` that is marked ``:complete`` (only
      those are served as the whole truth, see api/cache.py) against
      ``project_upvotes``.

Each discrepancy is one line ``FOUND table=<t> key=<k> column=<c> stored=<v>
true=<v>`` (no timestamp, so ``grep FOUND log | sort | uniq -c`` counts a key
that drifts night after night) and one row in ``reconciliation_findings``.

Why a finding is real and not a race
    Stored and truth of a batch are read in ONE snapshot (a REPEATABLE READ,
    READ ONLY transaction). Phase 1 writes its derived rows (or delta rows) in
    the same transaction as the base rows, so within one snapshot they agree
    unless something really drifted. Redis cannot share a Postgres snapshot:
    a set differs from Postgres for a moment after every write (the API
    updates Redis after its commit), so a Redis difference is reported only if
    the same member still differs the same way ``redis_confirm_seconds`` later.

Why a fix is never stale
    Rows are repaired with Phase 1's ``rebuild_<table>(keys)``: it takes the
    keys' row locks (the advisory locks every in-place writer holds until its
    commit), then, in its next statement (a new READ COMMITTED snapshot,
    taken after the lock), drops the deltas visible in that snapshot and
    writes the truth of that same snapshot. Writers that commit later are not
    in that truth and their delta rows were not dropped, so they add on top.
    The value written is recomputed after the lock, never the one seen during
    the check. A fixed key is then compared again in a fresh snapshot, and
    only keys that now agree count as fixed. Redis is repaired by deleting
    the user's set and ``:complete`` marker: the next read rebuilds it from
    Postgres with the cache's own race-safe install.

One run at a time
    The run holds a Postgres session advisory lock (731100, 1) from start to
    end. A second run (two Beats, cron and Beat) refuses at once. A run killed
    mid-way leaves its row ``running``; its lock went with its session, so the
    next run takes the lock and marks such rows ``abandoned``.

Work is done in batches of keys (keyset pagination on the primary key), each
in its own short transaction: no long locks, no table in memory.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import redis as redis_lib
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from schema.db import make_engine, queries
from schema.settings import Settings

log = logging.getLogger(__name__)

USER_DASHBOARD_STATS = "user_dashboard_stats"
MESSAGE_CONVERSATIONS_DENORM = "message_conversations_denorm"
INTRO_REQUEST_STATS = "intro_request_stats"
PROJECT_STATS = "project_stats"  # 0012: the read models' per-project counters
REDIS_PART = "redis"
# Name used in FOUND lines and findings for the Redis user cache.
REDIS_TABLE = "redis:user:upvotes"
# The Redis key layout of api/cache.py (tasks/ must not import api/).
REDIS_KEY_PREFIX = "user:upvotes:"
REDIS_COMPLETE_SUFFIX = ":complete"

ROW = "row"  # column name of a missing or extra row
MEMBER = "member"  # column name of a Redis set member
PRESENT, ABSENT = "present", "absent"

NIL_UUID = "00000000-0000-0000-0000-000000000000"
_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

# Postgres errors a fix may hit beside concurrent writers; retried.
_RETRYABLE_PGCODES = {"40P01", "55P03", "40001"}  # deadlock, lock_not_available, serialization
FIX_ATTEMPTS = 3
FIX_CHUNK = 200  # keys repaired per transaction

# Exit codes of python -m tasks.reconcile (also in ReconcileResult.exit_code).
EXIT_CLEAN = 0
EXIT_UNFIXED = 1
EXIT_USAGE = 2
EXIT_FAILED = 3
EXIT_REFUSED = 4
EXIT_INCOMPLETE = 5


@dataclass(frozen=True)
class TableSpec:
    """A Phase 1 table: its key column and the columns compared (those of phase1_truth.sql)."""

    name: str
    key_column: str
    columns: tuple[str, ...]


TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (
        TableSpec(USER_DASHBOARD_STATS, "user_id", (
            "project_count", "active_projects", "total_upvotes_received", "total_comments_received",
            "chains_joined")),
        TableSpec(MESSAGE_CONVERSATIONS_DENORM, "conversation_id", (
            "user1_id", "user2_id", "is_deleted", "message_count", "user1_unread_count", "user2_unread_count",
            "last_message_id", "last_message_at", "last_message_sender_id", "last_message_preview")),
        TableSpec(INTRO_REQUEST_STATS, "user_id", (
            "requests_sent", "sent_pending", "sent_accepted", "sent_declined", "requests_received",
            "received_pending", "received_accepted", "received_declined")),
        TableSpec(PROJECT_STATS, "project_id", ("upvote_count", "comment_count")),
    )
}
PARTS: tuple[str, ...] = (*TABLES, REDIS_PART)


class UnknownPart(ValueError):
    """A --table / tables= name that is not one of PARTS."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown table {name!r}; valid: {', '.join(PARTS)}")
        self.name = name


def parse_parts(names: Sequence[str] | None) -> tuple[str, ...]:
    """The parts to check, in PARTS order; None or empty means all. Raises UnknownPart."""
    if not names:
        return PARTS
    for name in names:
        if name not in PARTS:
            raise UnknownPart(name)
    return tuple(p for p in PARTS if p in set(names))


@dataclass(frozen=True)
class ReconcileOptions:
    auto_fix: bool = True
    tables: tuple[str, ...] = PARTS
    batch_size: int = 1000
    # A progress line (and a progress update of the run row) every this many batches.
    progress_every: int = 10
    # Sleep between batches, to leave I/O to production traffic on a busy server.
    pause_seconds: float = 0.0
    # How long a Redis difference must persist to count (post-commit updates are in flight for ms).
    redis_confirm_seconds: float = 1.0
    # Per statement: a batch that takes longer than this fails the run instead of running on.
    statement_timeout_ms: int = 60_000
    # A fix waits at most this long for a key's row lock (held by an in-flight writer), then retries.
    lock_timeout_ms: int = 5_000
    source: str = "cli"

    def __post_init__(self) -> None:
        parse_parts(self.tables)
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")


@dataclass
class Finding:
    table: str
    key: str
    column: str
    stored: Any
    truth: Any
    fixed: bool = False

    def line(self) -> str:
        return (f"FOUND table={self.table} key={self.key} column={self.column} "
                f"stored={format_value(self.stored)} true={format_value(self.truth)}")


@dataclass
class PartSummary:
    part: str
    status: str = "checked"  # checked | unavailable | failed
    rows_checked: int = 0
    found: int = 0
    fixed: int = 0
    batches: int = 0
    seconds: float = 0.0
    unsettled: int = 0  # Redis: differences that did not persist (in-flight writes)
    skipped: int = 0  # Redis: keys that are not user:upvotes:<uuid>:complete
    error: str | None = None


@dataclass
class ReconcileResult:
    status: str  # completed | partial | failed | refused
    auto_fix: bool
    tables: tuple[str, ...]
    run_id: int | None = None
    rows_checked: int = 0
    found: int = 0
    fixed: int = 0
    seconds: float = 0.0
    parts: dict[str, PartSummary] = field(default_factory=dict)
    detail: str | None = None

    @property
    def unfixed(self) -> int:
        return self.found - self.fixed

    @property
    def exit_code(self) -> int:
        if self.status == "refused":
            return EXIT_REFUSED
        if self.status == "failed":
            return EXIT_FAILED
        if self.unfixed > 0:
            return EXIT_UNFIXED
        if self.status == "partial":
            return EXIT_INCOMPLETE
        return EXIT_CLEAN

    def summary_line(self) -> str:
        return (f"SUMMARY run={self.run_id} status={self.status} auto_fix={str(self.auto_fix).lower()} "
                f"rows_checked={self.rows_checked} found={self.found} fixed={self.fixed} "
                f"unfixed={self.unfixed} seconds={self.seconds:.2f}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "status": self.status, "auto_fix": self.auto_fix, "tables": list(self.tables),
            "rows_checked": self.rows_checked, "found": self.found, "fixed": self.fixed, "unfixed": self.unfixed,
            "seconds": round(self.seconds, 3), "parts": {k: asdict(v) for k, v in self.parts.items()},
            "detail": self.detail, "exit_code": self.exit_code,
        }


class ReconciliationFailed(RuntimeError):
    """The run stopped on an error; it is recorded as 'failed' (result.detail says why)."""

    def __init__(self, result: ReconcileResult) -> None:
        super().__init__(f"reconciliation run {result.run_id} failed: {result.detail}")
        self.result = result


def format_value(value: Any) -> str:
    """A value for a FOUND line: bare when it is one token, JSON-quoted otherwise."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat()
    text = str(value)
    if not text or any(c.isspace() for c in text) or '"' in text or "=" in text:
        return json.dumps(text)
    return text


def _db_value(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def connect(settings: Settings) -> tuple[Engine, redis_lib.Redis]:
    """Clients for one run, from the settings (DATABASE_URL, REDIS_URL)."""
    engine = make_engine(settings.database_url, pool_size=2, application_name="discovery-reconcile")
    client = redis_lib.Redis.from_url(
        settings.redis_url, decode_responses=True,
        # A hung Redis must not hang the run: the Redis part reports it and the rest goes on.
        socket_timeout=5.0, socket_connect_timeout=3.0,
    )
    return engine, client


def run_reconciliation(engine: Engine, redis_client: redis_lib.Redis | None, options: ReconcileOptions,
                       out: Callable[[str], None] = print) -> ReconcileResult:
    """One reconciliation run; see the module docstring.

    Returns the result (status ``refused`` when another run holds the lock);
    raises ReconciliationFailed after recording a failed run.
    """
    return _Run(engine, redis_client, options, out).run()


def diff_rows(spec: TableSpec, keys: Sequence[str], truth: dict[str, sa.Row], stored: dict[str, sa.Row]
              ) -> list[Finding]:
    """Findings for these keys: missing rows, extra rows, and each differing column."""
    found: list[Finding] = []
    for key in keys:
        t, s = truth.get(key), stored.get(key)
        if t is None and s is None:
            continue
        if t is None:
            found.append(Finding(spec.name, key, ROW, PRESENT, ABSENT))
        elif s is None:
            found.append(Finding(spec.name, key, ROW, ABSENT, PRESENT))
        else:
            tm, sm = t._mapping, s._mapping
            found.extend(Finding(spec.name, key, col, sm[col], tm[col]) for col in spec.columns if sm[col] != tm[col])
    return found


def member_diffs(stored: set[str], truth: set[str]) -> set[tuple[str, str]]:
    """(member, stored state) for each member whose presence differs."""
    return {(m, PRESENT) for m in stored - truth} | {(m, ABSENT) for m in truth - stored}


class _Run:
    def __init__(self, engine: Engine, redis_client: redis_lib.Redis | None, options: ReconcileOptions,
                 out: Callable[[str], None]) -> None:
        self.engine = engine
        self.redis = redis_client
        self.options = options
        self.out = out
        self.q = queries("reconciliation")
        self.truth_q = queries("phase1_truth")
        self.result = ReconcileResult("running", options.auto_fix, tuple(options.tables))
        self.started = time.monotonic()
        self.lock_conn: Connection | None = None
        self.current: PartSummary | None = None  # the part being checked

    # -- the run ----------------------------------------------------------------
    def run(self) -> ReconcileResult:
        with self.engine.connect() as conn:
            self.lock_conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            if not self.lock_conn.execute(self.q["try_run_lock"]).scalar():
                return self._refused()
            try:
                return self._run_locked()
            finally:
                self._release_lock()

    def _refused(self) -> ReconcileResult:
        assert self.lock_conn is not None
        holder = self.lock_conn.execute(self.q["run_lock_holder"]).mappings().first()
        detail = "another reconciliation is running"
        if holder is not None:
            if holder["run_id"] is not None:
                detail += (f" (run {holder['run_id']} started {holder['started_at'].isoformat()} "
                           f"by {holder['source']} on {holder['host']} pid {holder['pid']})")
            else:
                detail += f" (Postgres backend {holder['backend_pid']}, {holder['application_name'] or 'no name'})"
        self.result.status = "refused"
        self.result.detail = detail
        self.result.seconds = time.monotonic() - self.started
        return self.result

    def _release_lock(self) -> None:
        assert self.lock_conn is not None
        try:
            self.lock_conn.execute(self.q["release_run_lock"])
        except sa.exc.DBAPIError:
            # Could not unlock (connection broken): never return a session that may hold it to the pool.
            self.lock_conn.invalidate()

    def _run_locked(self) -> ReconcileResult:
        assert self.lock_conn is not None
        opts = self.options
        row = self.lock_conn.execute(self.q["insert_run"], {
            "auto_fix": opts.auto_fix, "tables": list(opts.tables), "source": opts.source,
            "host": socket.gethostname(), "pid": os.getpid(),
        }).one()
        self.result.run_id = run_id = int(row.id)
        abandoned = [r.id for r in self.lock_conn.execute(self.q["mark_abandoned"], {"by_run": run_id})]
        self.out(f"reconciliation run={run_id} started auto_fix={str(opts.auto_fix).lower()} "
                 f"tables={','.join(opts.tables)} batch_size={opts.batch_size}")
        if abandoned:
            self.out(f"marked {len(abandoned)} stale running run(s) abandoned: {', '.join(map(str, abandoned))}")
        try:
            for part in opts.tables:
                summary = self._check_redis() if part == REDIS_PART else self._check_table(TABLES[part])
                self.result.parts[part] = summary
                self._add_totals()
                self.out(f"checked table={part} status={summary.status} rows={summary.rows_checked} "
                         f"found={summary.found} fixed={summary.fixed} seconds={summary.seconds:.2f}"
                         + (f" unsettled={summary.unsettled}" if summary.unsettled else "")
                         + (f" error={format_value(summary.error)}" if summary.error else ""))
        except BaseException as exc:  # includes Celery's soft time limit and Ctrl-C: record, then re-raise
            if self.current is not None and self.current.part not in self.result.parts:
                # Count what the interrupted part found before it stopped (its findings are recorded).
                self.current.status, self.current.error = "failed", _first_line(exc)
                self.result.parts[self.current.part] = self.current
                self._add_totals()
            self.result.status = "failed"
            self.result.detail = f"{type(exc).__name__}: {_first_line(exc)}"
            self._finish()
            if isinstance(exc, Exception):
                raise ReconciliationFailed(self.result) from exc
            raise
        complete = all(p.status == "checked" for p in self.result.parts.values())
        self.result.status = "completed" if complete else "partial"
        if not complete:
            self.result.detail = "; ".join(f"{p.part}: {p.error}" for p in self.result.parts.values()
                                           if p.status != "checked")
        self._finish()
        return self.result

    def _add_totals(self) -> None:
        parts = self.result.parts.values()
        self.result.rows_checked = sum(p.rows_checked for p in parts)
        self.result.found = sum(p.found for p in parts)
        self.result.fixed = sum(p.fixed for p in parts)

    def _finish(self) -> None:
        self.result.seconds = time.monotonic() - self.started
        self.out(self.result.summary_line())
        assert self.lock_conn is not None
        try:
            self.lock_conn.execute(self.q["finish_run"], {
                "run_id": self.result.run_id, "status": self.result.status,
                "rows_checked": self.result.rows_checked, "found": self.result.found, "fixed": self.result.fixed,
                "summary": json.dumps({k: asdict(v) for k, v in self.result.parts.items()}),
                "error": self.result.detail if self.result.status != "completed" else None,
            })
        except sa.exc.DBAPIError as exc:
            # The database is gone (the likely cause of a failure): the row stays
            # 'running' and the next run marks it abandoned.
            log.error("could not record the end of reconciliation run %s: %s", self.result.run_id, exc)

    def _current(self, part: PartSummary) -> tuple[int, int, int]:
        done = [p for p in self.result.parts.values()]
        return (sum(p.rows_checked for p in done) + part.rows_checked,
                sum(p.found for p in done) + part.found,
                sum(p.fixed for p in done) + part.fixed)

    def _batch_done(self, part: PartSummary, started: float) -> None:
        part.batches += 1
        part.seconds = time.monotonic() - started
        if part.batches % self.options.progress_every == 0:
            rate = part.rows_checked / part.seconds if part.seconds > 0 else 0.0
            self.out(f"progress run={self.result.run_id} table={part.part} batches={part.batches} "
                     f"rows_checked={part.rows_checked} found={part.found} fixed={part.fixed} rate={rate:.0f}/s")
            rows, found, fixed = self._current(part)
            assert self.lock_conn is not None
            self.lock_conn.execute(self.q["update_run_progress"], {
                "run_id": self.result.run_id, "rows_checked": rows, "found": found, "fixed": fixed})
        if self.options.pause_seconds > 0:
            time.sleep(self.options.pause_seconds)

    def _record(self, findings: list[Finding]) -> None:
        assert self.lock_conn is not None
        self.lock_conn.execute(self.q["insert_finding"], [
            {"run_id": self.result.run_id, "table_name": f.table, "row_key": f.key, "column_name": f.column,
             "stored": _db_value(f.stored), "truth": _db_value(f.truth), "fixed": f.fixed}
            for f in findings
        ])

    # -- Phase 1 tables --------------------------------------------------------
    def _check_table(self, spec: TableSpec) -> PartSummary:
        part = self.current = PartSummary(spec.name)
        started = time.monotonic()
        with self.engine.connect() as work:
            for keys in self._key_batches(work, spec):
                truth, stored = self._snapshot(work, spec, keys)
                findings = diff_rows(spec, keys, truth, stored)
                part.rows_checked += len(keys)
                if findings:
                    for f in findings:
                        self.out(f.line())
                    if self.options.auto_fix:
                        self._fix(work, spec, findings)
                    self._record(findings)
                    part.found += len(findings)
                    part.fixed += sum(f.fixed for f in findings)
                self._batch_done(part, started)
        part.seconds = time.monotonic() - started
        return part

    def _key_batches(self, work: Connection, spec: TableSpec) -> Iterator[list[str]]:
        after = NIL_UUID
        while True:
            with work.begin():
                keys = [str(k) for (k,) in work.execute(self.q[f"{spec.name}_keys"],
                                                        {"after": after, "lim": self.options.batch_size})]
            if not keys:
                return
            yield keys
            after = keys[-1]

    def _local_timeouts(self, work: Connection, *, lock: bool = False) -> None:
        work.execute(sa.text("SELECT set_config('statement_timeout', :v, true)"),
                     {"v": f"{self.options.statement_timeout_ms}ms"})
        if lock:
            work.execute(sa.text("SELECT set_config('lock_timeout', :v, true)"),
                         {"v": f"{self.options.lock_timeout_ms}ms"})

    def _snapshot(self, work: Connection, spec: TableSpec, keys: Sequence[str]
                  ) -> tuple[dict[str, sa.Row], dict[str, sa.Row]]:
        """Truth and stored rows of these keys, read in ONE snapshot (so a difference is real)."""
        with work.begin():
            # READ ONLY: a check (and all of --no-auto-fix) cannot write anything but bookkeeping.
            work.execute(sa.text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))
            self._local_timeouts(work)
            params = {"ids": list(keys)}
            truth = {str(r[0]): r for r in work.execute(self.truth_q[f"{spec.name}_truth"], params)}
            stored = {str(r[0]): r for r in work.execute(self.truth_q[f"{spec.name}_stored"], params)}
        return truth, stored

    def _fix(self, work: Connection, spec: TableSpec, findings: list[Finding]) -> None:
        extra = sorted({f.key for f in findings if f.column == ROW and f.truth == ABSENT})
        present = sorted({f.key for f in findings} - set(extra))
        errors: list[str] = []
        # Chunks: each key's row lock is an entry in Postgres' shared lock table
        # (64 x max_connections by default), which the fold also fills; a whole
        # drifted batch in one transaction could run it out.
        for chunk in _chunks(present, FIX_CHUNK):
            # rebuild_<table> locks the keys, then recomputes in a new snapshot: see the module docstring.
            errors += self._fix_statements(work, [(self.truth_q[f"{spec.name}_rebuild"], chunk)])
        for chunk in _chunks(extra, FIX_CHUNK):
            # Own transactions: each takes its keys' locks in one sorted pass (no lock-order cycles).
            errors += self._fix_statements(work, [(self.q[f"{spec.name}_lock_keys"], chunk),
                                                  (self.q[f"{spec.name}_delete_extra"], chunk)])
        truth, stored = self._snapshot(work, spec, present + extra)
        remaining = {f.key for f in diff_rows(spec, present + extra, truth, stored)}
        for f in findings:
            f.fixed = f.key not in remaining
        for key in sorted(remaining):
            reason = errors[-1] if errors else "still differs after the fix"
            self.out(f"UNFIXED table={spec.name} key={key} reason={format_value(reason)}")

    def _fix_statements(self, work: Connection, statements: list[tuple[sa.TextClause, list[str]]]) -> list[str]:
        """Run these statements in one READ COMMITTED transaction, retrying lock conflicts."""
        errors: list[str] = []
        for attempt in range(1, FIX_ATTEMPTS + 1):
            try:
                with work.begin():
                    self._local_timeouts(work, lock=True)
                    for stmt, ids in statements:
                        work.execute(stmt, {"ids": ids})
                return errors
            except sa.exc.DBAPIError as exc:
                if exc.connection_invalidated:
                    raise  # the database is gone: the run fails
                code = getattr(exc.orig, "pgcode", None)
                errors.append(f"{code}: {_first_line(exc.orig or exc)}")
                if code not in _RETRYABLE_PGCODES or attempt == FIX_ATTEMPTS:
                    # Left unfixed (reported as UNFIXED, counted in the exit code); the run goes on.
                    log.warning("fix failed (%s); these keys stay unfixed in this run", errors[-1])
                    return errors
                time.sleep(0.2 * attempt)
        return errors

    # -- Redis user cache ------------------------------------------------------
    def _check_redis(self) -> PartSummary:
        part = self.current = PartSummary(REDIS_PART)
        started = time.monotonic()
        if self.redis is None:
            part.status, part.error = "unavailable", "no Redis client (REDIS_URL)"
            return part
        reported: set[str] = set()  # users already reported (SCAN may return a key twice)
        try:
            with self.engine.connect() as work:
                batch: list[str] = []
                pattern = f"{REDIS_KEY_PREFIX}*{REDIS_COMPLETE_SUFFIX}"
                for key in self.redis.scan_iter(match=pattern, count=self.options.batch_size):
                    user = key[len(REDIS_KEY_PREFIX):-len(REDIS_COMPLETE_SUFFIX)]
                    if not _UUID_RE.match(user):
                        part.skipped += 1
                        continue
                    batch.append(user)
                    if len(batch) >= self.options.batch_size:
                        self._redis_batch(work, part, batch, reported)
                        self._batch_done(part, started)
                        batch = []
                if batch:
                    self._redis_batch(work, part, batch, reported)
                    self._batch_done(part, started)
        except redis_lib.RedisError as exc:
            # The database part still counts; this part says it could not (finish to) check.
            part.status = "unavailable"
            part.error = f"{type(exc).__name__}: {exc}"
            self.out(f"redis: could not check the user caches ({part.error}); "
                     f"checked {part.rows_checked} sets before that")
        part.seconds = time.monotonic() - started
        return part

    def _redis_sets(self, users: Sequence[str]) -> dict[str, set[str] | None]:
        """Each user's set, or None when it is not marked complete (then it is not served)."""
        assert self.redis is not None
        pipe = self.redis.pipeline(transaction=True)  # MULTI: one consistent view of all of them
        for user in users:
            base = f"{REDIS_KEY_PREFIX}{user}"
            pipe.exists(base + REDIS_COMPLETE_SUFFIX)
            pipe.smembers(base)
        replies = pipe.execute()
        return {user: (set(replies[2 * i + 1]) if replies[2 * i] else None) for i, user in enumerate(users)}

    def _upvotes(self, work: Connection, users: Sequence[str]) -> dict[str, set[str]]:
        truth: dict[str, set[str]] = {u: set() for u in users}
        with work.begin():
            self._local_timeouts(work)
            for user_id, project_id in work.execute(self.q["upvotes_of_users"], {"ids": list(users)}):
                truth[user_id].add(project_id)
        return truth

    def _redis_batch(self, work: Connection, part: PartSummary, users: list[str], reported: set[str]) -> None:
        # Redis first, then Postgres: a write committed in between shows as a
        # difference here and is filtered out by the confirmation below.
        first = self._redis_sets(users)
        truth = self._upvotes(work, users)
        suspects = {u: d for u in users if first[u] is not None and (d := member_diffs(first[u], truth[u]))}
        part.rows_checked += sum(1 for u in users if first[u] is not None)
        if not suspects:
            return
        self.out(f"redis: {len(suspects)} set(s) differ from Postgres; confirming in "
                 f"{self.options.redis_confirm_seconds:g} s (a write may be on its way to Redis)")
        time.sleep(self.options.redis_confirm_seconds)
        candidates = sorted(suspects)
        second = self._redis_sets(candidates)
        truth2 = self._upvotes(work, candidates)
        findings: list[Finding] = []
        for user in candidates:
            now = second[user]
            confirmed = suspects[user] & member_diffs(now, truth2[user]) if now is not None else set()
            part.unsettled += len(suspects[user] - confirmed)
            if not confirmed or user in reported:
                continue
            reported.add(user)
            for member, stored in sorted(confirmed):
                findings.append(Finding(REDIS_TABLE, f"{user}/{member}", MEMBER, stored,
                                        ABSENT if stored == PRESENT else PRESENT))
        if not findings:
            return
        for f in findings:
            self.out(f.line())
        if self.options.auto_fix:
            assert self.redis is not None
            users_to_reset = sorted({f.key.split("/", 1)[0] for f in findings})
            # Delete set and marker only (like api/cache.py's invalidate): the next
            # read rebuilds from Postgres; the toggles and epoch keys keep their meaning.
            self.redis.delete(*[f"{REDIS_KEY_PREFIX}{u}{suffix}" for u in users_to_reset
                                for suffix in ("", REDIS_COMPLETE_SUFFIX)])
            for f in findings:
                f.fixed = True
        self._record(findings)
        part.found += len(findings)
        part.fixed += sum(f.fixed for f in findings)
