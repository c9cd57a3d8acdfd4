"""Merging what several tracker workers answered into the one answer a client asked for.

Each function takes the JSON bodies the workers returned for the same route (each about
its own partitions) and returns the body a single tracker would have returned. Pure: the
HTTP side is ``choreo.tracker.routing``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

Body = dict[str, Any]


def _newest_first(item: Body) -> tuple[float, str]:
    # The order StatesView.list pages in: newest start first, then gid.
    return (-float(item.get("started_at") or 0.0), str(item.get("gid", "")))


def pages(bodies: Sequence[Body], offset: int, limit: int) -> Body:
    """``GET /sagas``: every worker was asked for its first ``offset + limit`` summaries,
    so the merged page is the same slice a single tracker would give."""
    items = sorted((i for b in bodies for i in b.get("items", [])), key=_newest_first)
    total = sum(int(b.get("total", 0)) for b in bodies)
    page = items[offset : offset + limit]
    following = offset + len(page)
    return {"items": page, "total": total, "next": following if following < total else None}


def counts(bodies: Sequence[Body]) -> Body:
    """``GET /counts``: every count summed."""
    by_status: Counter[str] = Counter()
    by_saga: dict[str, Counter[str]] = {}
    for body in bodies:
        by_status.update(body.get("by_status", {}))
        for saga, statuses in body.get("by_saga", {}).items():
            by_saga.setdefault(saga, Counter()).update(statuses)
    return {
        "total": sum(int(b.get("total", 0)) for b in bodies),
        # Every status each worker listed, even at 0, in the order the first one gave.
        "by_status": {s: by_status[s] for b in bodies for s in b.get("by_status", {})},
        "by_saga": {name: dict(c) for name, c in sorted(by_saga.items())},
        "stuck_unresolved": sum(int(b.get("stuck_unresolved", 0)) for b in bodies),
    }


def stalled(bodies: Sequence[Body], limit: int) -> Body:
    """``GET /stalled``: the rows of every worker, newest first, at most ``limit`` of each
    kind; the totals summed."""
    merged: Body = {}
    for kind in ("stalled", "stuck"):
        rows = sorted((r for b in bodies for r in b.get(kind, [])), key=_newest_first)
        merged[kind] = rows[:limit]
        merged[f"{kind}_total"] = sum(int(b.get(f"{kind}_total", 0)) for b in bodies)
    return merged


def latencies(bodies: Sequence[Body]) -> Body:
    """``GET /latencies``: counts summed per saga and step. Quantiles cannot be merged
    from quantiles, so each is the largest any worker saw: an upper bound, exact with
    one worker (a worker's own /latencies gives its exact figures)."""
    rows: dict[tuple[str, str], Body] = {}
    quantiles: list[Any] = []
    for body in bodies:
        quantiles = quantiles or list(body.get("quantiles", []))
        for row in body.get("steps", []):
            key = (str(row.get("saga")), str(row.get("step")))
            seen = rows.get(key)
            if seen is None:
                rows[key] = dict(row)
                continue
            seen["count"] = int(seen.get("count", 0)) + int(row.get("count", 0))
            for name, value in row.items():
                if name.startswith("p") and isinstance(value, int | float):
                    old = seen.get(name)
                    # NaN (no observation) never wins; json gives it as null or NaN.
                    if not isinstance(old, int | float) or old != old or value > old:
                        seen[name] = value
    return {"quantiles": quantiles, "steps": [rows[k] for k in sorted(rows)]}
