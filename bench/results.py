"""The result file of ``make bench`` (bench/results/<timestamp>.json), its plot, and ``bench compare``.

Keys every result file has (README, "Benchmarks"): ``feed_ms``, ``leaderboard_ms``,
``dashboard_ms``, ``search_ms`` (each ``{before: {p50, p99}, actual: {p50, p99}}``
in milliseconds), ``cache_hit_rate`` (percent, the guide's query after the load
test), ``peak_concurrent_users``, ``mv_refresh_avg_ms``, ``staleness_p99_s`` (the
worst view's p99), ``quick`` and ``conditions``; the rest is detail.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PAGES = ("feed", "leaderboard", "dashboard", "search")
SCALARS = ("cache_hit_rate", "peak_concurrent_users", "mv_refresh_avg_ms", "staleness_p99_s")
Out = Callable[[str], None]


class ResultError(ValueError):
    """A result file is missing, unreadable or incomplete; the message names the file and the problem."""


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def problems(result: dict) -> list[str]:
    """What keeps ``result`` from being a complete result file (empty when it is one)."""
    found = []
    for page in PAGES:
        entry = result.get(f"{page}_ms")
        for side in ("before", "actual"):
            for p in ("p50", "p99"):
                value = entry.get(side, {}).get(p) if isinstance(entry, dict) else None
                if not _numeric(value):
                    found.append(f"{page}_ms.{side}.{p} is {value!r}, not a number")
    for key in SCALARS:
        if not _numeric(result.get(key)):
            found.append(f"{key} is {result.get(key)!r}, not a number")
    if not isinstance(result.get("quick"), bool):
        found.append("quick is not true/false")
    if not isinstance(result.get("conditions"), dict) or not result["conditions"]:
        found.append("conditions is missing")
    return found


def write(result: dict, stamp: str, directory: Path = RESULTS_DIR) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stamp}.json"
    path.write_text(json.dumps(result, indent=2, sort_keys=False, default=str) + "\n")
    return path


def load(path: str | Path) -> dict:
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise ResultError(f"{p}: no such result file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultError(f"{p}: not a readable JSON result file ({exc})") from None
    if not isinstance(data, dict):
        raise ResultError(f"{p}: not a result file (top level is not an object)")
    missing = problems(data)
    if missing:
        raise ResultError(f"{p}: incomplete result file: {'; '.join(missing[:3])}")
    return data


# --------------------------------------------------------------------------
# compare
# --------------------------------------------------------------------------

def _rows(r: dict) -> list[tuple[str, float | None, str]]:
    """(label, value, better) rows of one result; better is 'lower' or 'higher'."""
    rows: list[tuple[str, float | None, str]] = []
    for page in PAGES:
        e = r[f"{page}_ms"]
        for side in ("before", "actual"):
            for p in ("p50", "p99"):
                rows.append((f"{page} {side} {p} (ms)", e[side][p], "lower"))
    rows.append(("cache hit rate after load (%)", r["cache_hit_rate"], "higher"))
    rows.append(("cache hit rate, before pages (%)", r.get("cache_hit_rate_before"), "higher"))
    rows.append(("peak concurrent users", r["peak_concurrent_users"], "higher"))
    rows.append(("MV refresh avg (ms)", r["mv_refresh_avg_ms"], "lower"))
    rows.append(("staleness p99, worst view (s)", r["staleness_p99_s"], "lower"))
    mixed = r.get("load", {}).get("mixed", {})
    rows.append(("mixed profile req/s", mixed.get("rps"), "higher"))
    rows.append(("mixed profile p99 (ms)", mixed.get("p99_ms"), "lower"))
    rows.append(("req/s added by one more worker", r.get("load", {}).get("rps_per_added_worker"), "higher"))
    return rows


def _fmt(v: float | None) -> str:
    if v is None or not _numeric(v):
        return "-"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.2f}"


def compare(path_a: str | Path, path_b: str | Path, out: Out = print) -> int:
    a, b = load(path_a), load(path_b)
    out(f"A: {path_a}  ({a.get('started_at', '?')}, scale {a.get('scale', '?')}{', quick' if a['quick'] else ''})")
    out(f"B: {path_b}  ({b.get('started_at', '?')}, scale {b.get('scale', '?')}{', quick' if b['quick'] else ''})")
    out(f"{'metric':<34}{'A':>12}{'B':>12}{'B - A':>12}{'B / A':>9}  change")
    for (label, va, better), (_l, vb, _b) in zip(_rows(a), _rows(b), strict=True):
        diff = ratio = verdict = ""
        if _numeric(va) and _numeric(vb):
            diff = f"{vb - va:+,.2f}" if abs(vb - va) < 100 else f"{vb - va:+,.0f}"
            ratio = f"{vb / va:.2f}x" if va else ""
            if vb != va:
                verdict = "better" if (vb < va) == (better == "lower") else "worse"
        out(f"{label:<34}{_fmt(va):>12}{_fmt(vb):>12}{diff:>12}{ratio:>9}  {verdict}")
    ca, cb = a["conditions"], b["conditions"]
    differing = [k for k in sorted(set(ca) | set(cb)) if ca.get(k) != cb.get(k)]
    out("conditions that differ: " + (", ".join(differing) if differing else "none"))
    for k in differing:
        out(f"  {k}: A={json.dumps(ca.get(k), default=str)[:100]}  B={json.dumps(cb.get(k), default=str)[:100]}")
    return 0


# --------------------------------------------------------------------------
# plot
# --------------------------------------------------------------------------

def plot(result: dict, path: Path) -> Path:
    """Latency percentiles before vs actual per page (log scale), and staleness over time under load."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5.5))
    width = 0.2
    for i, (side, p, color) in enumerate((("before", "p50", "#e8a0a0"), ("before", "p99", "#c0392b"),
                                          ("actual", "p50", "#9cc9e8"), ("actual", "p99", "#1f6fa8"))):
        xs = [n + (i - 1.5) * width for n in range(len(PAGES))]
        left.bar(xs, [result[f"{page}_ms"][side][p] for page in PAGES], width, label=f"{side} {p}", color=color)
    targets = result.get("targets", {})
    for n, page in enumerate(PAGES):
        if page in targets:
            left.hlines(targets[page], n - 0.45, n + 0.45, colors="black", linestyles="dashed",
                        label="guide's target" if n == 0 else None)
    left.set_yscale("log")
    left.set_xticks(range(len(PAGES)), PAGES)
    left.set_ylabel("latency, ms (log scale)")
    left.set_title("Page latency over HTTP: before (base tables) vs actual (product)")
    left.legend(fontsize=8)

    series = result.get("staleness_series", {})
    for view, points in sorted(series.items()):
        if points:
            right.scatter([t for t, _ in points], [s for _, s in points], s=6, label=view)
    for start, end, label in result.get("load_windows", []):
        right.axvspan(start, end, alpha=0.08, color="grey")
        right.text(start, 0, label, fontsize=7, va="bottom")
    right.set_xlabel("seconds since the mixed profile started (write commit time)")
    right.set_ylabel("staleness, s (commit -> first refresh started after it completes)")
    right.set_title("Freshness under load, per view")
    if series:
        right.legend(fontsize=7, markerscale=2)
    quick = " (quick)" if result.get("quick") else ""
    fig.suptitle(f"make bench{quick}: scale {result.get('scale')}, {result.get('started_at')}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
