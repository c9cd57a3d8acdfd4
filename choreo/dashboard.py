"""What ``choreo dashboard`` shows of a tracker, as data and as a rich renderable.

A ``Snapshot`` holds one refresh: counts by state, sagas finished per second between
refreshes, per-step latency percentiles, the stalled sagas (RUNNING past a step's
deadline, or COMPENSATING) and the STUCK ones, each with its age and the step it waits
on. ``fetch`` builds one from a tracker's state API, ``snapshot_of`` from a
``MemoryTracker`` running in this process; ``render`` is pure, so a program can print the
same view the dashboard refreshes.

Every string from the API reaches rich as a ``Text`` (never parsed as markup) after
``choreo.cli.fmt.clean`` (no control characters): an actor named ``[/oops]`` or a reason
holding an ANSI escape is shown as written, and cannot break or drive the terminal.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from choreo.cli.fmt import clean, duration
from choreo.client import TrackerClient
from choreo.redact import redact_url
from choreo.saga.state import SagaStatus

if TYPE_CHECKING:
    from choreo.tracker.memory import MemoryTracker

__all__ = ["Snapshot", "fetch", "plain_text", "render", "snapshot_of"]

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
    # Tracker workers that did not answer this refresh ({"worker", "error"}): their
    # sagas are missing from the counts and rows.
    unanswered: list[dict[str, Any]] = field(default_factory=list)


def fetch(client: TrackerClient, previous: Snapshot | None = None) -> Snapshot:
    """One refresh from a tracker's state API; after ``previous``, with the sagas
    finished per second since it."""
    now = time.time()
    counts = client.get("/counts")
    throughput = None
    if previous is not None and previous.counts and now > previous.at:
        done = _finished(counts) - _finished(previous.counts)
        throughput = max(0, done) / (now - previous.at)
    latencies = client.get("/latencies")
    rows = client.get("/stalled", limit=MAX_ROWS)
    missing: dict[Any, dict[str, Any]] = {}  # a worker missing from any answer, once
    for answer in (counts, latencies, rows):
        missing.update((u.get("worker"), u) for u in answer.get("unanswered", []))
    return Snapshot(
        now,
        redact_url(client.url),
        counts,
        latencies["steps"],
        rows["stalled"],
        rows["stuck"],
        throughput,
        rows.get("stalled_total", 0),
        rows.get("stuck_total", 0),
        unanswered=list(missing.values()),
    )


def plain_text(value: object, style: str = "") -> Text:
    """A string from the API or from records as rich ``Text``: never parsed as markup,
    control characters shown as escapes (``\\x1b``)."""
    return Text(clean("" if value is None else value), style=style)


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
            plain_text(row.get("saga", "")),
            plain_text(row.get("step", "")),
            plain_text(row.get("count", 0)),
            *(plain_text(_seconds(q)) for q in qs),
        )
    return table


def _seconds(q: object) -> str:
    return f"{q:.3f}" if isinstance(q, int | float) and not math.isnan(q) else "-"


def _waits(row: dict[str, Any]) -> str:
    waits = []
    for w in row.get("waiting", []):
        tries = f" (attempt {w.get('attempts')})" if w.get("op") == "compensate" else ""
        waits.append(("undo " if w.get("op") == "compensate" else "") + str(w.get("step")) + tries)
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
            plain_text(row.get("gid", "")),
            plain_text(row.get("saga", "")),
            plain_text(status, style),
            plain_text(age),
            plain_text(_waits(row)),
            plain_text(note),
        )
    if total > min(len(rows), MAX_ROWS):
        table.caption = f"... and {total - min(len(rows), MAX_ROWS)} more (`choreo sagas list`)"
    return table


def render(snap: Snapshot) -> RenderableType:
    stuck = sorted(snap.stuck, key=lambda s: (bool(s.get("resolved")), -s.get("updated_at", 0)))
    stalled = sorted(snap.stalled, key=lambda s: s.get("started_at", 0))
    at = time.strftime("%H:%M:%S", time.localtime(snap.at))
    title = f"choreo dashboard  {escape(clean(snap.tracker))}  {at}"  # a title is markup
    parts: list[RenderableType] = [Panel(_counts(snap), title=title, title_align="left")]
    if snap.error:
        parts.append(Text(f"refresh failed: {clean(snap.error)}", style="bold red"))
    for gone in snap.unanswered:
        note = f"tracker worker {gone.get('worker')} did not answer ({gone.get('error')}): "
        parts.append(Text(clean(note + "its sagas are missing below"), style="bold red"))
    parts += [
        _latencies(snap),
        _sagas(snap, "stalled", stalled, max(snap.stalled_total, len(stalled))),
        _sagas(snap, "STUCK", stuck, max(snap.stuck_total, len(stuck))),
    ]
    return Group(*parts)


def snapshot_of(tracker: MemoryTracker, name: str = "embedded tracker") -> Snapshot:
    """What ``choreo dashboard`` would show of a tracker in this process, without serving
    its API; every unfinished saga counts as stalled (at the end of a run, each is worth
    a look)."""
    from choreo.tracker.api_ops import stalled_row  # the rows /stalled serves

    view, now = tracker.view(), time.time()
    states = tracker.states().values()
    unfinished = [s for s in states if not s.is_terminal]
    stuck = [stalled_row(s, now) for s in states if s.status == SagaStatus.STUCK]
    return Snapshot(
        at=now,
        tracker=name,
        counts=view.counts(),
        latencies=view.step_latencies(),
        stalled=[stalled_row(s, now) for s in unfinished],
        stuck=stuck,
    )
