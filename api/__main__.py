"""``python -m api token --user USERNAME [--admin] [--ttl 3600]``: a bearer token for a user.

Looks the user up in the database (``DATABASE_URL``) and signs a token with
``JWT_SECRET``. ``--admin`` is refused for a user who is not an admin in the
database. Errors are one line on stderr with exit code 1.
"""

from __future__ import annotations

import argparse
import sys

import sqlalchemy as sa

from api.auth import DEFAULT_TTL_SECONDS, issue_token
from schema.db import DatabaseUnavailable, make_engine, unreachable_message
from schema.settings import Settings, SettingsError

_LOOKUP = sa.text("SELECT id::text, role, is_admin, is_deleted FROM users WHERE username = :username")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m api", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_token = sub.add_parser("token", help="print a bearer token for a user of the database")
    p_token.add_argument("--user", required=True, help="username (demo: alice, bob, carol, admin)")
    p_token.add_argument("--admin", action="store_true", help="include the admin claim (user must be an admin)")
    p_token.add_argument("--ttl", type=int, default=DEFAULT_TTL_SECONDS, help="lifetime in seconds (default 3600)")
    args = parser.parse_args(argv)

    if args.ttl <= 0:
        print("token: --ttl must be a positive number of seconds", file=sys.stderr)
        return 1
    try:
        settings = Settings.from_env()
        engine = make_engine(settings.database_url, pool_size=1, application_name="discovery-token")
        try:
            with engine.connect() as conn:
                row = conn.execute(_LOOKUP, {"username": args.user}).first()
        except sa.exc.OperationalError as exc:
            raise DatabaseUnavailable(unreachable_message(settings.database_url, exc)) from None
        except sa.exc.ProgrammingError as exc:
            print(f"token: the database has no users table (run `python -m schema migrate`): {exc.orig}",
                  file=sys.stderr)
            return 1
        finally:
            engine.dispose()
    except (SettingsError, DatabaseUnavailable) as exc:
        print(f"token: {exc}", file=sys.stderr)
        return 1
    if row is None:
        print(f"token: no user named {args.user!r} in the database", file=sys.stderr)
        return 1
    user_id, role, is_admin, is_deleted = row
    if is_deleted:
        print(f"token: user {args.user!r} is deleted", file=sys.stderr)
        return 1
    if args.admin and not is_admin:
        print(f"token: user {args.user!r} is not an admin; --admin needs a user with is_admin = true",
              file=sys.stderr)
        return 1
    print(issue_token(settings.jwt_secret, user_id, role=role, admin=bool(args.admin), ttl=args.ttl))
    return 0


if __name__ == "__main__":
    sys.exit(main())
