"""Memory per saga in flight in the memory tracker, and its fold rate, in one process.

    python benchmarks/tracker_state.py                    # 100,000 sagas in flight
    python benchmarks/tracker_state.py --sagas 20000 --against /tmp/old-checkout

Each saga is its start event only: its first step is dispatched and pending (a deadline
an hour away), its trigger's payload kept for the step's compensation, as a saga waiting
on a participant is. The start records are made by choreo's codec in chunks of 1,000 and
folded by ``MemoryTracker``'s pipeline (``TrackerPipeline.handle_batch``, what the memory
tracker's consume loop calls per poll); they are garbage once folded, so what stays is the
tracker's state. Reported: RSS after minus RSS before (``/proc/self/status``, after a
full collection each time) per saga, and the events folded per second (the fold alone,
making the records left out).

``--against DIR`` runs the same measurement with the ``choreo`` package of another
checkout (a child process with ``DIR`` first on ``sys.path``), to compare a change with
what it replaces in one run. The faust tracker's figures (real Kafka, RocksDB and memory
stores, restart, bare faust beside it) are ``benchmarks/tracker_fold.py --in-flight``.
This file imports nothing from ``benchmarks`` so that it runs against any checkout.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CHUNK = 1000


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


async def measure(sagas: int) -> dict[str, Any]:
    from choreo import Event, SagaContract, Step, codec
    from choreo.events import Envelope, Message
    from choreo.tracker.memory import MemoryTracker
    from choreo.transport.base import Record

    class Start(Event, type="state.Start", topic="state.start"):
        order_id: str
        amount: int

    class S1Done(Event, type="state.S1Done", topic="state.s1"):
        order_id: str
        amount: int

    class S2Done(Event, type="state.S2Done", topic="state.s2"):
        order_id: str
        amount: int

    contract = SagaContract(
        "state",
        start=Start,
        steps=[
            Step("step1", on=Start, done=S1Done, deadline=3600.0, service="svc1"),
            Step("step2", on=S1Done, done=S2Done, deadline=3600.0, service="svc2"),
        ],
    )
    tracker = MemoryTracker([contract], broker="memory://")
    pipeline = tracker.pipeline

    def chunk(low: int, high: int) -> list[tuple[Record, float]]:
        items = []
        for n in range(low, high):
            gid = f"g{n:08d}"
            event = Start(order_id=gid, amount=n)
            env = Envelope.first(event, gid=gid, saga="state", source="bench")
            out = codec.encode(Message(env, event, Start.topic))
            record = Record(out.topic, 0, n, out.key, out.value, out.headers, 1_000_000)
            items.append((record, 1000.0 + n / 1000))
        return items

    await pipeline.handle_batch(chunk(0, 10))  # imports and first-use caches out of the way
    gc.collect()
    before = rss_bytes()
    folding = 0.0
    for low in range(10, sagas + 10, CHUNK):
        items = chunk(low, min(low + CHUNK, sagas + 10))
        began = time.perf_counter()
        await pipeline.handle_batch(items)
        folding += time.perf_counter() - began
    gc.collect()
    after = rss_bytes()
    held = len(tracker.states()) if sagas <= 1000 else len(pipeline.states)
    assert held == sagas + 10, f"{held} sagas held, expected {sagas + 10}"
    state = tracker.get("g00000042")
    assert state is not None
    assert state.status.value == "RUNNING"
    return {
        "sagas": sagas,
        "rss_delta_bytes_per_saga": (after - before) / sagas,
        "rss_before_mb": before / 2**20,
        "rss_after_mb": after / 2**20,
        "events_per_s": sagas / folding,
        "timeline_entries": len(state.timeline),
    }


def child(args: argparse.Namespace) -> int:
    print(json.dumps(asyncio.run(measure(args.sagas))), flush=True)
    return 0


def run(root: Path | None, sagas: int) -> dict[str, Any]:
    """Measure in a fresh process (``root``: whose ``choreo`` to import)."""
    env = dict(os.environ)
    if root is not None:
        env["PYTHONPATH"] = str(root)
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", "--sagas", str(sagas)],
        cwd=root or Path(__file__).resolve().parents[1],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/tracker_state.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sagas", type=int, default=100_000)
    parser.add_argument("--against", type=Path, help="a checkout to compare with (its choreo)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    systems: dict[str, Path | None] = {"this checkout": None}
    if args.against is not None:
        systems = {f"before ({args.against})": args.against.resolve(), **systems}
    results = {}
    for name, root in systems.items():
        r = results[name] = run(root, args.sagas)
        print(f"{name}: {r['sagas']} sagas in flight, RSS {r['rss_before_mb']:.0f} -> "
              f"{r['rss_after_mb']:.0f} MB: {r['rss_delta_bytes_per_saga']:.0f} bytes per saga; "
              f"folded {r['events_per_s']:.0f} events/s", flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
