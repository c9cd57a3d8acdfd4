"""Formatting shared by the CLI's read commands: durations, times, what a saga waits on,
and plain aligned tables (greppable, and unchanged when piped).

Every string from the tracker's API (and so from records anyone may have written) goes
through ``clean`` before the terminal sees it: control characters (ANSI escapes, ``\r``,
backspace...) and bidirectional overrides are shown as escapes (``\x1b``), never sent.
``table`` cleans its cells; other lines are cleaned where they are built."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from choreo.errors import UsageError

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_UNSAFE_IN_TEXT = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _shown(match: re.Match[str]) -> str:
    code = ord(match[0])
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def clean(value: object, *, lines: bool = False) -> str:
    """``value`` as text that cannot drive the terminal: control characters shown as
    escapes. With ``lines`` newlines and tabs are kept (a payload, a multi-line note)."""
    return (_UNSAFE_IN_TEXT if lines else _UNSAFE).sub(_shown, str(value))


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(text: str) -> float:
    """``90s``, ``10m``, ``2h``, ``1d``, ``1h30m`` -> seconds."""
    cleaned = text.strip().lower()
    parts = _DURATION.findall(cleaned)
    if not parts or "".join(n + u for n, u in parts) != cleaned:
        raise UsageError(f"{text!r} is not a duration", hint="write it like 90s, 10m, 2h or 1d")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    negative, seconds = seconds < 0, abs(seconds)
    if seconds < 10:
        text = f"{seconds:.1f}s"
    elif seconds < 60:
        text = f"{seconds:.0f}s"
    elif seconds < 3600:
        text = f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    elif seconds < 86400:
        text = f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    else:
        text = f"{int(seconds // 86400)}d{int(seconds % 86400 // 3600):02d}h"
    return "-" + text if negative else text


def clock(at: float | None, *, date: bool = False) -> str:
    if at is None:
        return "-"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S", time.localtime(at))
    return f"{stamp}.{int(at * 1000) % 1000:03d}"


def waiting_on(state: Mapping[str, Any], now: float) -> tuple[str, float | None]:
    """What a saga waits on, and by how long its deadline is overdue. ``state`` is the
    API's JSON of a saga, or a list item, whose steps map only to their status."""
    status = state.get("status")
    waits: list[str] = []
    overdue: float | None = None
    for name, raw in (state.get("steps") or {}).items():
        step: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {"status": raw}
        if status == "RUNNING" and step.get("status") == "PENDING":
            waits.append(name)
            deadline = step.get("deadline_at")
            if deadline is not None and now > deadline:
                overdue = max(overdue or 0.0, now - deadline)
        elif status in ("COMPENSATING", "STUCK") and step.get("status") == "COMPENSATING":
            tries = step.get("compensation_attempts")
            waits.append(f"undo {name}" + (f" (attempt {tries})" if tries else ""))
    return ", ".join(waits), overdue


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], indent: str = "") -> str:
    cells = [[clean(c) for c in headers], *([clean(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(indent + line for line in lines)
