"""The two commands as a user runs them, from a fresh ``git clone`` of HEAD.

The clone gets the shared ``.venv`` by symlink (the install stamp is a
checksum of the requirement files, so ``make install`` is a no-op; pip runs
with ``PIP_NO_INDEX`` so nothing is ever downloaded) and free ports of its
own, never 8000/5555/55432/56379 that a developer's own ``make up`` may hold,
and never the system Postgres or Redis: DATABASE_URL and REDIS_URL are unset,
so ``make up`` starts private servers under the clone's ``.run/``.

The tests run in file order on one stack: each step starts from the state the
previous one left, as a user's session would. The clone tests what is
committed: uncommitted changes of the working tree are not in it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from deploy.embedded import free_port, port_open
from deploy.runner import ProcInfo, proc_info, processes_under
from tests.api_helpers import http, wait_for

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
DEVELOPER_PORTS = {8000, 5555, 55432, 56379, 5432, 6379}
APP_PROCESSES = ("api", "worker-refresh", "worker-default", "beat", "flower")


def _port() -> int:
    while (port := free_port()) in DEVELOPER_PORTS:
        pass
    return port


@dataclass
class Clone:
    path: Path
    ports: dict[str, int]
    base_env: dict[str, str]  # what a new shell has: no stack settings at all
    seen_pids: set[int] = field(default_factory=set)

    @property
    def up_env(self) -> dict[str, str]:
        """The settings `make up` is given: its own ports, a small footprint."""
        return {**self.base_env, **{k: str(v) for k, v in self.ports.items()},
                "GUNICORN_WORKERS": "1", "EMBEDDED_PG_SHARED_BUFFERS": "128MB"}

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.ports['API_PORT']}"

    @property
    def flower(self) -> str:
        return f"http://127.0.0.1:{self.ports['FLOWER_PORT']}"

    def make(self, target: str, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
        proc = subprocess.run(["make", "--no-print-directory", target], cwd=self.path, env=env or self.base_env,
                              capture_output=True, text=True, timeout=timeout)
        self.seen_pids |= set(self.recorded_pids().values())
        return proc

    def recorded_pids(self) -> dict[str, int]:
        """Every pid the stack's pid files name: app processes, private Redis and Postgres."""
        pids: dict[str, int] = {}
        run = self.path / ".run"
        for name in APP_PROCESSES:
            try:
                pids[name] = int((run / "pids" / f"{name}.pid").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pass
        for label, path in (("redis", run / "redis" / f"redis-{self.ports['EMBEDDED_REDIS_PORT']}.pid"),
                            ("postgres", run / "pg" / "postmaster.pid")):
            try:
                pids[label] = int(path.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pass
        return pids

    def stack_env(self) -> dict[str, str]:
        """The settings `make up` recorded, as `source .run/stack.env` exports them."""
        proc = subprocess.run(["/bin/bash", "-c", "source .run/stack.env && env -0"], cwd=self.path, env={},
                              capture_output=True, timeout=30, check=True)
        exported = dict(item.split("=", 1) for item in proc.stdout.decode().split("\0") if "=" in item)
        return {k: v for k, v in exported.items() if k not in {"PWD", "OLDPWD", "SHLVL", "_", "PATH"}}


def _alive(pid: int) -> ProcInfo | None:
    info = proc_info(pid)
    return info if info is not None and info.alive else None


def _make_ok(proc: subprocess.CompletedProcess, what: str) -> None:
    assert proc.returncode == 0, f"{what} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def clone() -> Iterator[Clone]:
    """A fresh clone of HEAD with the shared venv; stopped and removed at the end whatever happened."""
    top = Path(tempfile.mkdtemp(prefix="discovery-clone-"))
    top.chmod(0o755)  # as root the private Postgres runs as `postgres`, which must reach its data directory
    path = top / "repo"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(path)], check=True, timeout=60)
    (path / ".venv").symlink_to((ROOT / ".venv").resolve())
    base_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "PIP_NO_INDEX": "1",
        "DISCOVERY_RUN_DIR": str(path / ".run"),  # overrides one the developer may have exported
    }
    ports = {"API_PORT": _port(), "FLOWER_PORT": _port(), "EMBEDDED_PG_PORT": _port(), "EMBEDDED_REDIS_PORT": _port()}
    assert len(set(ports.values())) == 4
    c = Clone(path, ports, base_env)
    try:
        # Offline (PIP_NO_INDEX): a no-op when the shared venv's stamp matches, else pip finds everything installed.
        _make_ok(c.make("install"), "make install")
        yield c
    finally:
        try:
            c.make("down", timeout=120)
        finally:
            # Never leave anything running, even when `make down` itself is what failed.
            for p in processes_under(path):
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except OSError:
                    pass
            shutil.rmtree(top, ignore_errors=True)


