"""Where the dispatch pipeline spends its time: cProfile over the memory-transport
dispatch benchmark, each function's cumulative time as a share of ``Dispatcher.handle``.

    python -m benchmarks.profile_dispatch [EVENTS]

cProfile slows everything down and small functions most, so read the shares as a
ranking, not as exact costs; it also counts every resumption of a coroutine as a call.
Throughput numbers come from ``benchmarks.run`` only.
"""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import sys

from benchmarks import dispatch
from choreo.store.memory import MemoryStore
from choreo.transport.memory import MemoryBroker, MemoryTransport

# (module path suffix, function name): what to report.
WATCHED = [
    ("choreo/dispatch.py", "handle_batch"),
    ("choreo/codec.py", "decode_envelope"),
    ("choreo/codec.py", "decode"),
    ("choreo/codec.py", "check_depth"),
    ("choreo/dispatch.py", "_invoke"),
    ("choreo/dispatch.py", "_recorded"),
    ("choreo/dispatch.py", "_outgoing"),
    ("choreo/events.py", "derived_event_id"),
    ("choreo/events.py", "child_traceparent"),
    ("choreo/codec.py", "encode"),
    ("choreo/codec.py", "pack_outbox"),
    ("choreo/codec.py", "unpack_outbox"),
    ("choreo/store/memory.py", "check_many"),
    ("choreo/store/memory.py", "commit_many"),
    ("choreo/transport/memory.py", "send_many"),
]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    events = int(args[0]) if args else 20_000
    workload = dispatch.make_workload(events)
    transport = MemoryTransport(MemoryBroker(dispatch.PARTITIONS))
    asyncio.run(dispatch.prefill(transport, workload))
    profiler = cProfile.Profile()
    profiler.enable()
    asyncio.run(dispatch.choreo_run(transport, MemoryStore(), workload, prefilled=True))
    profiler.disable()
    raw = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    found: dict[tuple[str, str], tuple[int, float, float]] = {}
    for (path, _, name), (_, calls, own, cumulative, _) in raw.items():
        for suffix, wanted in WATCHED:
            if name == wanted and path.endswith(suffix):
                found[(suffix, wanted)] = (calls, own, cumulative)
    total = found[("choreo/dispatch.py", "handle_batch")][2]
    print(f"cProfile of {events:,} events; shares of Dispatcher.handle_batch ({total:.2f}s):")
    print(f"{'function':<44} {'calls':>8} {'calls/event':>11} {'share':>7}")
    for suffix, name in WATCHED:
        if (suffix, name) not in found:
            continue
        calls, _, cumulative = found[(suffix, name)]
        label = f"{suffix.removeprefix('choreo/').removesuffix('.py')}.{name}"
        print(f"{label:<44} {calls:>8,} {calls / events:>11.1f} {cumulative / total:>7.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
