"""What ``python -m bench run`` prints: the plan, the guide's table, the load test, the conditions.

A target is judged on the Actual p99 (every request, not the typical one):
"met" when p99 is within it, "p50 only" when the median is and the tail is
not, else "NOT met". Ratios are Before/Actual of the same percentile.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from bench.loadgen import PROBE_USERS
from schema.settings import Settings

Out = Callable[[str], None]
# The guide's Success Metrics table (its last section).
TARGETS_MS = {"feed": 120, "leaderboard": 80, "dashboard": 50, "search": 150}
GUIDE_BEFORE = {"feed": 800, "leaderboard": 1200, "dashboard": 600, "search": 1500, "cache_hit_rate": 85}
LABELS = {"feed": "Feed Load Time", "leaderboard": "Leaderboard Load Time", "dashboard": "Dashboard Load Time",
          "search": "Search Response Time"}
# The seed's bench scale (100k users, 500k projects, 5M upvotes) loads in under 5 minutes on 2 cores
# (schema/seed.py's budget); the estimate of a full run uses that bound.
SEED_BENCH_S = 300
BENCH_OVER_QUICK = 20  # rows of the bench scale / rows of the quick scale (schema/seed.py SCALES)


def gunicorn_facts(settings: Settings, workers: int) -> dict[str, Any]:
    from gunicorn.config import Config

    return {"workers": workers, "threads": settings.gunicorn_threads, "worker_class": settings.gunicorn_worker_class,
            "worker_connections": Config().settings["worker_connections"].get(),
            "timeout_s": settings.gunicorn_timeout, "keepalive_s": 5, "config": "api/gunicorn_conf.py",
            "db_pool_size": settings.db_pool_size}


def print_plan(plan: Any, args: Any, say: Out) -> None:
    mode = "QUICK (scale quick, ~1/20 of bench; shorter phases)" if args.quick else "FULL (scale bench)"
    say(f"make bench: {mode}" + ("; phases SHORTENED by flags" if args.shortened else ""))
    say(f"plan: Actual {plan.page_s:g} s per page (+{plan.warmup_s:g} s warm-up); Before {plan.before_min_s:g}-"
        f"{plan.before_max_s:g} s per page (~{plan.before_samples} requests); scenario steps {list(plan.ramp)} users x "
        f"{plan.step_s:g} s, hold {plan.hold_s:g} s, 2 ramp-down steps; mixed {plan.mixed_s:g} s x 2 worker counts, "
        f"profile {plan.profile_s:g} s")


def _verdict(actual: dict, target: float) -> str:
    if actual["p99"] <= target:
        return "met"
    if actual["p50"] <= target:
        return "p50 only"
    return "NOT met"


def _ms(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def table_lines(r: dict) -> list[str]:
    lines = [f"{'Metric':<26}{'Before p50 / p99':>22}{'Target':>10}{'Actual p50 / p99':>22}{'Before/Actual':>17}"
             f"  Target"]
    for page, label in LABELS.items():
        e = r[f"{page}_ms"]
        b, a = e["before"], e["actual"]
        ratio = f"{b['p50'] / a['p50']:,.0f}x / {b['p99'] / a['p99']:,.0f}x"
        lines.append(f"{label:<26}{_ms(b['p50']) + ' / ' + _ms(b['p99']) + ' ms':>22}{str(e['target']) + 'ms':>10}"
                     f"{_ms(a['p50']) + ' / ' + _ms(a['p99']) + ' ms':>22}{ratio:>17}  {_verdict(a, e['target'])}")
    hit, hit_b = r["cache_hit_rate"], r.get("cache_hit_rate_before")
    lines.append(f"{'Database Cache Hit Rate':<26}{(f'{hit_b:.2f}%' if hit_b is not None else 'n/a'):>22}"
                 f"{'95%+':>10}{(f'{hit:.2f}%' if hit is not None else 'n/a'):>22}{'':>17}  "
                 f"{'met' if hit is not None and hit >= 95 else 'NOT met'}")
    peak = r["peak_concurrent_users"]
    lines.append(f"{'Peak Concurrent Users':<26}{'N/A':>22}{'5000':>10}{f'{peak:,} users':>22}{'':>17}  "
                 f"{'met' if peak >= 5000 else 'NOT met'}")
    avg = r["mv_refresh_avg_ms"]
    lines.append(f"{'MV Refresh Time (avg)':<26}{'N/A':>22}{'< 500ms':>10}"
                 f"{(_ms(avg) + ' ms') if avg is not None else 'n/a':>22}{'':>17}  "
                 f"{'met' if avg is not None and avg < 500 else 'NOT met'}")
    return lines


def print_all(r: dict, say: Out) -> None:
    out = print
    c = r["conditions"]
    g = c["gunicorn"]
    out("")
    quick = " -- QUICK RUN (scale quick, 1/20 of bench)" if r["quick"] else ""
    short = " -- phases SHORTENED by flags" if r["durations_shortened"] else ""
    out(f"== Success Metrics (the guide's table), scale {r['scale']}{quick}{short} ==")
    for line in table_lines(r):
        out(line)
    out("Before: the same pages computed from the base tables by bench/before_app.py on the same gunicorn settings; "
        "Actual: the product's API. Both over HTTP, one connection, p50 / p99 of every request; target judged on p99.")
    out("guide's own Before column: " + ", ".join(f"{k} {v}{'%' if k == 'cache_hit_rate' else ' ms'}"
                                                  for k, v in GUIDE_BEFORE.items()))
    for page in LABELS:
        e = r[f"{page}_ms"]
        out(f"  {page}: {e['path']}  before n={e['before']['requests']} in {e['before']['seconds']} s, "
            f"actual n={e['actual']['requests']} in {e['actual']['seconds']} s, errors {e['before']['errors']}/"
            f"{e['actual']['errors']}")

    load = r["load"]
    sc = load["scenario"]
    cap = sc["users_cap"]
    out("")
    out("== Load test: the guide's scenario (virtual users on the feed, ~1 s think time) ==")
    out(f"{'phase':<10}{'users':>7}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'errors':>8}{'err %':>8}  pass")
    for s in sc["steps"]:
        out(f"{s['phase']:<10}{s['connections']:>7}{s['rps']:>9.0f}{s['p50_ms']:>9.2f}{s['p95_ms']:>9.2f}"
            f"{s['p99_ms']:>9.2f}{sum(s['errors'].values()):>8}{s['error_rate'] * 100:>8.2f}  "
            f"{'yes' if s['passed'] else 'NO'}")
    out(f"peak concurrent users (p99 < 200 ms, no errors): {r['peak_concurrent_users']:,}; {sc['note']}")
    out(f"scaled down from the guide's {cap['guide']:,}: ramp tried up to {cap['tried_up_to']:,} users "
        f"(wrk's file descriptors allow {cap['fd_capacity']:,}); the server keeps at most {g['workers']} workers x "
        f"{g['worker_connections']} gthread worker_connections = {cap['server_connections']:,} keep-alive "
        f"connections open, and {c['cpu_count']} CPUs are shared by wrk, gunicorn, Postgres, Redis and Celery")
    out("")
    out(f"== Load test: mixed profile ({c['client']['mixed']}) ==")
    for key in ("mixed", "mixed_plus_one", "mixed_again"):
        m = load[key]
        out(f"{m['label']:<22} {m['rps']:8.0f} req/s  p50 {m['p50_ms']:.2f}  p95 {m['p95_ms']:.2f}  "
            f"p99 {m['p99_ms']:.2f} ms  errors {sum(m['errors'].values())} ({m['error_rate'] * 100:.2f}%)")
    base = (load["mixed"]["rps"] + load["mixed_again"]["rps"]) / 2
    out(f"one more gunicorn worker ({load['workers']} -> {load['workers'] + 1}) adds {load['rps_per_added_worker']:+.0f} "
        f"req/s ({load['rps_per_added_worker'] / max(base, 1) * 100:+.0f}% of the mean of the two {load['workers']}-worker "
        f"runs) on {c['cpu_count']} CPUs shared with wrk, Postgres and the workers")

    out("")
    out("== After the load test: the guide's queries ==")
    for label, key in (("before pages", "before_pages"), ("after load", "after_load")):
        h = r["cache_hit"][key]
        ratio = f"{h['ratio']:.2f}%" if h["ratio"] is not None else "n/a"
        out(f"cache hit ratio ({label}; counters reset at its start): heap_read {h['heap_read']:,}  "
            f"heap_hit {h['heap_hit']:,}  cache_hit_ratio {ratio}")
    out(f"MV refresh (guide's query, whole log): overall {_opt(r['mv_refresh_avg_ms'])} ms; without the seed's "
        f"populating refreshes: {_opt(r['mv_refresh_avg_ms_engine'])} ms")
    for view, v in sorted(r["mv_refresh_by_view"].items()):
        eng = r["mv_refresh_by_view_engine"].get(view, {})
        out(f"  {view:<26} avg {v['avg_ms']:9.1f} ms  count {v['count']:4}   (engine only: "
            f"{_opt(eng.get('avg_ms'))} ms x {eng.get('count', 0)})")
    out("slowest statements during the load (pg_stat_statements, guide's query; top 5):")
    for s in r["slow_queries"][:5]:
        out(f"  {s['mean_ms']:9.2f} ms x {s['calls']:<7} {s['query'][:110]}")

    out("")
    out("== Freshness under load: staleness of the mixed profile's upvotes (commit -> completion of the first "
        "refresh that started after it) ==")
    out(f"{'view':<26}{'debounce':>9}{'max_wait':>9}{'writes':>8}{'refreshes':>10}{'refresh p50 ms':>15}"
        f"{'p50 s':>8}{'p99 s':>8}{'max s':>8}")
    for view, v in sorted(r["staleness"].items()):
        out(f"{view:<26}{v['debounce_s']:>9.0f}{v['max_wait_s']:>9.0f}{v['writes']:>8}{v['refreshes']:>10}"
            f"{_opt(v['refresh_ms_p50']):>15}{_opt(v['p50']):>8}{_opt(v['p99']):>8}{_opt(v['max']):>8}"
            + (f"  ({v['unrefreshed']} not refreshed)" if v["unrefreshed"] else ""))
    out(f"staleness p99, worst view: {_opt(r['staleness_p99_s'])} s")

    out("")
    out("== Where the time goes ==")
    prof = r["profile"]
    if prof.get("samples"):
        from bench.profile import print_profile

        print_profile(prof, out)
    else:
        out(f"py-spy profile skipped: {prof.get('skipped')}")
    ex = r["explain"]
    out(f"EXPLAIN (ANALYZE, BUFFERS) of the statement behind the slowest Actual page ({ex['page']}, by p99):")
    for line in ex["plan"][:30]:
        out("  " + line)

    out("")
    out("== Conditions ==")
    out(f"machine: {c['cpu_count']} CPUs, {c['memory_mb']:,} MB, {c['machine']}; load average at start "
        f"{c['load_average_at_start']}, at end {c['load_average_at_end']} (the CPUs may be shared)")
    out(f"data: scale {c['scale']}, seeded in {c['seed_seconds']:.0f} s, database {c['database_size']}; rows "
        + ", ".join(f"{k} {v:,}" for k, v in c["rows"].items()))
    out("postgres: " + ", ".join(f"{k}={v}" for k, v in c["postgres"].items()))
    out(f"gunicorn: {g['workers']} workers x {g['threads']} threads ({g['worker_class']}), worker_connections "
        f"{g['worker_connections']}, keepalive {g['keepalive_s']} s, {g['config']}; DB pool {g['db_pool_size']}/process")
    for name, cmd in c["processes"].items():
        out(f"  {name}: {cmd}")
    out(f"  not started: {c['not_started']}")
    out(f"client: {c['client']['tool']} on the same machine")
    for k in ("table", "scenario", "mixed"):
        out(f"  {k}: {c['client'][k]}")
    out(f"scenario: per step the bulk of the users start first, {PROBE_USERS} probe users 3 s later; the step's "
        "latency is the probes', its req/s and errors are everyone's (bench/loadgen.py users_step)")
    out("durations (s): " + json.dumps({k: v for k, v in c["durations"].items() if k != "scale"})
        + ("  SHORTENED by flags" if c["durations_shortened"] else ""))
    out("phase wall times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in r["phases_s"].items())
        + f"; total {sum(r['phases_s'].values()):.0f}")
    if "estimate_full_s" in r:
        est = r["estimate_full_s"]
        out("estimated `make bench` (full) from this run: " + ", ".join(f"{k} {v:.0f}" for k, v in est.items()
                                                                       if k != "total")
            + f"; total ~{est['total'] / 60:.1f} min")


def _opt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def estimate_full(phases: dict[str, float], full: Any, quick: Any, slowest_refresh_s: float) -> dict[str, float]:
    """Seconds a full run should take, from this quick run's phase times.

    Fixed durations come from the FULL plan (the scenario's ramp counted whole,
    the Before pages at their cap); each phase's overhead beyond its wrk time
    (process start, warm-up probes) is taken from this run as is; the seed uses
    SEED_BENCH_S; the data-bound rest (the queries after the load test) is
    scaled by the bench/quick row ratio, and the drain (debounce windows plus
    the last refresh) grows by the slowest view's refresh scaled the same way.
    A rough figure, printed as such."""
    def wrk_time(p: Any) -> dict[str, float]:
        return {"before": 4 * p.before_max_s,
                "actual": 4 * (p.warmup_s + p.page_s),
                # each step: the bulk users settle 3 s before the probe users' step_s, +1 s tail
                "scenario": (len(p.ramp) + 2) * (p.step_s + 4) + p.hold_s + 4,
                "mixed": 3 * (p.warmup_s + p.mixed_s) + p.profile_s}
    wf, wq = wrk_time(full), wrk_time(quick)
    est = {"setup": phases.get("setup", 0.0), "seed": float(SEED_BENCH_S), "start": phases.get("start", 0.0),
           "stop": phases.get("stop", 0.0)}
    for name in ("before", "actual", "scenario", "mixed"):
        # quick's "before" may end before its cap (fast pages): its overhead is then counted as 0
        est[name] = wf[name] + max(0.0, phases.get(name, 0.0) - wq[name])
    est["before"] += 4 * full.before_max_s / full.before_samples  # the probe request per page
    est["drain"] = phases.get("drain", 0.0) + (BENCH_OVER_QUICK - 1) * slowest_refresh_s
    est["after"] = max(20.0, BENCH_OVER_QUICK * phases.get("after", 0.0))  # full-table reads, EXPLAIN
    est["total"] = sum(est.values())
    return est
