"""``make bench``: the suite checks that it runs and writes a complete result, never how fast anything is.

The slow test runs ``python -m bench run --quick`` with every phase shortened
by flags (the output says "SHORTENED"), on the bench's own private Postgres
and Redis, and checks the result file, the plot and ``bench compare``. Speed
targets are the bench's business (its table), not assertions here.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import results
from bench.loadgen import WrkStats, parse_wrkjson

ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def bench(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_quick_run_writes_a_complete_result_and_compares_with_itself(tmp_path: Path) -> None:
    run = bench("run", "--quick", "--results-dir", str(tmp_path),
                # Shortened phases (labelled so in the output and the file); the seed is the quick scale's.
                "--page-seconds", "2", "--warmup-seconds", "1", "--before-max-seconds", "3", "--step-seconds", "2",
                "--hold-seconds", "2", "--mixed-seconds", "4", "--profile-seconds", "2", "--max-users", "100",
                timeout=540)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    for label in ("Feed Load Time", "Leaderboard Load Time", "Dashboard Load Time", "Search Response Time",
                  "Database Cache Hit Rate", "Peak Concurrent Users", "MV Refresh Time (avg)"):
        assert re.search(rf"^{re.escape(label)} .*(met|NOT met|p50 only)$", out, re.MULTILINE), label
    assert "QUICK RUN" in out and "SHORTENED" in out
    assert "== Conditions ==" in out and "== Freshness under load" in out

    path = Path(re.search(r"^result: (.+\.json)$", out, re.MULTILINE).group(1))
    png = Path(re.search(r"^plot:\s+(.+\.png)$", out, re.MULTILINE).group(1))
    assert path.parent == tmp_path and png.parent == tmp_path
    result = json.loads(path.read_text())
    assert results.problems(result) == []
    for page in results.PAGES:
        entry = result[f"{page}_ms"]
        assert entry["before"]["requests"] > 0 and entry["actual"]["requests"] > 0
        assert entry["before"]["p50"] <= entry["before"]["p99"] and entry["actual"]["p50"] <= entry["actual"]["p99"]
    assert result["quick"] is True and result["durations_shortened"] is True
    assert 0 <= result["cache_hit_rate"] <= 100
    assert result["peak_concurrent_users"] in {0, *result["load"]["scenario"]["ramp"]}
    assert result["mv_refresh_avg_ms"] > 0 and result["staleness_p99_s"] > 0
    # The mixed profile's upvotes reached the database and were matched with refreshes.
    assert any(v["writes"] > 0 and v["p99"] is not None for v in result["staleness"].values())
    for key in ("cpu_count", "rows", "gunicorn", "postgres", "client", "durations"):
        assert result["conditions"][key], key
    assert result["conditions"]["rows"]["users"] == 5_000  # the quick scale
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000

    same = bench("compare", str(path), str(path))
    assert same.returncode == 0, same.stderr
    assert "feed actual p99 (ms)" in same.stdout and "conditions that differ: none" in same.stdout


def _complete() -> dict:
    page = {"before": {"p50": 500.0, "p99": 900.0}, "actual": {"p50": 2.0, "p99": 9.0}}
    return {**{f"{p}_ms": page for p in results.PAGES}, "cache_hit_rate": 99.5, "peak_concurrent_users": 250,
            "mv_refresh_avg_ms": 640.0, "staleness_p99_s": 33.0, "quick": True, "conditions": {"cpu_count": 2}}


def test_problems_name_every_missing_or_non_numeric_key() -> None:
    assert results.problems(_complete()) == []
    broken = _complete()
    broken["search_ms"] = {"before": {"p50": 1.0, "p99": 2.0}, "actual": {"p50": None, "p99": float("nan")}}
    del broken["staleness_p99_s"]
    broken["peak_concurrent_users"] = True  # a bool is not a count
    found = results.problems(broken)
    assert any("search_ms.actual.p50" in p for p in found)
    assert any("search_ms.actual.p99" in p for p in found)
    assert any(p.startswith("staleness_p99_s") for p in found)
    assert any(p.startswith("peak_concurrent_users") for p in found)


def test_compare_prints_both_sides_and_the_change(tmp_path: Path) -> None:
    a, b = _complete(), _complete()
    b["feed_ms"] = {"before": {"p50": 500.0, "p99": 900.0}, "actual": {"p50": 4.0, "p99": 9.0}}
    b["conditions"] = {"cpu_count": 4}
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps(a))
    pb.write_text(json.dumps(b))
    done = bench("compare", str(pa), str(pb))
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if line.startswith("feed actual p50 (ms)"))
    assert row.split()[-4:] == ["4.00", "+2.00", "2.00x", "worse"]
    assert "conditions that differ: cpu_count" in done.stdout


def test_compare_refuses_missing_and_incomplete_files(tmp_path: Path) -> None:
    incomplete = tmp_path / "incomplete.json"
    incomplete.write_text(json.dumps({**_complete(), "cache_hit_rate": None}))
    for args, says in (((str(tmp_path / "nope.json"), str(incomplete)), "no such result file"),
                       ((str(incomplete), str(incomplete)), "cache_hit_rate"),
                       ((str(incomplete),), "give two result files")):
        done = bench("compare", *args)
        assert done.returncode != 0
        assert says in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_wrk_summary_line_is_parsed_into_milliseconds() -> None:
    line = ('WRKJSON {"requests": 1200, "duration_us": 2000000, "bytes": 1, "errors": {"connect": 0, "read": 1, '
            '"write": 0, "status": 2, "timeout": 3}, "latency_us": {"p50": 1500, "p90": 4000, "p95": 5000, '
            '"p99": 250000, "max": 300000, "mean": 2100.0}}')
    stats = parse_wrkjson("x", 10, "Running 2s test\n" + line + "\n")
    assert isinstance(stats, WrkStats)
    assert (stats.rps, stats.p50_ms, stats.p99_ms) == (600.0, 1.5, 250.0)
    assert stats.error_count == 6 and stats.error_rate == pytest.approx(6 / 1203)
    assert not stats.passed()  # p99 over 200 ms, and errors
    ok = parse_wrkjson("y", 10, line.replace('"read": 1', '"read": 0').replace('"status": 2', '"status": 0')
                       .replace('"timeout": 3', '"timeout": 0').replace('"p99": 250000', '"p99": 150000'))
    assert ok.passed()
