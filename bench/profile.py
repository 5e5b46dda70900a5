"""Where the time goes: py-spy samples of the API under load, and EXPLAIN of the slowest page's query.

py-spy (requirements-dev) attaches to each gunicorn worker of the API for a
few seconds while wrk drives the mixed profile, without pausing it
(``--nonblocking``), and writes collapsed stacks (``--format raw``, the input
of flamegraph tools) next to the result file. Idle threads are not sampled, so
the shares are of busy time. Printed: the functions that hold the CPU (self
time) and the code paths that contain them (inclusive time).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from schema.db import queries

Out = Callable[[str], None]
_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>.*?)(?::\d+)?\)$")


def pyspy_path() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def start_pyspy(pids: list[int], seconds: float, out_dir: Path, stamp: str) -> list[tuple[subprocess.Popen, Path]]:
    exe = pyspy_path()
    if exe is None:
        return []
    started = []
    for pid in pids:
        path = out_dir / f"{stamp}-pyspy-{pid}.txt"
        proc = subprocess.Popen([exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
                                 "--rate", "67", "--format", "raw", "--nonblocking", "--output", str(path)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        started.append((proc, path))
    return started


def _short(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    file = m.group("file")
    for marker in ("site-packages/", "/lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    file = file.split("/wt/")[-1] if "/wt/" in file else file
    return f"{m.group('fn')} ({file})"


def _package(frame: str) -> str:
    m = re.search(r"\((?P<file>[^)]*)\)$", frame)
    file = m.group("file") if m else frame
    top = file.split("/", 1)[0]
    return top[:-3] if top.endswith(".py") else top


def summarize(paths: list[Path], top: int = 10) -> dict:
    """Shares of the samples: self time per package and per function, inclusive time of the product's code."""
    self_fn: Counter[str] = Counter()
    self_pkg: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    total = 0
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = [_short(f) for f in stack.split(";")]
            total += n
            self_fn[frames[-1]] += n
            self_pkg[_package(frames[-1])] += n
            for f in set(frames):
                if _package(f) in {"api", "schema", "monitoring", "tasks"}:
                    ours[f] += n

    def shares(c: Counter[str]) -> list[tuple[str, float]]:
        return [(name, k / total * 100) for name, k in c.most_common(top)] if total else []

    return {"samples": total, "self_by_package": shares(self_pkg), "self": shares(self_fn),
            "product_inclusive": shares(ours), "files": [str(p) for p in paths]}


def print_profile(summary: dict, out: Out) -> None:
    out(f"py-spy: {summary['samples']} samples of the API's gunicorn workers (threads py-spy saw as busy: on the "
        f"CPU or in a call it does not know as idle); collapsed stacks in "
        f"{', '.join(Path(f).name for f in summary['files'])}")
    out("  self time by package: " + ", ".join(f"{name} {pct:.0f}%" for name, pct in summary["self_by_package"]))
    out("  self time, top functions:")
    for name, pct in summary["self"]:
        out(f"    {pct:5.1f}%  {name}")
    out("  inclusive time of the product's own functions (api/, schema/):")
    for name, pct in summary["product_inclusive"]:
        out(f"    {pct:5.1f}%  {name}")


# The product's statement behind each page of the table, with the parameters of a first page.
PAGE_QUERIES = {
    "feed": ("api_reads", "feed_trending", lambda user, q: {"after_score": None, "after_id": None, "lim": 21}),
    "leaderboard": ("api_reads", "leaderboard_projects", lambda user, q: {"after_rank": 0, "lim": 21}),
    "dashboard": ("api_me", "dashboard", lambda user, q: {"user_id": user}),
    "search": ("api_reads", "search", lambda user, q: {"q": q, "type": None, "lim": 21}),
}


def explain_page(engine: sa.Engine, page: str, user: str, q: str) -> list[str]:
    """EXPLAIN (ANALYZE, BUFFERS) of the statement the API runs for ``page``."""
    module, name, params = PAGE_QUERIES[page]
    statement = queries(module)[name]
    explain = sa.text("EXPLAIN (ANALYZE, BUFFERS) " + statement.text)  # a registry query, no input
    with engine.connect() as conn:
        return [row[0] for row in conn.execute(explain, params(user, q))]
