"""``GET /status``: one self-contained HTML page for the on-call engineer.

Shows, from the same readings as ``/metrics``: each registered view's
freshness (status, pending requests, age of the oldest one, last refresh and
its duration and outcome, refreshes in 24 h, last error), the newest
refreshes, the failures of the last 24 h and the reconciliation history.
Colour says the state at a glance: green fresh, amber pending, red stale or
failed, blue refreshing, grey disabled.

No external assets (no CDN, fonts or images: it must load on a locked-down
network and when the internet is what broke). The page is rendered on the
server, so it reads fine without JavaScript; a small inline script re-fetches
it every ``?refresh=`` seconds (default 10, 2..300) and swaps the content in
place (scroll position kept; ``<noscript>`` falls back to a meta refresh). If
the API cannot be reached, the last content stays with a red "not updated
since" banner. With Postgres down the page answers 503 with that banner.

Not authenticated, like ``/health`` and ``/metrics``: it shows view names and
refresh errors, so keep the API's operations paths on an internal network.
"""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape
from typing import Any

import falcon

from monitoring.readings import Reader, Readings, ReadingsUnavailable, ReconciliationRun, ViewReading
from schema.settings import Settings

HISTORY = 25  # rows of recent refreshes and failures shown

CSS = """
:root { --ok:#1a7f37; --warn:#b7791f; --bad:#c62828; --info:#1f5fbf; --muted:#6b7280; --bg:#f6f7f9; }
* { box-sizing: border-box; }
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; background: var(--bg);
       color: #111827; }
header { background: #111827; color: #fff; padding: 10px 20px; display: flex; gap: 16px; align-items: baseline; }
header h1 { font-size: 18px; margin: 0; }
header .meta { color: #d1d5db; font-size: 12px; }
main { padding: 12px 20px 40px; }
.banner { padding: 10px 20px; color: #fff; background: var(--bad); font-weight: 600; }
.banner[hidden] { display: none; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 6px 0 14px; }
.card { background: #fff; border-radius: 6px; padding: 8px 14px; min-width: 150px; border-left: 6px solid var(--muted);
        box-shadow: 0 1px 2px rgba(0,0,0,.08); }
.card .v { font-size: 22px; font-weight: 700; }
.card .k { font-size: 12px; color: var(--muted); }
.card.ok { border-color: var(--ok); } .card.warn { border-color: var(--warn); } .card.bad { border-color: var(--bad); }
h2 { font-size: 15px; margin: 18px 0 6px; }
table { border-collapse: collapse; width: 100%; background: #fff; box-shadow: 0 1px 2px rgba(0,0,0,.08); }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid #e5e7eb; vertical-align: top; }
th { background: #f3f4f6; font-size: 12px; color: #374151; white-space: nowrap; }
td.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.err { color: var(--bad); font-family: ui-monospace, monospace; font-size: 12px; max-width: 520px;
         overflow-wrap: anywhere; }
tr.bad td:first-child { box-shadow: inset 4px 0 var(--bad); }
tr.warn td:first-child { box-shadow: inset 4px 0 var(--warn); }
.b { display: inline-block; padding: 1px 8px; border-radius: 10px; color: #fff; font-size: 12px; font-weight: 600;
     white-space: nowrap; }
.b.ok { background: var(--ok); } .b.warn { background: var(--warn); } .b.bad { background: var(--bad); }
.b.info { background: var(--info); } .b.muted { background: var(--muted); }
.none { color: var(--muted); font-style: italic; }
"""

# Re-fetch this page and swap <main> in place. No console output on purpose:
# a failed fetch shows the banner instead of logging.
SCRIPT = """
(function () {
  var every = Number(document.body.dataset.refresh) * 1000;
  var banner = document.getElementById("stale-banner");
  var lastOk = new Date();
  function tick() {
    fetch(window.location.href, {cache: "no-store", headers: {"Accept": "text/html"}})
      .then(function (r) { return r.text(); })
      .then(function (text) {
        var doc = new DOMParser().parseFromString(text, "text/html");
        var main = doc.querySelector("main");
        if (!main) { throw new Error("no content"); }
        document.querySelector("main").replaceWith(main);
        document.getElementById("generated").textContent = doc.getElementById("generated").textContent;
        var serverBanner = doc.getElementById("db-banner");
        document.getElementById("db-banner").replaceWith(serverBanner);
        document.body.dataset.updates = String(Number(document.body.dataset.updates || "0") + 1);
        lastOk = new Date();
        banner.hidden = true;
      })
      .catch(function () {
        banner.textContent = "Status page not updated since " + lastOk.toLocaleTimeString() +
          ": the API does not answer.";
        banner.hidden = false;
      })
      .then(function () { window.setTimeout(tick, every); });
  }
  window.setTimeout(tick, every);
})();
"""


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _ago(when: datetime | None, now: datetime) -> str:
    if when is None:
        return '<span class="none">never</span>'
    return f'<span title="{escape(when.astimezone(UTC).isoformat(timespec="seconds"))}">' \
           f"{escape(_age((now - when).total_seconds()))} ago</span>"


