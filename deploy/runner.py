"""Background processes with pid files: start, recognise, stop, clean up after a crash.

``make up`` starts each app process in a session of its own (the session id is
the process's pid), so the process and every child it forks share one process
group that ``make down`` signals as a whole. A pid file holds ``PID START``:
the kernel's start time of the process (field 22 of ``/proc/PID/stat``) makes
a pid file name exactly one process, so a pid reused after a crash or a reboot
is never mistaken for ours, and never signalled. Without ``/proc`` (macOS) a
live pid whose command line names gunicorn or celery is trusted instead.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
APP_COMMANDS = ("gunicorn", "celery")


@dataclass(frozen=True)
class ProcInfo:
    """What /proc says about one process."""

    pid: int
    state: str  # R, S, D, Z (zombie), ...
    sid: int
    start: int  # clock ticks after boot; with the pid it names one process
    cmdline: tuple[str, ...]
    cwd: str | None  # None when unreadable (another user's process without root, a zombie)

    @property
    def alive(self) -> bool:
        return self.state not in {"Z", "X"}


def proc_info(pid: int) -> ProcInfo | None:
    """The process ``pid``, or None if there is none (or no /proc)."""
    base = PROC / str(pid)
    try:
        stat = (base / "stat").read_text()
        raw_cmdline = (base / "cmdline").read_bytes()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain spaces.
    fields = stat[stat.rindex(")") + 2:].split()
    try:
        cwd: str | None = os.readlink(base / "cwd")
    except OSError:
        cwd = None
    return ProcInfo(
        pid=pid,
        state=fields[0],
        sid=int(fields[3]),
        start=int(fields[19]),
        cmdline=tuple(part.decode(errors="replace") for part in raw_cmdline.split(b"\0") if part),
        cwd=cwd,
    )


def all_processes() -> Iterator[ProcInfo]:
    """Every process /proc lists (empty without /proc)."""
    if not PROC.is_dir():
        return
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            info = proc_info(int(entry.name))
            if info is not None:
                yield info


def processes_under(path: Path) -> list[ProcInfo]:
    """Live processes whose working directory or command line lies under ``path``.

    What ``make down`` must leave nothing of: the app processes run in the
    checkout, the private Postgres runs in its data directory under the run
    directory, the private Redis in its own directory there."""
    root = str(path.resolve())

    def under(p: str) -> bool:
        return p == root or p.startswith(root + os.sep)

    return [
        p for p in all_processes()
        if p.alive and p.pid != os.getpid()
        and ((p.cwd is not None and under(p.cwd)) or any(under(arg) for arg in p.cmdline))
    ]


class PidFiles:
    """The app processes of one stack: ``<pids>/<name>.pid``, run with ``cwd``."""

    def __init__(self, pids: Path, cwd: Path) -> None:
        self.pids = pids
        self.cwd = cwd

    def path(self, name: str) -> Path:
        return self.pids / f"{name}.pid"

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.pids.glob("*.pid")) if self.pids.is_dir() else []

    def recorded(self, name: str) -> tuple[int, int | None] | None:
        """(pid, start time) from the pid file; start is None in an old one-field file."""
        try:
            parts = self.path(name).read_text().split()
            return int(parts[0]), (int(parts[1]) if len(parts) > 1 else None)
        except (OSError, ValueError, IndexError):
            return None

    def _is_ours(self, pid: int, start: int | None) -> bool:
        info = proc_info(pid)
        if info is None:
            if PROC.is_dir():
                return False
            return _alive_without_proc(pid)
        if not info.alive:
            return False  # a zombie: dead, only not reaped yet
        if start is not None:
            return info.start == start
        return info.cwd == str(self.cwd) and any(cmd in " ".join(info.cmdline) for cmd in APP_COMMANDS)

    def running(self, name: str) -> int | None:
        """The pid of ``name`` if the process the pid file names is still alive."""
        rec = self.recorded(name)
        if rec is None:
            return None
        pid, start = rec
        return pid if self._is_ours(pid, start) else None

    def leftovers(self, name: str) -> list[int]:
        """Processes left in the session of a ``name`` that died (e.g. a SIGKILLed master's children).

        Only processes that run in our checkout and name gunicorn or celery
        count: a session id can be reused too."""
        rec = self.recorded(name)
        if rec is None or self.running(name):
            return []
        sid = rec[0]
        return [
            p.pid for p in all_processes()
            if p.alive and p.sid == sid and p.pid != sid and p.cwd == str(self.cwd)
            and any(cmd in " ".join(p.cmdline) for cmd in APP_COMMANDS)
        ]

    def clean_up_after_crash(self, name: str) -> list[int]:
        """Kill what a crashed ``name`` left behind and drop its stale pid file; return the pids killed."""
        killed = self.leftovers(name)
        for pid in killed:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        _wait_gone(killed, timeout=10)
        if self.recorded(name) is not None and not self.running(name):
            self.path(name).unlink(missing_ok=True)
        return killed

    def start(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> int:
        """Start ``argv`` in a new session with its output appended to ``log_path``."""
        self.pids.mkdir(parents=True, exist_ok=True)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            child = subprocess.Popen(argv, cwd=self.cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        info = proc_info(child.pid)
        start = f" {info.start}" if info is not None else ""
        self.path(name).write_text(f"{child.pid}{start}\n")
        return child.pid

    def stop(self, names: Iterable[str], timeout: float = 20) -> list[tuple[str, int]]:
        """Stop these processes together: SIGTERM to each group, SIGKILL what is left at the deadline.

        Returns (name, pid) of what was running. Stale pid files are removed."""
        targets: list[tuple[str, int]] = []
        for name in names:
            pid = self.running(name)
            if pid is None:
                self.clean_up_after_crash(name)
                continue
            targets.append((name, pid))
            _signal_group(pid, signal.SIGTERM)
        groups = [pid for _, pid in targets]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(_group_alive(g) for g in groups):
            time.sleep(0.1)
        for g in groups:
            if _group_alive(g):
                _signal_group(g, signal.SIGKILL)
        _wait_gone(groups, timeout=10, group=True)
        for name, _ in targets:
            self.path(name).unlink(missing_ok=True)
        return targets


def _alive_without_proc(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        out = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return False
    return any(cmd in out.stdout for cmd in APP_COMMANDS)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except OSError:
        pass


def _group_alive(pgid: int) -> bool:
    """True while a live (non-zombie) process is left in the group."""
    try:
        os.killpg(pgid, 0)
    except OSError:
        return False
    if not PROC.is_dir():
        return True
    return any(p.sid == pgid and p.alive for p in all_processes())


def _wait_gone(pids: list[int], timeout: float, group: bool = False) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if group:
            if not any(_group_alive(g) for g in pids):
                return
        elif not any((info := proc_info(p)) is not None and info.alive for p in pids):
            return
        time.sleep(0.05)
