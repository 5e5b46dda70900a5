"""The product's processes for ``make bench``, started the way ``make up`` starts them.

The commands come from deploy/processes.py (the one definition ``make up``,
compose.yaml, supervisor and systemd share): gunicorn with
api/gunicorn_conf.py, the refresh worker, the default worker and Beat. Flower
is left out: it only watches, and its CPU would be taken from the product on a
small machine. The bench-only "Before" app runs under the same gunicorn config.
Every process gets its own session so a stop ends its children too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from deploy.embedded import free_port
from deploy.processes import Process, processes
from schema.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
READY_PATH = "/api/chains?limit=1"


class StackError(RuntimeError):
    """A process of the stack did not start; the message names its log."""


class _Running:
    def __init__(self, name: str, proc: subprocess.Popen, log: Path) -> None:
        self.name, self.proc, self.log = name, proc, log

    def stop(self, timeout: float = 20) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


class ProductStack:
    """API, workers and Beat on one database and Redis, plus the Before app."""

    def __init__(self, env: dict[str, str], work: Path) -> None:
        self.env = env
        self.work = work
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.running: dict[str, _Running] = {}
        self.api_base = ""
        self.before_base = ""
        self.api_workers = 0

    def _procs(self) -> dict[str, Process]:
        return {p.name: p for p in processes(Settings.from_env(self.env), run_dir=str(self.work))}

    def _start(self, name: str, argv: tuple[str, ...], env: dict[str, str]) -> _Running:
        log = self.logs / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen([str(BIN / argv[0]), *argv[1:]], cwd=ROOT, env=env, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        running = _Running(name, proc, log)
        self.running[name] = running
        return running

    def command(self, name: str) -> str:
        return " ".join(self._procs()[name].argv)

    def start_workers(self) -> None:
        """The refresh worker, the default worker and Beat, as `make up` runs them."""
        for name, proc in self._procs().items():
            if name in {"worker-refresh", "worker-default"}:
                self._start(name, proc.argv, self.env)
            elif name == "beat":
                # No pid file: Beat's default (celerybeat.pid in the checkout) would
                # collide with a `make up` stack running from the same directory.
                self._start(name, (*proc.argv, "--pidfile="), self.env)

    def wait_workers(self, app, timeout: float = 90) -> None:
        wanted = {"refresh", "default"} if "worker-refresh" in self.running else {"default"}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            seen = {name.split("@")[0] for reply in (app.control.ping(timeout=0.5) or []) for name in reply}
            if wanted <= seen:
                return
        raise StackError(f"celery workers {sorted(wanted)} did not answer within {timeout:.0f} s; logs in {self.logs}")

    def start_api(self, workers: int) -> str:
        """gunicorn -c api/gunicorn_conf.py 'api:create_app()' with GUNICORN_WORKERS=workers."""
        if "api" in self.running:
            self.running.pop("api").stop()
        port = free_port()
        env = {**self.env, "GUNICORN_WORKERS": str(workers), "API_PORT": str(port)}
        running = self._start("api", self._procs()["api"].argv, env)
        self.api_base = f"http://127.0.0.1:{port}"
        self.api_workers = workers
        self._wait_http(running, self.api_base + READY_PATH)
        return self.api_base

    def start_before(self) -> str:
        port = free_port()
        env = {**self.env, "API_PORT": str(port)}
        argv = ("gunicorn", "-c", "api/gunicorn_conf.py", "bench.before_app:create_app()")
        running = self._start("before", argv, env)
        self.before_base = f"http://127.0.0.1:{port}"
        self._wait_http(running, self.before_base + "/api/leaderboard/projects", timeout=300)
        return self.before_base

    def stop_before(self) -> None:
        if "before" in self.running:
            self.running.pop("before").stop()

    def api_worker_pids(self) -> list[int]:
        """The gunicorn worker processes of the API (children of its master)."""
        master = self.running["api"].proc.pid
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                if int(stat[stat.rindex(")") + 2:].split()[1]) == master:
                    pids.append(int(entry))
        return sorted(pids)

    def _check_alive(self) -> None:
        for r in self.running.values():
            if r.proc.poll() is not None:
                raise StackError(f"{r.name} exited with {r.proc.returncode}; see {r.log}")

    def _wait_http(self, running: _Running, url: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if running.proc.poll() is not None:
                raise StackError(f"{running.name} exited with {running.proc.returncode}; see {running.log}")
            try:
                with urllib.request.urlopen(url, timeout=max(1.0, deadline - time.monotonic())) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise StackError(f"{running.name} did not answer {url} within {timeout:.0f} s; see {running.log}")

    def stop(self) -> None:
        for name in list(self.running)[::-1]:
            self.running.pop(name).stop()
