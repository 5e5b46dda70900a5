"""wrk as the load generator of ``make bench``: one run, its figures, and the guide's scenario.

wrk runs as its own process with a Lua script from bench/wrk/ (k6, the guide's
tool, is not installable here). Each script's ``done()`` prints one
``WRKJSON {...}`` line (bench/wrk/common.lua) that :func:`run_wrk` parses, so
no figure is scraped from wrk's human-readable text.

Errors: wrk counts a response with status >= 400 as a ``status`` error, a
request not answered within ``--timeout`` as a ``timeout`` (its latency is not
recorded), and ``connect``/``read``/``write`` socket errors. The error rate is
all of them over requests answered plus timed out.
"""

from __future__ import annotations

import json
import resource
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LUA_DIR = ROOT / "bench" / "wrk"
# The guide's pass mark for one request (its k6 check) and so for a held step.
P99_LIMIT_MS = 200.0
# File descriptors kept free for everything else wrk opens.
FD_MARGIN = 256
# Virtual users per scenario step whose requests give the step's latency (users_step).
PROBE_USERS = 50


class WrkFailed(RuntimeError):
    """wrk exited non-zero or printed no WRKJSON line; the message carries its stderr."""


@dataclass
class WrkStats:
    """One wrk run: totals and latency percentiles (ms) of the answered requests."""

    label: str
    connections: int
    duration_s: float
    requests: int
    rps: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def error_rate(self) -> float:
        return self.error_count / max(1, self.requests + self.errors.get("timeout", 0))

    def passed(self) -> bool:
        """The guide's bar for a load step: p99 under 200 ms and no error at all."""
        return self.requests > 0 and self.p99_ms < P99_LIMIT_MS and self.error_count == 0

    def as_dict(self) -> dict:
        d = asdict(self)
        d["error_rate"] = self.error_rate
        return d

    def line(self) -> str:
        errs = ", ".join(f"{k} {v}" for k, v in self.errors.items() if v) or "none"
        return (f"{self.label:<22} c={self.connections:<5} {self.rps:8.0f} req/s  p50 {self.p50_ms:7.2f}  "
                f"p95 {self.p95_ms:7.2f}  p99 {self.p99_ms:8.2f} ms  n={self.requests:<7} errors: {errs}")


