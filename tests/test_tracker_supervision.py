"""A tracker loop that crashes ends the tracker instead of leaving a state API over a
dead loop (memory engine; the faust engine is supervised by faust's worker)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import pytest

from choreo.tracker.memory import MemoryTracker
from choreo.transport.base import Consumer, Record, RevokeCallback, TopicPartition
from choreo.transport.memory import MemoryConsumer, MemoryTransport
from tests.scenarios.trip import trip_contract


class Broken(RuntimeError):
    pass


class BrokenConsumer(MemoryConsumer):
    async def getmany(
        self, timeout: float = 0.2, max_records: int = 500
    ) -> Mapping[TopicPartition, Sequence[Record]]:
        raise Broken("a bug in the consume loop")


class BrokenTransport(MemoryTransport):
    def consumer(
        self, group: str, topics: Sequence[str], *, on_revoke: RevokeCallback | None = None
    ) -> Consumer:
        return BrokenConsumer(self.broker, group, topics, on_revoke=on_revoke)


async def test_a_crashed_consume_loop_ends_the_memory_tracker() -> None:
    tracker = MemoryTracker([trip_contract()], broker=BrokenTransport())

    async def run() -> None:
        async with tracker.running():
            await asyncio.wait_for(tracker.until_stopped(asyncio.Event()), 10)

    with pytest.raises(Broken, match="a bug in the consume loop"):
        await run()
