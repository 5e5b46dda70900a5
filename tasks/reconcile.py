"""The reconciliation as a Celery task (``tasks.reconcile``, queue maintenance) and as a command.

    python -m tasks.reconcile [--no-auto-fix] [--table T ...]

The work is tasks/reconciliation.py; this module only parses, connects and
reports. Settings come from the environment (DATABASE_URL, REDIS_URL).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

import sqlalchemy as sa

from schema.db import DatabaseUnavailable, unreachable_message
from schema.settings import Settings, SettingsError
from tasks.celery import app
from tasks.reconciliation import (
    EXIT_CLEAN,
    EXIT_FAILED,
    EXIT_INCOMPLETE,
    EXIT_REFUSED,
    EXIT_UNFIXED,
    EXIT_USAGE,
    PARTS,
    ReconcileOptions,
    ReconciliationFailed,
    UnknownPart,
    connect,
    parse_parts,
    run_reconciliation,
)
from tasks.routes import RECONCILE

log = logging.getLogger(__name__)

# A full run at bench scale takes minutes; the limits only stop a run that is
# stuck. The soft limit raises inside the run, which records it as failed and
# releases its lock; the hard limit kills the child, whose row the next run
# marks abandoned.
SOFT_TIME_LIMIT = 3 * 3600
HARD_TIME_LIMIT = SOFT_TIME_LIMIT + 300


# acks_late=False: acknowledged on receipt. With the Redis broker an
# unacknowledged message is handed to another worker after the visibility
# timeout (celery #5306), which is shorter than a long run; a lost nightly run
# is simply retried the next night, and a duplicate would be refused by the
# run lock anyway.
# throws: an unknown table name is a refusal, logged without a traceback.
@app.task(name=RECONCILE, acks_late=False, soft_time_limit=SOFT_TIME_LIMIT, time_limit=HARD_TIME_LIMIT,
          throws=(UnknownPart,))
def reconcile(auto_fix: bool = True, tables: list[str] | None = None) -> dict[str, Any]:
    """Run the reconciliation; the result dict has run_id, status, found, fixed, unfixed, parts.

    ``status`` is ``refused`` (with ``detail`` "another reconciliation is
    running ...") when a run is already going on. A failed run raises.
    """
    options = ReconcileOptions(auto_fix=bool(auto_fix), tables=parse_parts(tables), source="celery")
    engine, client = connect(Settings.from_env())
    try:
        result = run_reconciliation(engine, client, options, out=log.info)
    finally:
        engine.dispose()
        client.close()
    if result.status == "refused":
        log.warning("reconciliation refused: %s", result.detail)
    return result.as_dict()


EPILOG = f"""\
Output (stdout): one line per discrepancy,
  FOUND table=<t> key=<k> column=<c> stored=<v> true=<v>
(column "row" for a missing or extra row, stored/true present|absent; for Redis
table=redis:user:upvotes key=<user_id>/<project_id> column=member), progress lines
every few batches, a "checked table=..." line per table and a final
  SUMMARY run=<id> status=<s> auto_fix=<b> rows_checked=<n> found=<n> fixed=<n> unfixed=<n> seconds=<s>
Every run is recorded in reconciliation_runs, every discrepancy in reconciliation_findings.
Patterns over many nights:  grep FOUND reconciliation.log | cut -d' ' -f2,4 | sort | uniq -c
(The Celery task logs the same lines at INFO behind the worker's log prefix: grep -o 'FOUND .*'.)

Exit status:
  {EXIT_CLEAN}  nothing unfixed remains (no discrepancy, or all fixed)
  {EXIT_UNFIXED}  discrepancies remain (found with --no-auto-fix, or a fix did not hold)
  {EXIT_USAGE}  bad usage or configuration (unknown --table, DATABASE_URL unset)
  {EXIT_FAILED}  the run failed (database unreachable, a query failed); recorded as failed when possible
  {EXIT_REFUSED}  another reconciliation is running (nothing was done)
  {EXIT_INCOMPLETE}  a part could not be checked (Redis unreachable); the rest was checked and nothing
     unfixed remains there
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tasks.reconcile",
        description="Compare the denormalized tables and the Redis user caches with the base tables; "
                    "fix what drifted (unless --no-auto-fix).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--no-auto-fix", dest="auto_fix", action="store_false",
                        help="report only: change nothing except the run's own records")
    parser.add_argument("--table", action="append", metavar="T", default=None,
                        help=f"check only this part (repeatable): {', '.join(PARTS)}")
    parser.add_argument("--batch-size", type=int, default=1000, metavar="N", help="keys per batch (default 1000)")
    parser.add_argument("--pause-ms", type=int, default=0, metavar="MS",
                        help="sleep between batches, to leave I/O to production traffic (default 0)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 for --help
        return int(exc.code or 0)
    try:
        tables = parse_parts(args.table)
        if args.batch_size < 1 or args.pause_ms < 0:
            raise ValueError("--batch-size must be >= 1 and --pause-ms >= 0")
        settings = Settings.from_env()
    except (UnknownPart, ValueError, SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    options = ReconcileOptions(auto_fix=args.auto_fix, tables=tables, batch_size=args.batch_size,
                               pause_seconds=args.pause_ms / 1000.0, source="cli")
    engine, client = connect(settings)
    try:
        result = run_reconciliation(engine, client, options, out=lambda line: print(line, flush=True))
    except ReconciliationFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except DatabaseUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except sa.exc.OperationalError as exc:  # before a run existed: Postgres unreachable
        print(f"error: {unreachable_message(settings.database_url, exc)}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # connecting failed before a run existed (e.g. Postgres down)
        print(f"error: reconciliation could not start: {type(exc).__name__}: {_first_line(exc)}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        engine.dispose()
        client.close()
    if result.status == "refused":
        print(f"refused: {result.detail}", file=sys.stderr)
    return result.exit_code


def _first_line(exc: BaseException) -> str:
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