def _ms(value: int | None) -> str:
    return "—" if value is None else f"{value:,} ms"


def _badge(text: str, tone: str) -> str:
    return f'<span class="b {tone}">{escape(text)}</span>'


def _err(text: str | None) -> str:
    return f'<td class="err">{escape(text[:400])}</td>' if text else "<td></td>"


REFRESH_TONE = {"completed": "ok", "failed": "bad", "abandoned": "bad", "skipped": "muted", "in_progress": "info"}
RECON_TONE = {"completed": "ok", "running": "info", "partial": "warn", "failed": "bad", "abandoned": "bad"}


def view_state(v: ViewReading) -> tuple[str, str]:
    """(label, tone) of a view, worst first."""
    if not v.enabled:
        return "disabled", "muted"
    if v.status == "in_progress":
        return "refreshing", "info"
    if v.stale:
        return "stale", "bad"
    if v.status == "pending":
        return "pending", "warn"
    if v.status == "failed":
        return "failed", "bad"
    return "fresh", "ok"


def _cards(r: Readings) -> str:
    now = r.taken_at
    states = [view_state(v) for v in r.views]
    bad = sum(tone == "bad" for _, tone in states)
    failed_24h = sum(v.refreshes_24h["failed"] for v in r.views)
    depth = sum(v.pending_requests for v in r.views)
    cards = [
        ("Views fresh", f"{sum(label == 'fresh' for label, _ in states)} / {len(r.views)}", "ok" if not bad else "bad"),
        ("Stale views", str(r.stale_views), "bad" if r.stale_views else "ok"),
        ("Queue depth (requests)", str(depth), "warn" if depth else "ok"),
        ("Failed refreshes (24h)", str(failed_24h), "bad" if failed_24h else "ok"),
    ]
    run = r.last_reconciliation
    if run is None:
        cards.append(("Last reconciliation", "none yet", "warn"))
    else:
        tone = "ok" if run.status == "completed" and not run.unfixed else ("bad" if run.unfixed or run.status in
                                                                            ("failed", "abandoned") else "warn")
        ended = run.finished_at or run.started_at
        cards.append((f"Last reconciliation ({_age((now - ended).total_seconds())} ago)",
                       f"{run.status}, {run.unfixed} unfixed", tone))
    if r.db_cache_hit_ratio is not None:
        ratio = r.db_cache_hit_ratio
        cards.append(("DB cache hit ratio", f"{ratio * 100:.1f}%", "ok" if ratio >= 0.95 else "warn"))
    return '<div class="cards">' + "".join(
        f'<div class="card {tone}"><div class="v">{escape(value)}</div><div class="k">{escape(key)}</div></div>'
        for key, value, tone in cards
    ) + "</div>"


def _views_table(r: Readings) -> str:
    now = r.taken_at
    rows = []
    for v in r.views:
        label, tone = view_state(v)
        last = _badge(v.last_status, REFRESH_TONE.get(v.last_status, "muted")) if v.last_status else \
            '<span class="none">none</span>'
        counts = v.refreshes_24h
        rows.append(
            f'<tr class="{tone}" data-view="{escape(v.view_name)}" data-state="{escape(label)}">'
            f"<td><b>{escape(v.view_name)}</b></td><td>{_badge(label, tone)}</td>"
            f'<td class="n">{v.pending_requests}</td>'
            f'<td class="n">{escape(_age(v.staleness_seconds)) if v.pending_requests else "—"}</td>'
            f"<td>{_ago(v.last_success_at, now)}</td>"
            f'<td class="n">{_ms(v.last_duration_ms)}</td><td>{last}</td>'
            f'<td class="n">{counts["completed"]} / <b>{counts["failed"]}</b> / {counts["skipped"]}'
            f' / {counts["abandoned"]}</td>'
            f"{_err(v.last_error if v.last_status in ('failed', 'abandoned') else None)}</tr>"
        )
    return (
        '<table id="views"><thead><tr><th>View</th><th>State</th><th>Pending requests</th><th>Oldest pending</th>'
        "<th>Last success</th><th>Last duration</th><th>Last outcome</th>"
        "<th>24h completed / failed / skipped / abandoned</th><th>Last error</th></tr></thead><tbody>"
        + "".join(rows) + "</tbody></table>"
    )


def _refresh_rows(rows: list[dict[str, Any]], now: datetime, *, cleared: bool) -> str:
    if not rows:
        return '<tr><td colspan="7" class="none">none</td></tr>'
    out = []
    for row in rows:
        status = row["status"]
        tone = REFRESH_TONE.get(status, "muted")
        out.append(
            f'<tr class="{"bad" if tone == "bad" else ""}"><td>{_ago(row["refresh_started_at"], now)}</td>'
            f"<td>{escape(row['view_name'])}</td><td>{escape(row['source'] or '')}</td>"
            f"<td>{_badge(status, tone)}</td><td class=\"n\">{_ms(row['duration_ms'])}</td>"
            + (f'<td class="n">{row["requests_cleared"] if row["requests_cleared"] is not None else "—"}</td>'
               if cleared else "")
            + f"{_err(row['error'])}</tr>"
        )
    return "".join(out)