def parse_wrkjson(label: str, connections: int, stdout: str) -> WrkStats:
    line = next((ln for ln in stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise WrkFailed(f"{label}: wrk printed no WRKJSON line: {stdout[-400:]}")
    raw = json.loads(line[len("WRKJSON "):])
    seconds = raw["duration_us"] / 1e6
    lat = raw["latency_us"]
    answered = raw["requests"] > 0
    return WrkStats(
        label=label, connections=connections, duration_s=seconds, requests=raw["requests"],
        rps=raw["requests"] / seconds if seconds else 0.0,
        # No answered request: latencies are undefined, shown as NaN (never 0, which would read as fast).
        p50_ms=lat["p50"] / 1000 if answered else float("nan"),
        p90_ms=lat["p90"] / 1000 if answered else float("nan"),
        p95_ms=lat["p95"] / 1000 if answered else float("nan"),
        p99_ms=lat["p99"] / 1000 if answered else float("nan"),
        max_ms=lat["max"] / 1000 if answered else float("nan"),
        mean_ms=lat["mean"] / 1000 if answered else float("nan"),
        errors={k: int(v) for k, v in raw["errors"].items()},
    )


class WrkRun:
    """A wrk process running in the background; :meth:`result` waits for it and parses its figures."""

    def __init__(self, base: str, script: str, args: list[str], *, label: str, connections: int, duration: float,
                 threads: int = 2, timeout_s: float = 10.0) -> None:
        # wrk gives each thread connections // threads and drops the remainder.
        self.threads = max(1, min(threads, connections))
        self.connections = connections - connections % self.threads
        self.label, self.duration, self.timeout_s = label, duration, timeout_s
        cmd = ["wrk", f"-t{self.threads}", f"-c{self.connections}", f"-d{max(1, round(duration))}s",
               f"--timeout={timeout_s:g}s", "-s", str(LUA_DIR / script), base, "--", *args]
        env = {"LUA_PATH": f"{LUA_DIR}/?.lua;;", "PATH": "/usr/local/bin:/usr/bin:/bin"}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def result(self) -> WrkStats:
        try:
            stdout, stderr = self.proc.communicate(timeout=self.duration + self.timeout_s + 120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise WrkFailed(f"{self.label}: wrk did not finish") from None
        if self.proc.returncode != 0:
            raise WrkFailed(f"{self.label}: wrk exited {self.proc.returncode}: {stderr.strip()[-400:]}")
        return parse_wrkjson(self.label, self.connections, stdout)


def run_wrk(base: str, script: str, args: list[str], *, label: str, connections: int, duration: float,
            threads: int = 2, timeout_s: float = 10.0) -> WrkStats:
    """Run ``wrk -s bench/wrk/<script>`` against ``base`` and return its figures."""
    return WrkRun(base, script, args, label=label, connections=connections, duration=duration, threads=threads,
                  timeout_s=timeout_s).result()


def users_step(base: str, users: int, seconds: float, *, probes: int = PROBE_USERS, settle_s: float = 3.0,
               think_ms: int = 1000, timeout_s: float = 10.0) -> WrkStats:
    """``users`` virtual users for ``seconds``; latency from ``probes`` of them that join after the rest settled.

    wrk opens all of a run's connections at once, so every user's first request
    lands in one burst (a k6 ramp adds users gradually and has no such burst).
    The step therefore runs two wrk processes with the same script: the bulk of
    the users, started first, and ``probes`` users started ``settle_s`` later,
    whose requests give the step's latency (their own opening burst is small).
    Requests per second and errors count both. Every user sends its first request
    as soon as it is connected (bench/wrk/users.lua): gunicorn's gthread worker
    holds a thread for a new connection until its first bytes arrive, so a
    connection that waits first would stall the server in a way no browser does.
    """
    probes = min(users, probes)
    bulk = users - probes
    threads = 2 if probes >= 2 else 1
    background = None
    if bulk:
        bthreads = 2 if bulk >= 2 else 1
        background = WrkRun(base, "users.lua", [str(think_ms), str(bulk // bthreads)], label="bulk",
                            connections=bulk, duration=settle_s + seconds + 1, threads=bthreads, timeout_s=timeout_s)
        time.sleep(settle_s)
    probe = run_wrk(base, "users.lua", [str(think_ms), str(probes // threads)], label=f"{users} users",
                    connections=probes, duration=seconds, threads=threads, timeout_s=timeout_s)
    if background is None:
        return probe
    rest = background.result()
    errors = {k: probe.errors.get(k, 0) + rest.errors.get(k, 0) for k in set(probe.errors) | set(rest.errors)}
    return replace(probe, connections=probe.connections + rest.connections, rps=probe.rps + rest.rps,
                   requests=probe.requests + rest.requests, errors=errors)


def fd_capacity() -> int:
    """How many connections wrk can open here: its file descriptor limit less a margin."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, soft - FD_MARGIN)


def raise_fd_limit() -> None:
    """Raise this process's soft fd limit to the hard one (inherited by wrk and the servers)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass
class Scenario:
    """The guide's ramp up / hold / ramp down, as a sequence of wrk steps."""

    ramp: list[int]  # connection counts tried in order, stopping at the first failing step
    step_s: float
    hold_s: float
    down_fractions: tuple[float, ...] = (0.5, 0.1)
    steps: list[dict] = field(default_factory=list)
    peak: int = 0
    peak_note: str = ""

    def run(self, one_step: Callable[[str, int, float], WrkStats], out: Callable[[str], None]) -> None:
        passing = 0
        for users in self.ramp:
            stats = one_step("ramp up", users, self.step_s)
            self._record("ramp up", stats, out)
            if not stats.passed():
                out(f"  ramp stopped: {users} users did not pass (p99 < {P99_LIMIT_MS:.0f} ms, no errors)")
                break
            passing = users
        if passing == 0:
            self.peak, self.peak_note = 0, f"not even {self.ramp[0]} users passed"
            return
        held = one_step("hold", passing, self.hold_s)
        self._record("hold", held, out)
        if held.passed():
            self.peak, self.peak_note = passing, f"held {passing} users for {self.hold_s:.0f} s"
        else:
            lower = [s["connections"] for s in self.steps if s["phase"] == "ramp up" and s["passed"]
                     and s["connections"] < passing]
            self.peak = max(lower, default=0)
            self.peak_note = (f"{passing} passed the ramp step but not the {self.hold_s:.0f} s hold; "
                              f"highest lower step that passed: {self.peak}")
        for fraction in self.down_fractions:
            users = max(1, int(passing * fraction))
            self._record("ramp down", one_step("ramp down", users, self.step_s), out)

    def _record(self, phase: str, stats: WrkStats, out: Callable[[str], None]) -> None:
        self.steps.append({"phase": phase, **stats.as_dict(), "passed": stats.passed()})
        out(f"  {phase:<9} {stats.line()}  {'pass' if stats.passed() else 'FAIL'}")
