"""A record the Kafka client cannot unpack (a header key that is not UTF-8) stops only
its own partition: aiokafka raises on every poll without moving past it, which used to
end the worker and, restarted, end it again. Now the other partitions flow, the worker
stays up, and /readyz and the log name the blocked partition and how to skip it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from choreo import Context, Event, Service
from tests.procs.svcapi_app import Answer, Ask

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

ROOT = Path(__file__).resolve().parent.parent


async def test_an_unreadable_record_stops_only_its_partition(
    kafka_bootstrap: str, redis_url: str
) -> None:
    topic = f"unreadable.{uuid.uuid4().hex[:8]}"
    seen: Counter[str] = Counter()

    class In(Event, type=Ask.event_type, topic=topic):  # Ask, on this test's own topic
        n: int

    app = Service(f"unreadable{uuid.uuid4().hex[:6]}", partitions=2)
    app.register_events(Answer)

    @app.on_event(In, step="answer")
    async def answer(event: In, ctx: Context) -> None:
        seen[ctx.gid] += 1

    from choreo.transport.kafka import KafkaTransport

    async with KafkaTransport(f"kafka://{kafka_bootstrap}", partitions=2) as transport:
        await transport.ensure_topics([topic], 2)
    # Written before the service starts, so its first fetch brings both partitions at
    # once: the poll that fails on partition 0 may already have drained partition 1.
    done = subprocess.run(
        [sys.executable, "-m", "tests.procs.unreadable_producer", kafka_bootstrap, topic],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    async with app.running(broker=f"kafka://{kafka_bootstrap}", store=redis_url):
        readable = {"g0-0", "g0-1", "g1-0", "g1-1", "g1-2", "g1-3"}
        deadline = time.monotonic() + 60
        while set(seen) < readable and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        problems = await app.readiness()
        await asyncio.sleep(1.0)  # time for anything behind the bad record to (wrongly) run
        assert app.alive(), "the worker ended"
        assert set(seen) == readable, seen  # g0-2 unreadable; g0-3 waits behind it
        assert all(count == 1 for count in seen.values()), seen
        assert set(problems) == {"partitions"}, problems
        assert problems["partitions"].startswith(f"{topic}[0]: ")
        assert "batch at offset 2 cannot be read" in problems["partitions"]  # the bad one
        assert "--reset-offsets" in problems["partitions"]
