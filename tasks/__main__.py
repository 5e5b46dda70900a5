"""Refresh engine commands that need no running worker.

    python -m tasks refresh VIEW [--sweep]   refresh now, in this process, under the same locks as a worker
    python -m tasks request VIEW             ask for a debounced refresh (the sweep runs it when due)
    python -m tasks due                      what the next sweep would enqueue, and why the rest waits
    python -m tasks health                   refresh_health() as JSON; exit status 1 when degraded

Settings come from the environment (DATABASE_URL, REDIS_URL, ...), as for the workers.
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sys

import sqlalchemy as sa

from schema.settings import Settings, SettingsError
from tasks import refresh_engine
from tasks.deps import Deps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks", description="Refresh engine commands.")
    sub = parser.add_subparsers(dest="command", required=True)
    refresh = sub.add_parser("refresh", help="refresh one view now (manual unless --sweep)")
    refresh.add_argument("view")
    refresh.add_argument("--sweep", action="store_true", help="behave like a sweep refresh: skip if nothing is pending")
    request = sub.add_parser("request", help="ask for a debounced refresh of one view")
    request.add_argument("view")
    sub.add_parser("due", help="show what the next sweep would enqueue")
    sub.add_parser("health", help="print the engine's health as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        deps = Deps.connect(Settings.from_env(), application_name="discovery-cli")
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.command == "refresh":
            result = refresh_engine.run_refresh(deps, args.view, manual=not args.sweep,
                                                worker=f"cli@{socket.gethostname()}")
            print(json.dumps(result.as_dict(), indent=2))
            return 0 if result.status in (refresh_engine.COMPLETED, refresh_engine.SKIPPED) else 1
        if args.command == "request":
            print(json.dumps(refresh_engine.request_refresh(deps, args.view)))
            return 0
        if args.command == "due":
            rows = refresh_engine.due_views(deps)
            for row in rows:
                state = "due" if row["due"] else "waits"
                print(f"{row['view_name']:<28} {state:<6} {row['reason']:<11} pending={row['pending_requests']}")
            if not rows:
                print("nothing pending")
            return 0
        report = refresh_engine.refresh_health(deps.engine, deps.settings.stale_after_seconds)
        print(json.dumps(report, indent=2))
        return 0 if report["status"] == "healthy" else 1
    except refresh_engine.UnknownView as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except refresh_engine.RefreshFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except sa.exc.OperationalError as exc:
        print(f"error: database: {str(exc.orig).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    finally:
        deps.close()


if __name__ == "__main__":
    sys.exit(main())
