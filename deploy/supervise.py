"""Keep one process running: ``python -m deploy.supervise [--name NAME] -- COMMAND...``.

``make up`` runs every Celery process (workers, Beat, Flower) under this, as
systemd's ``Restart=always`` or compose's ``restart: unless-stopped`` would:
a Celery worker can die on a broker outage, e.g. when Redis restarts while a
late ack is pending, kombu raises AttributeError ('NoneType' object has no
attribute 'hostname') and the worker exits with "Unrecoverable error". The
refresh requests live in Postgres, so a restarted worker picks up where the
dead one stopped; without a restart nothing would refresh again.

The child runs in this process's group. ``make down`` signals the whole group
(child included) and this process then only waits for the child and exits
with its status. A command that exits on its own is restarted after 1 s,
doubling up to 30 s while it keeps failing quickly (the delay resets once a
run lasted a minute). If only this process is signalled, it passes SIGTERM on
to the child after 10 s.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from datetime import datetime

FIRST_DELAY, MAX_DELAY, HEALTHY_RUN = 1.0, 30.0, 60.0
FORWARD_AFTER = 10.0


def say(name: str, message: str) -> None:
    print(f"[{datetime.now().isoformat(sep=' ', timespec='seconds')}] supervise {name}: {message}", flush=True)


def supervise(command: list[str], name: str) -> int:
    stopping: list[float] = []  # when a stop signal arrived (empty: not stopping)

    def on_signal(signum: int, _frame: object) -> None:
        if not stopping:
            stopping.append(time.monotonic())
            say(name, f"got {signal.Signals(signum).name}; waiting for the child to stop")

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    delay = FIRST_DELAY
    while True:
        started = time.monotonic()
        child = subprocess.Popen(command)
        forwarded = False
        while True:
            try:
                code = child.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if stopping and not forwarded and time.monotonic() - stopping[0] > FORWARD_AFTER:
                    child.send_signal(signal.SIGTERM)  # the stop signal reached this process only
                    forwarded = True
        if stopping:
            return code
        ran = time.monotonic() - started
        delay = FIRST_DELAY if ran >= HEALTHY_RUN else delay
        say(name, f"child exited with {code} after {ran:.0f} s; restarting in {delay:.0f} s")
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and not stopping:
            time.sleep(0.1)
        if stopping:
            return code
        delay = min(MAX_DELAY, delay * 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.supervise", description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="process")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("a command to run is required (after --)")
    return supervise(command, args.name)


if __name__ == "__main__":
    sys.exit(main())