def test_make_up_refuses_a_port_taken_by_another_process_in_one_line(clone: Clone) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", clone.ports["API_PORT"]))
        squatter.listen()
        proc = clone.make("up", clone.up_env)
    assert proc.returncode != 0
    ours = [line for line in proc.stderr.strip().splitlines() if not line.startswith("make")]
    assert len(ours) == 1, proc.stderr
    assert f"port {clone.ports['API_PORT']}" in ours[0] and "API_PORT" in ours[0], ours[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    # Checked before anything started: no server, no process, nothing half-made.
    assert not (clone.path / ".run" / "pg").exists() and not (clone.path / ".run" / "pids").exists()
    assert processes_under(clone.path) == []


def test_make_up_serves_health_feed_and_flower(clone: Clone) -> None:
    proc = clone.make("up", clone.up_env)
    _make_ok(proc, "make up")
    assert "install: .venv ready" not in proc.stdout, "make install was not a no-op in the clone"
    health = http("GET", f"{clone.api}/health")
    assert health.status == 200 and health.body["status"] == "healthy", health.body
    feed = http("GET", f"{clone.api}/api/projects")
    assert feed.status == 200 and len(feed.body["data"]) > 0, feed.body
    assert http("GET", f"{clone.flower}/healthcheck").status == 200
    assert http("GET", f"{clone.flower}/").status == 200
    # Private servers on the clone's own ports, nothing else.
    env = clone.stack_env()
    assert env["DATABASE_URL"].endswith(f"127.0.0.1:{clone.ports['EMBEDDED_PG_PORT']}/discovery")
    assert env["REDIS_URL"] == f"redis://127.0.0.1:{clone.ports['EMBEDDED_REDIS_PORT']}/0"


def test_guides_load_test_queries_run_on_the_stacks_database(clone: Clone) -> None:
    """make up loads and creates pg_stat_statements, so the guide's queries run verbatim (psql -f)."""
    proc = subprocess.run(
        ["psql", clone.stack_env()["DATABASE_URL"], "-X", "-v", "ON_ERROR_STOP=1", "-f", "monitoring/load_test.sql"],
        cwd=clone.path, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    # Cache hit rate: one row with a ratio in (0, 100].
    ratio = re.search(r"cache_hit_ratio\s*\n[-+]+\n\s*\d+\s*\|\s*\d+\s*\|\s*([\d.]+)", proc.stdout)
    assert ratio and 0 < float(ratio.group(1)) <= 100, proc.stdout[:2000]
    # Slow queries: pg_stat_statements saw the migrations and the seed (far more than 10 statements).
    slow = proc.stdout[proc.stdout.index("mean_exec_time"):]
    assert "(10 rows)" in slow and "INSERT INTO" in slow, slow[-2000:]


def test_make_status_exits_zero_in_a_new_shell(clone: Clone) -> None:
    proc = clone.make("status")  # no settings given: the stack's own come from .run/stack.env
    _make_ok(proc, "make status")
    for name in (*APP_PROCESSES, "postgres", "redis"):
        assert any(line.split()[:2] == [name, "running"] for line in proc.stdout.splitlines()), proc.stdout
    assert "HTTP 200 healthy" in proc.stdout


def test_second_make_up_keeps_what_runs(clone: Clone) -> None:
    before = clone.recorded_pids()
    # The same shell after `source .run/stack.env`: the private servers' URLs are exported now,
    # and must still be taken for our own servers, not for servers given from outside.
    proc = clone.make("up", {**clone.up_env, **clone.stack_env()})
    _make_ok(proc, "second make up")
    assert clone.recorded_pids() == before
    for name in APP_PROCESSES:
        assert f"{name} already running (pid {before[name]})" in proc.stdout
    assert "private Postgres running" in proc.stdout and "private Redis running" in proc.stdout
    assert clone.stack_env()["EMBEDDED_PG"] == "1" and clone.stack_env()["EMBEDDED_REDIS"] == "1"
    assert all(_alive(pid) for pid in before.values())


def test_make_up_after_a_crash_gives_a_working_stack(clone: Clone) -> None:
    pids = clone.recorded_pids()
    # A gunicorn worker that cannot exit when its master dies (stopped, as a
    # hung one would be) keeps the API's listening socket: the crash leftover
    # that `make up` must clear before it starts a new API on the same port.
    stuck = next(p.pid for p in processes_under(clone.path)
                 if p.sid == pids["api"] and p.pid != pids["api"])
    os.kill(stuck, signal.SIGSTOP)
    os.kill(pids["api"], signal.SIGKILL)
    os.kill(pids["worker-refresh"], signal.SIGKILL)
    wait_for(lambda: not _alive(pids["api"]) and not _alive(pids["worker-refresh"]), timeout=10, what="the kills")
    assert port_open(clone.ports["API_PORT"]), "the stopped worker should still hold the API port"

    proc = clone.make("up")  # a new shell: the settings come from .run/stack.env
    _make_ok(proc, "make up after a crash")
    after = clone.recorded_pids()
    assert after["api"] != pids["api"] and after["worker-refresh"] != pids["worker-refresh"]
    assert {after[n] for n in ("worker-default", "beat", "flower")} == {pids[n] for n in ("worker-default", "beat", "flower")}
    assert not _alive(stuck), "the crashed API's leftover worker is still there"
    assert http("GET", f"{clone.api}/health").status == 200
    _make_ok(clone.make("status"), "make status after the crash")

    # The new refresh worker works: a write reaches the feed through a debounced refresh.
    subprocess.run(
        ["psql", clone.stack_env()["DATABASE_URL"], "-X", "-v", "ON_ERROR_STOP=1", "-c",
         "INSERT INTO projects (id, user_id, title, description, is_deleted) "
         "VALUES (gen_random_uuid(), (SELECT id FROM users LIMIT 1), 'After the crash', 'Test', FALSE)"],
        check=True, capture_output=True, timeout=30,
    )
    wait_for(lambda: any(p["title"] == "After the crash"
                         for p in http("GET", f"{clone.api}/api/projects?sort=newest&limit=5").body["data"]),
             timeout=90, interval=0.5, what="the new project in the feed")


def test_make_down_leaves_no_process_of_the_stack(clone: Clone) -> None:
    pids = clone.recorded_pids()
    assert set(pids) == {*APP_PROCESSES, "redis", "postgres"}
    proc = clone.make("down")  # a new shell again
    _make_ok(proc, "make down")
    gone = wait_for(lambda: not [p for p in clone.seen_pids | set(pids.values()) if _alive(p)], timeout=15,
                    what="every pid of the stack to exit")
    assert gone
    assert processes_under(clone.path) == []
    for port in clone.ports.values():
        assert not port_open(port), f"port {port} still accepts connections"
    assert not (clone.path / ".run" / "pids").exists() or not list((clone.path / ".run" / "pids").iterdir())


def test_make_up_after_make_down_works_again(clone: Clone) -> None:
    _make_ok(clone.make("up", clone.up_env), "make up after make down")
    assert http("GET", f"{clone.api}/health").status == 200
    feed = http("GET", f"{clone.api}/api/projects?sort=newest&limit=5")
    assert feed.status == 200 and feed.body["data"][0]["title"] == "After the crash"  # the data survived