def _reconciliation_rows(runs: list[ReconciliationRun], now: datetime) -> str:
    if not runs:
        return '<tr><td colspan="10" class="none">no reconciliation has run yet</td></tr>'
    out = []
    for run in runs:
        tone = RECON_TONE.get(run.status, "muted")
        flagged = tone == "bad" or (run.unfixed > 0 and run.status != "running")  # unfixed: the row is red
        parts = ", ".join(
            f"{escape(part)} {int((run.parts.get(part) or {}).get('found') or 0)}"
            f"/{int((run.parts.get(part) or {}).get('fixed') or 0)}"
            for part in run.tables
        )
        duration = _age((run.finished_at - run.started_at).total_seconds()) if run.finished_at else "running"
        out.append(
            f'<tr class="{"bad" if flagged else ""}"><td>{_ago(run.started_at, now)}</td>'
            f"<td>{escape(duration)}</td><td>{_badge(run.status, tone)}</td>"
            f"<td>{'fix' if run.auto_fix else 'report only'}</td><td class=\"n\">{run.rows_checked:,}</td>"
            f'<td class="n">{run.found}</td><td class="n">{run.fixed}</td><td class="n"><b>{run.unfixed}</b></td>'
            f"<td>{parts}</td>{_err(run.error)}</tr>"
        )
    return "".join(out)


def render_main(r: Readings) -> str:
    now = r.taken_at
    return (
        "<main>"
        + _cards(r)
        + f"<h2>Materialized views ({len(r.views)} registered)</h2>" + _views_table(r)
        + "<h2>Failures (last 24 h)</h2>"
        '<table id="failures"><thead><tr><th>Started</th><th>View</th><th>Source</th><th>Outcome</th>'
        "<th>Duration</th><th>Error</th></tr></thead><tbody>"
        + _refresh_rows(r.recent_failures, now, cleared=False) + "</tbody></table>"
        + "<h2>Recent refreshes</h2>"
        '<table id="refreshes"><thead><tr><th>Started</th><th>View</th><th>Source</th><th>Outcome</th>'
        "<th>Duration</th><th>Requests cleared</th><th>Error</th></tr></thead><tbody>"
        + _refresh_rows(r.recent_refreshes, now, cleared=True) + "</tbody></table>"
        + "<h2>Reconciliation history</h2>"
        '<table id="reconciliation"><thead><tr><th>Started</th><th>Took</th><th>Status</th><th>Mode</th>'
        "<th>Rows checked</th><th>Found</th><th>Fixed</th><th>Unfixed</th><th>Per part found/fixed</th>"
        "<th>Error</th></tr></thead><tbody>"
        + _reconciliation_rows(r.reconciliation_history, now) + "</tbody></table>"
        + "</main>"
    )


def render_page(readings: Readings | None, *, refresh_seconds: int, error: str | None = None,
                now: datetime | None = None) -> str:
    """The whole page. ``readings`` None: Postgres could not be read (``error`` says why)."""
    now = now or datetime.now(UTC)
    main = render_main(readings) if readings is not None else \
        '<main><p class="none">No data: the database could not be read.</p></main>'
    db_banner = f'<div class="banner" id="db-banner">Database unreachable: {escape(error)}</div>' if error else \
        '<div class="banner" id="db-banner" hidden></div>'
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'  # no favicon request (it would 404)
        f"<title>discovery-readmodels status</title><style>{CSS}</style>"
        f'<noscript><meta http-equiv="refresh" content="{refresh_seconds}"></noscript></head>'
        f'<body data-refresh="{refresh_seconds}">'
        '<header><h1>discovery-readmodels status</h1>'
        f'<span class="meta">generated <span id="generated">{escape(now.isoformat(timespec="seconds"))}</span>'
        f" · refreshes every {refresh_seconds} s</span></header>"
        f'{db_banner}<div class="banner" id="stale-banner" hidden></div>'
        f"{main}<script>{SCRIPT}</script></body></html>"
    )


class StatusResource:
    """``GET /status[?refresh=SECONDS]``."""

    def __init__(self, reader: Reader, settings: Settings) -> None:
        self._reader = reader
        self._settings = settings

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        refresh = req.get_param_as_int("refresh", min_value=2, max_value=300, default=10)
        try:
            readings: Readings | None = self._reader.read(history=HISTORY)
            error = None
        except ReadingsUnavailable as exc:
            readings, error = None, str(exc)
            resp.status = falcon.HTTP_503
        resp.text = render_page(readings, refresh_seconds=refresh, error=error)
        resp.content_type = falcon.MEDIA_HTML
        resp.set_header("Cache-Control", "no-store")
