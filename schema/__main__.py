"""``python -m schema migrate|seed``: the schema's command line.

Errors are one line naming the problem, with a non-zero exit code.
"""

from __future__ import annotations

import argparse
import sys

from schema.db import DatabaseUnavailable
from schema.settings import Settings, SettingsError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m schema", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_migrate = sub.add_parser("migrate", help="apply pending SQL migrations in order")
    p_migrate.add_argument("--status", action="store_true", help="list migrations and whether each is applied")
    p_seed = sub.add_parser("seed", help="generate demo or benchmark data (deterministic per seed)")
    p_seed.add_argument("--scale", required=True, help="demo | bench | quick")
    p_seed.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    p_seed.add_argument("--force", action="store_true", help="seed even if the database already has users")
    p_seed.add_argument("--if-empty", action="store_true", help="do nothing (exit 0) if the database has users")
    args = parser.parse_args(argv)

    try:
        settings = Settings.from_env()
        if args.command == "migrate":
            from schema.migrate import MigrationError
            from schema.migrate import main as migrate_main

            try:
                return migrate_main(settings.database_url, show_status=args.status)
            except MigrationError as exc:
                print(f"migrate: {exc}", file=sys.stderr)
                return 1
        if args.command == "seed":
            from schema.seed import SCALES, SeedError, seed

            if args.scale not in SCALES:
                print(
                    f"seed: unknown scale {args.scale!r}; choose one of: {', '.join(SCALES)}",
                    file=sys.stderr,
                )
                return 2
            if args.if_empty and (users := _user_count(settings.database_url)):
                print(f"seed: the database already has {users} users; nothing to do")
                return 0
            try:
                seed(settings.database_url, args.scale, seed=args.seed, force=args.force)
            except SeedError as exc:
                print(f"seed: {exc}", file=sys.stderr)
                return 1
            return 0
    except (SettingsError, DatabaseUnavailable) as exc:
        print(f"{args.command}: {exc}", file=sys.stderr)
        return 1
    return 2


def _user_count(database_url: str) -> int:
    from schema.db import raw_connection

    with raw_connection(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass('users') IS NOT NULL")
        if not cur.fetchone()[0]:
            return 0
        cur.execute("SELECT count(*) FROM users")
        return cur.fetchone()[0]


if __name__ == "__main__":
    sys.exit(main())
