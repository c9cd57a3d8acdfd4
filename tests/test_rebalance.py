"""Two instances of one service share a group on real Kafka: a member joins and another
leaves while events are in flight, and every event's effect is applied exactly once and
every output published (invariant 5: nothing lost across rebalances)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable

import pytest

from choreo import Context, Event, Service
from choreo.store.redis import RedisStore
from choreo.transport.kafka import KafkaTransport


class Tick(Event, topic="test.rebalance"):
    n: int


class Tocked(Event, topic="test.rebalance"):
    n: int


class Ticker:
    """One member: a service instance and the ticks its handler ran."""

    def __init__(self, group: str, counter: str) -> None:
        self.ran: list[int] = []
        self.app = Service("ticker", group=group, batch_size=8)
        self.app.register_events(Tocked)

        @self.app.on_event(Tick, step="tock")
        async def tock(event: Tick, ctx: Context) -> Tocked:
            # Slow enough that the work outlasts a join: 400 ticks over 4 partitions take
            # the first member alone about 5 s, while a rebalance takes 1-3 s here.
            await asyncio.sleep(0.05)
            self.ran.append(event.n)
            ctx.tx.incr(counter, 1)
            return Tocked(n=event.n)


@pytest.mark.kafka
@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_members_join_and_leave_mid_stream(kafka_bootstrap: str, redis_url: str) -> None:
    broker = f"kafka://{kafka_bootstrap}"
    group = f"rebalance-{uuid.uuid4().hex[:8]}"
    counter = f"ticks:{group}"
    total = 400
    async with KafkaTransport(broker) as transport, RedisStore(redis_url) as store:
        first, second = Ticker(group, counter), Ticker(group, counter)
        sender = Service("sender")
        async with sender.running(broker=transport, store=store):
            gids = [(await sender.publish(Tick(n=i))).gid for i in range(total)]
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(first.app.running(broker=broker, store=store))
            await wait_until(lambda: at_least(store, counter, 10), 60)
            # A second member joins: partitions move while the first is mid-batch.
            await stack.enter_async_context(second.app.running(broker=broker, store=store))
            await wait_until(lambda: ran_some(second), 60)
            # Both members did part of the work: the partitions really moved.
            assert first.ran
            assert await store.get_int(counter) < total
        # Both left (the second mid-stream); a fresh member finishes what remains.
        third = Ticker(group, counter)
        async with third.app.running(broker=broker, store=store):

            async def committed_all() -> bool:
                tps = await transport.topic_partitions([Tick.topic])
                ends = await transport.end_offsets(tps)
                done = await transport.group_offsets(group)
                outputs = await outputs_of(transport, set(gids))
                # Outputs share the topic, so "idle" is: committed up to the very end.
                return len(outputs) == total and all(
                    done.get(tp, 0) >= end for tp, end in ends.items()
                )

            await wait_until(committed_all, 60)
        assert await store.get_int(counter) == total  # each effect exactly once
        outputs = await outputs_of(transport, set(gids))
        assert set(outputs) == set(gids)  # every output published
        assert all(len(ids) == 1 for ids in outputs.values())  # re-sends keep their ids


async def ran_some(member: Ticker) -> bool:
    return bool(member.ran)


async def at_least(store: RedisStore, key: str, count: int) -> bool:
    return await store.get_int(key) >= count


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not reached in time")


async def outputs_of(transport: KafkaTransport, gids: set[str]) -> dict[str, set[str]]:
    """Event ids of the Tocked events of ``gids``, read from the topic's beginning."""
    from choreo import codec

    reader = transport.consumer(f"probe-{uuid.uuid4().hex[:8]}", [Tocked.topic])
    await reader.start()
    found: dict[str, set[str]] = {}
    try:
        tps = await transport.topic_partitions([Tocked.topic])
        ends = await transport.end_offsets(tps)
        seen: dict[object, int] = {}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(seen.get(tp, 0) < e for tp, e in ends.items()):
            for tp, records in (await reader.getmany(timeout=0.3)).items():
                for record in records:
                    seen[tp] = record.offset + 1
                    if record.header("choreo-type") != b"Tocked":
                        continue
                    envelope = codec.decode_envelope(record)
                    if envelope.gid in gids:
                        found.setdefault(envelope.gid, set()).add(envelope.event_id)
    finally:
        await reader.stop()
    return found
