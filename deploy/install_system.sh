#!/usr/bin/env bash
# Make sure the server binaries the embedded default needs are installed.
# Installs them with apt-get when we can (Debian/Ubuntu as root); otherwise
# names what is missing and the one command that installs it, and fails.
set -uo pipefail

[ -n "${SKIP_SYSTEM_INSTALL:-}" ] && exit 0  # you run Postgres and Redis yourself
missing=()
pgbin=""
for d in ${PG_BINDIR:-} $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k4 -n -r); do
  if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then pgbin=$d; break; fi
done
[ -z "$pgbin" ] && command -v initdb >/dev/null && command -v pg_ctl >/dev/null && pgbin=$(dirname "$(command -v initdb)")
[ -z "$pgbin" ] && missing+=(postgresql postgresql-contrib)
if [ -n "$pgbin" ]; then
  # pg_trgm and pg_stat_statements ship in contrib (a separate package on older Debian/Ubuntu).
  share=$("$pgbin/pg_config" --sharedir 2>/dev/null || echo "/usr/share/postgresql/$(basename "$(dirname "$pgbin")")")
  [ -f "$share/extension/pg_trgm.control" ] || missing+=(postgresql-contrib)
fi
command -v redis-server >/dev/null || missing+=(redis-server)
command -v psql >/dev/null || missing+=(postgresql-client)
# The load generator of `make bench` (bench/load.py); small, so installed with the rest.
command -v wrk >/dev/null || missing+=(wrk)

# Headless Chromium for the status page test (tests/test_status_page.py). Not
# needed to run the stack, so it never fails the install: installed on Debian
# as root (Ubuntu's package is a snap wrapper), otherwise a warning naming the
# command (the test then fails saying the same).
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && grep -qs '^ID=debian' /etc/os-release; then
    echo "install: installing chromium (headless browser for the status page test) with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends chromium >/dev/null; } \
      || echo "install: apt-get install chromium failed; the status page test will fail until it is installed" >&2
  else
    echo "install: chromium not found; the status page test needs it: sudo apt-get install -y chromium" >&2
  fi
fi

if [ ${#missing[@]} -eq 0 ]; then exit 0; fi

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "install: installing ${missing[*]} with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    && exit 0
  echo "install: apt-get install ${missing[*]} failed" >&2
  exit 1
fi
if [ "$(uname)" = Darwin ]; then hint="brew install postgresql@17 redis wrk"; else hint="sudo apt-get install -y ${missing[*]}"; fi
echo "install: missing ${missing[*]}; install with: $hint (or set DATABASE_URL and REDIS_URL to servers you run)" >&2
exit 1
