"""What a wake-up costs on this machine: the CPU a process is charged for a little work
done right after sleeping, against the same work done back to back.

    python -m benchmarks.wakeup_cost            # about 20 seconds

An event-driven service at moderate load sleeps between records: every fetch response,
store reply and acknowledgement wakes it, and the work after each wake-up runs on cold
caches (and, in a VM, after the vCPU was handed back by the host). At saturation the same
process rarely sleeps. This is why a step's CPU per record at half of saturation can be
twice its CPU per record at saturation (docs/benchmarks.md), for choreo and for a bare
aiokafka relay alike. Run it on a quiet machine: other processes' wake-ups are the noise.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from typing import Any


def _work(size: int) -> int:
    """A small, allocation-heavy piece of Python, like decoding a record."""
    table: dict[str, Any] = {}
    for i in range(size):
        table[str(i)] = [i, str(i) * 3, {"a": i}]
    return len(table)


def measure(size: int, sleep_s: float, repeats: int) -> dict[str, float]:
    started = time.process_time()
    for _ in range(repeats):
        _work(size)
    tight = (time.process_time() - started) / repeats
    started = time.process_time()
    for _ in range(repeats):
        time.sleep(sleep_s)
        _work(size)
    woken = (time.process_time() - started) / repeats
    return {
        "work_size": size,
        "sleep_ms": sleep_s * 1000,
        "tight_us": tight * 1e6,
        "after_sleep_us": woken * 1e6,
        "wakeup_us": (woken - tight) * 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    repeats = int(args[0]) if args else 300
    rows = [
        measure(size, sleep_s, repeats) for size in (10, 100, 1000) for sleep_s in (0.002, 0.02)
    ]
    print(f"{platform.node()}: {platform.processor() or platform.machine()}, {repeats} repeats")
    print(f"{'work':>6} {'sleep ms':>9} {'tight us':>9} {'after sleep us':>15} {'extra us':>9}")
    for row in rows:
        print(
            f"{row['work_size']:>6} {row['sleep_ms']:>9.0f} {row['tight_us']:>9.0f} "
            f"{row['after_sleep_us']:>15.0f} {row['wakeup_us']:>9.0f}"
        )
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
