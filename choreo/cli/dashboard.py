"""``choreo dashboard``: a live terminal view of the tracker, refreshed in place.

Counts by state, sagas finished per second between refreshes, per-step latency
percentiles, the stalled sagas (RUNNING past a step's deadline, or COMPENSATING) and the
STUCK ones, each with its age and the step it waits on. ``render`` is pure, so the demo
prints the same view from a snapshot it builds itself.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from choreo.cli.client import TrackerClient, add_client_arguments, client_from
from choreo.cli.fmt import duration
from choreo.errors import ChoreoError, UsageError

STATUS_STYLE = {
    "RUNNING": "cyan",
    "COMPLETED": "green",
    "COMPENSATING": "yellow",
    "COMPENSATED": "blue",
    "STUCK": "bold red",
}
FINISHED = ("COMPLETED", "COMPENSATED", "STUCK")
MAX_ROWS = 15


@dataclass(frozen=True)
class Snapshot:
    """Everything one refresh shows, as the API's JSON: ``counts`` from /counts,
    ``latencies`` the steps of /latencies, ``stalled`` and ``stuck`` the rows of /stalled."""

    at: float
    tracker: str = ""
    counts: dict[str, Any] = field(default_factory=dict)
    latencies: list[dict[str, Any]] = field(default_factory=list)
    stalled: list[dict[str, Any]] = field(default_factory=list)
    stuck: list[dict[str, Any]] = field(default_factory=list)
    throughput: float | None = None
    stalled_total: int = 0
    stuck_total: int = 0
    error: str = ""


def fetch(client: TrackerClient, previous: Snapshot | None = None) -> Snapshot:
    now = time.time()
    counts = client.get("/counts")
    throughput = None
    if previous is not None and previous.counts and now > previous.at:
        done = _finished(counts) - _finished(previous.counts)
        throughput = max(0, done) / (now - previous.at)
    latencies = client.get("/latencies")["steps"]
    rows = client.get("/stalled", limit=MAX_ROWS)
    return Snapshot(
        now,
        client.url,
        counts,
        latencies,
        rows["stalled"],
        rows["stuck"],
        throughput,
        rows.get("stalled_total", 0),
        rows.get("stuck_total", 0),
    )


def _finished(counts: dict[str, Any]) -> int:
    return sum(int(counts.get("by_status", {}).get(s, 0)) for s in FINISHED)


def _counts(snap: Snapshot) -> Table:
    grid = Table.grid(padding=(0, 2))
    by_status = snap.counts.get("by_status", {})
    grid.add_row(
        *(Text(s, style=STATUS_STYLE[s]) for s in STATUS_STYLE), Text("total"), Text("finished/s")
    )
    rate = "-" if snap.throughput is None else f"{snap.throughput:.2f}"
    grid.add_row(
        *(Text(str(by_status.get(s, 0)), style="bold") for s in STATUS_STYLE),
        Text(str(snap.counts.get("total", 0)), style="bold"),
        Text(rate, style="bold"),
    )
    return grid


def _latencies(snap: Snapshot) -> Table:
    table = Table(title="step latency (s)", title_justify="left", expand=False)
    for name in ("saga", "step", "count", "p50", "p90", "p99"):
        table.add_column(name, justify="left" if name in ("saga", "step") else "right")
    for row in snap.latencies:
        qs = [row.get(q) for q in ("p50", "p90", "p99")]
        table.add_row(
            row.get("saga", ""),
            row.get("step", ""),
            str(row.get("count", 0)),
            *("-" if q is None or math.isnan(q) else f"{q:.3f}" for q in qs),
        )
    return table


def _waits(row: dict[str, Any]) -> str:
    waits = []
    for w in row.get("waiting", []):
        tries = f" (attempt {w['attempts']})" if w["op"] == "compensate" else ""
        waits.append(("undo " if w["op"] == "compensate" else "") + w["step"] + tries)
    return ", ".join(waits) or "-"


def _sagas(snap: Snapshot, title: str, rows: list[dict[str, Any]], total: int) -> Table:
    table = Table(title=f"{title} ({total})", title_justify="left")
    for name in ("gid", "saga", "status", "age", "waiting on", "overdue / reason"):
        if name in ("waiting on", "overdue / reason"):
            table.add_column(name, ratio=1, overflow="ellipsis")
        else:
            table.add_column(name, no_wrap=True, min_width=36 if name == "gid" else None)
    for row in rows[:MAX_ROWS]:
        status = row.get("status", "")
        overdue = row.get("overdue_s")
        note = f"+{duration(overdue)}" if overdue is not None else row.get("reason", "")
        if row.get("resolved"):
            note = f"resolved by {row.get('resolved_by') or '?'}"
        age = duration(snap.at - row.get("started_at", snap.at))
        style = STATUS_STYLE.get(status, "")
        table.add_row(
            row.get("gid", ""),
            row.get("saga", ""),
            Text(status, style=style),
            age,
            _waits(row),
            note,
        )
    if total > min(len(rows), MAX_ROWS):
        table.caption = f"... and {total - min(len(rows), MAX_ROWS)} more (`choreo sagas list`)"
    return table


def render(snap: Snapshot) -> RenderableType:
    stuck = sorted(snap.stuck, key=lambda s: (bool(s.get("resolved")), -s.get("updated_at", 0)))
    stalled = sorted(snap.stalled, key=lambda s: s.get("started_at", 0))
    title = (
        f"choreo dashboard  {snap.tracker}  {time.strftime('%H:%M:%S', time.localtime(snap.at))}"
    )
    parts: list[RenderableType] = [Panel(_counts(snap), title=title, title_align="left")]
    if snap.error:
        parts.append(Text(f"refresh failed: {snap.error}", style="bold red"))
    parts += [
        _latencies(snap),
        _sagas(snap, "stalled", stalled, max(snap.stalled_total, len(stalled))),
        _sagas(snap, "STUCK", stuck, max(snap.stuck_total, len(stuck))),
    ]
    return Group(*parts)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("dashboard", help="a live view of every saga in the tracker")
    add_client_arguments(parser, json_flag=False)
    parser.add_argument(
        "--interval",
        type=float,
        default=2.0,
        metavar="S",
        help="seconds between refreshes (default 2)",
    )
    parser.add_argument("--once", action="store_true", help="print one snapshot and exit")
    parser.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    if not args.interval > 0:
        raise UsageError(f"--interval must be > 0, got {args.interval}")
    client = client_from(args)
    snap = fetch(client)  # the first refresh fails loudly: wrong URL, token...
    console = Console()
    if not console.is_terminal:  # piped: no terminal to fit, keep gids and reasons whole
        console = Console(width=max(console.width, 160))
    if args.once:
        console.print(render(snap))
        return 0
    with Live(render(snap), console=console, refresh_per_second=4, screen=False) as live:
        while True:
            time.sleep(args.interval)
            try:
                snap = fetch(client, snap)
            except ChoreoError as exc:  # keep showing the last view; the tracker may return
                snap = replace(snap, error=getattr(exc, "message", str(exc)))
            live.update(render(snap))
