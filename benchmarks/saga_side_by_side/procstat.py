"""CPU time of processes and of the machine, read from /proc (Linux only, no psutil).

Imported by the driver (which snapshots at the edges of its measured windows) and by the
orchestrator; standard library only.
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable, Mapping, Sequence

_TICKS = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG = 1


def process_cpu(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` (all its threads), None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = raw.rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14, 15)


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of all cores since boot."""
    with open("/proc/stat", "rb") as f:
        parts = f.readline().split()[1:]
    values = [int(v) for v in parts[:8]]  # user nice system idle iowait irq softirq steal
    idle = values[3] + values[4]
    return (sum(values) - idle) / _TICKS, sum(values) / _TICKS


def descendants(root: int) -> list[int]:
    """``root`` and every process below it, now."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


Snapshot = dict[str, float | None]
#: Groups whose work runs in forked children (PostgreSQL serves each connection in a
#: backend process of its own, whose CPU the postmaster's counters never show).
WITH_CHILDREN = frozenset({"postgres"})


def snapshot(pids: Mapping[str, Sequence[int]]) -> Snapshot:
    """CPU seconds per named group of pids, plus the machine's busy and total seconds."""
    taken: Snapshot = {}
    for name, group in pids.items():
        if name in WITH_CHILDREN and group:
            taken[name] = sum(process_cpu(pid) or 0.0 for pid in descendants(group[0]))
            continue
        values = [process_cpu(pid) for pid in group]
        taken[name] = None if any(v is None for v in values) else sum(v or 0.0 for v in values)
    taken["@busy"], taken["@total"] = machine_cpu()
    return taken


def cpu_percent(before: Snapshot, after: Snapshot, seconds: float) -> dict[str, float | None]:
    """Per group: percent of one core over the window (200% = both cores of a 2-core box).
    ``machine``: percent of all cores busy."""
    out: dict[str, float | None] = {}
    for name, start in before.items():
        if name.startswith("@"):
            continue
        end = after.get(name)
        out[name] = None if start is None or end is None else 100.0 * (end - start) / seconds
    busy = (after["@busy"] or 0.0) - (before["@busy"] or 0.0)
    total = (after["@total"] or 0.0) - (before["@total"] or 0.0)
    out["machine"] = 100.0 * busy / total if total > 0 else None
    return out


def cpu_seconds(before: Snapshot, after: Snapshot) -> dict[str, float | None]:
    """Per group: CPU seconds spent between the two snapshots."""
    out: dict[str, float | None] = {}
    for name, start in before.items():
        end = after.get(name)
        if not name.startswith("@"):
            out[name] = None if start is None or end is None else end - start
    return out


def die_with_parent() -> Callable[[], None]:
    """A preexec_fn: the child gets SIGTERM when the process that started it dies, so an
    interrupted benchmark leaves nothing running."""
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return preexec
