"""Private PostgreSQL and Redis servers: the embedded default.

When ``DATABASE_URL``/``REDIS_URL`` are not given, ``make up`` (and the test
suite) start servers of their own: a data directory under the checkout (or a
temporary one for tests), their own ports, 127.0.0.1 only, stopped by
``make down``. Nothing here ever touches a server it did not start.

Postgres refuses to run as root, so as root the server runs as the
``postgres`` OS user (Debian's packages create it) with a data directory that
user owns.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

INSTALL_HINT_DEBIAN = "sudo apt-get install -y postgresql postgresql-contrib redis-server"
INSTALL_HINT_MAC = "brew install postgresql@17 redis"


class MissingBinary(RuntimeError):
    """A server binary is not installed; the message names it and the install command."""


class ServiceError(RuntimeError):
    """A private server failed to start or stop; the message points at its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _install_hint() -> str:
    return INSTALL_HINT_MAC if os.uname().sysname == "Darwin" else INSTALL_HINT_DEBIAN


def find_pg_bindir() -> Path:
    """The directory holding initdb and pg_ctl (Debian keeps them off PATH).

    ``PG_BINDIR``, when set, is authoritative: a wrong value is an error rather
    than a silent fallback to some other installation.
    """
    explicit = os.environ.get("PG_BINDIR")
    if explicit:
        if (Path(explicit) / "initdb").exists() and (Path(explicit) / "pg_ctl").exists():
            return Path(explicit)
        raise MissingBinary(f"PG_BINDIR={explicit} has no initdb/pg_ctl; unset it or install with: {_install_hint()}")
    candidates = []
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)

    def major(path: str) -> int:
        try:
            return int(Path(path).parts[-2])
        except (ValueError, IndexError):
            return 0

    # Newest major version first.
    for pattern in ("/usr/lib/postgresql/*/bin", "/opt/homebrew/opt/postgresql@*/bin", "/usr/local/opt/postgresql@*/bin"):
        candidates += [Path(p) for p in sorted(glob.glob(pattern), key=major, reverse=True)]
    for c in candidates:
        if (c / "initdb").exists() and (c / "pg_ctl").exists():
            return c
    raise MissingBinary(f"PostgreSQL server binaries (initdb, pg_ctl) not found; install them with: {_install_hint()}")


def find_redis_server() -> str:
    found = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
    if found and not os.access(found, os.X_OK):
        raise MissingBinary(f"REDIS_SERVER={found} is not an executable; install redis with: {_install_hint()}")
    if not found:
        raise MissingBinary(f"redis-server not found; install it with: {_install_hint()}")
    return found


def _as_postgres_user() -> list[str]:
    """Prefix that runs a command as the postgres user when we are root."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    if not runuser:
        raise MissingBinary("running as root but `runuser` is missing (util-linux); run as a normal user instead")
    return [runuser, "-u", "postgres", "--"]


def _chown_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")


@dataclass
class EmbeddedPostgres:
    """A private Postgres cluster in ``data_dir`` listening on 127.0.0.1:``port``."""

    data_dir: Path
    port: int
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def log_file(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def admin_url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def _pg(self, tool: str, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [*_as_postgres_user(), str(find_pg_bindir() / tool), *args]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=timeout)

    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def init(self) -> None:
        if self.initialized():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        _chown_postgres(self.data_dir)
        self.data_dir.chmod(0o700)
        try:
            self._pg("initdb", "-D", str(self.data_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                     "--locale=C.UTF-8", "--no-sync")
        except subprocess.CalledProcessError as exc:
            raise ServiceError(f"initdb failed for {self.data_dir}: {exc.stderr.strip()[-400:]}") from None
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.data_dir}'",
            "max_connections": "200",
            "shared_buffers": "256MB",
            "shared_preload_libraries": "'pg_stat_statements'",
            "pg_stat_statements.track": "top",
            "max_wal_size": "4GB",
            "checkpoint_timeout": "15min",
            "log_min_messages": "warning",
            "log_line_prefix": "'%m [%p] %a '",
            **self.settings,
        }
        with open(self.data_dir / "postgresql.conf", "a") as f:
            f.write("\n# discovery embedded default\n")
            for key, value in conf.items():
                f.write(f"{key} = {value}\n")

    def running(self) -> bool:
        if not self.initialized():
            return False
        return self._pg("pg_ctl", "-D", str(self.data_dir), "status", check=False).returncode == 0

    def start(self) -> None:
        self.init()
        if self.running():
            return
        if port_open(self.port):
            raise ServiceError(
                f"port {self.port} is already in use by another process; set EMBEDDED_PG_PORT to a free port"
            )
        self.log_file.touch()
        _chown_postgres(self.log_file)
        result = self._pg("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-o",
                          f"-p {self.port}", "-w", "-t", "60", "start", check=False)
        if result.returncode != 0:
            tail = self.log_file.read_text()[-600:] if self.log_file.exists() else result.stderr
            raise ServiceError(f"Postgres in {self.data_dir} did not start: {tail.strip()}")

    def stop(self, mode: str = "fast") -> None:
        if self.running():
            self._pg("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60", "stop", check=False)

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.log_file.unlink(missing_ok=True)


@dataclass
class EmbeddedRedis:
    """A private redis-server that keeps nothing on disk (Redis is only a cache here)."""

    work_dir: Path
    port: int

    @property
    def pid_file(self) -> Path:
        return self.work_dir / f"redis-{self.port}.pid"

    @property
    def log_file(self) -> Path:
        return self.work_dir / f"redis-{self.port}.log"

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def pid(self) -> int | None:
        """The pid in the pid file if that process is still our redis-server.

        A pid file left by a crash may name a pid the system has since given
        to another process; that one must never be taken for ours (nor be
        signalled by ``stop``). redis-server names its port in its title."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except OSError:
            return None
        proc = Path(f"/proc/{pid}")
        if proc.is_dir():
            try:
                title = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                return None
            if state == "Z" or "redis-server" not in title or f":{self.port}" not in title:
                return None
        return pid

    def running(self) -> bool:
        return self.pid() is not None and port_open(self.port)

    def start(self) -> None:
        if self.running():
            return
        if port_open(self.port):
            raise ServiceError(
                f"port {self.port} is already in use by another process; set EMBEDDED_REDIS_PORT to a free port"
            )
        binary = find_redis_server()  # before creating anything
        self.work_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.work_dir), "--daemonize", "yes", "--pidfile", str(self.pid_file),
             "--logfile", str(self.log_file)],
            check=True, capture_output=True, timeout=30,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if port_open(self.port):
                return
            time.sleep(0.05)
        raise ServiceError(f"redis-server on port {self.port} did not start; see {self.log_file}")

    def stop(self) -> None:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)  # stale: its process is gone (or is not ours)
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.pid() is not None:
            time.sleep(0.05)
        if self.pid() is not None:
            os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
