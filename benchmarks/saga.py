"""End-to-end saga throughput: the demo's order saga, every service and a tracker in one
process on the memory transport, against an echo chain moving as many records per saga.

choreo: N orders are queued on the saga's topic, then orders, inventory, payment,
shipping and a ``MemoryTracker`` start (as in ``choreo demo``) and run until the orders
service has recorded every saga as completed. Every order succeeds (no failure knobs,
stock and money for all). The tracker's clock is held still: the demo's steps have
2-second deadlines, meant for an interactive demo, which thousands of queued sagas
would overrun; the folds are the same work either way.

baseline: N records queued, then a chain of bare consume -> send -> commit stages as
long as the saga (one stage per record a saga writes, the last one only consumes), all
on one memory transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from choreo import Middleware, codec
from choreo.events import Envelope, Message
from choreo.saga.state import SagaState
from choreo.store.base import Decision
from choreo.store.memory import MemoryStore
from choreo.tracker.memory import MemoryTracker
from choreo.transport.base import OutgoingRecord, Record, TopicPartition
from choreo.transport.memory import MemoryBroker, MemoryTransport
from services_demo import inventory, orders, payment, shipping
from services_demo.audit import audit
from services_demo.contract import order_saga
from services_demo.knobs import Knobs
from services_demo.workload import Workload, build_workload

PARTITIONS = 4
SERVICES = (orders, inventory, payment, shipping)


class _Recorded(Middleware):
    """Counts sagas whose end the orders service has recorded through its barrier."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.gids: set[str] = set()
        self.done = asyncio.Event()

    async def after_handle(self, message: Any, handler: Any, decision: Decision) -> None:
        if decision is Decision.APPLIED:
            self.gids.add(message.gid)
            if len(self.gids) >= self.expected:
                self.done.set()


@dataclass(frozen=True)
class SagaRun:
    sagas_per_second: float
    records_per_saga: float
    reads_per_saga: float
    states: dict[str, SagaState]
    tracker_input: list[Record]  # what the tracker read, each saga's records in order


def plentiful_workload(count: int, seed: int = 0) -> Workload:
    """The demo's orders, with stock and money enough for every one to complete."""
    demo = build_workload(count, seed)
    return Workload(
        demo.orders,
        dict.fromkeys(demo.stock, 10**9),
        dict.fromkeys(demo.balances, 10**12),
    )


def start_records(workload: Workload) -> list[OutgoingRecord]:
    """The OrderPlaced records ``orders.place_order`` would publish."""
    out = []
    for order in workload.orders:
        envelope = Envelope(
            event_type=order.event_type,
            gid=order.order_id,
            saga=order_saga.name,
            schema_version=order.schema_version,
            source="orders",
        )
        out.append(codec.encode(Message(envelope, order, order.topic)))
    return out


async def saga_run(count: int, timeout: float = 600.0) -> SagaRun:
    workload = plentiful_workload(count)
    transport = MemoryTransport(MemoryBroker(PARTITIONS))
    store = MemoryStore()
    knobs = Knobs()
    apps = [module.build_app(knobs) for module in SERVICES]
    recorded = _Recorded(count)
    apps[0].middleware.append(recorded)  # the orders service
    frozen = time.time()
    tracker = MemoryTracker([order_saga], clock=lambda: frozen, partitions=PARTITIONS)
    topics = sorted({t for p in (*apps, tracker) for t in p.known_topics()})
    await transport.ensure_topics(topics, PARTITIONS)
    await inventory.seed_stock(store, workload.stock)
    await payment.seed_balances(store, workload.balances)
    await transport.send_many(start_records(workload))

    started = time.perf_counter()
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(tracker.running(broker=transport))
        for app in apps:
            await stack.enter_async_context(app.running(broker=transport, store=store))
        await asyncio.wait_for(recorded.done.wait(), timeout)
        elapsed = time.perf_counter() - started
    states = tracker.states()
    result = await audit(workload, states, store)
    if not result.ok or set(result.by_status()) != {"COMPLETED"}:
        raise RuntimeError(f"the saga benchmark's run is wrong: {result.problems[:5]}")
    return SagaRun(
        sagas_per_second=count / elapsed,
        records_per_saga=_records(transport, topics) / count,
        reads_per_saga=_reads(transport, (*apps, tracker)) / count,
        states=states,
        tracker_input=[
            record
            for topic in tracker.subscribed_topics()  # the saga's topic, then the system's
            for record in transport.broker.records(topic)
        ],
    )


def _records(transport: MemoryTransport, topics: Sequence[str]) -> int:
    return sum(len(transport.broker.records(topic)) for topic in topics)


def _reads(transport: MemoryTransport, participants: Sequence[Any]) -> int:
    """Records read, over every consumer group (each group reads its whole topics)."""
    broker = transport.broker
    return sum(len(broker.records(topic)) for p in participants for topic in p.subscribed_topics())


async def echo_chain(count: int, length: int, timeout: float = 600.0) -> float:
    """``count`` chains of ``length`` records, in chains per second."""
    transport = MemoryTransport(MemoryBroker(PARTITIONS))
    topics = [f"echo.{index}" for index in range(length)]
    await transport.ensure_topics(topics, PARTITIONS)
    template = start_records(plentiful_workload(count))
    await transport.send_many(
        [OutgoingRecord(topics[0], r.key, r.value, r.headers) for r in template]
    )
    stopping = asyncio.Event()
    last = asyncio.Event()

    async def stage(index: int) -> None:
        source = topics[index]
        target = topics[index + 1] if index + 1 < length else None
        consumer = transport.consumer(f"echo.stage.{index}", [source])
        await consumer.start()

        async def partition(records: Sequence[Record]) -> None:
            for record in records:
                if target is not None:
                    await transport.send(
                        OutgoingRecord(target, record.key, record.value, record.headers)
                    )

        committed: dict[TopicPartition, int] = {}
        try:
            while not stopping.is_set():
                batch = await consumer.getmany(timeout=0.1)
                if not batch:
                    continue
                await asyncio.gather(*(partition(records) for records in batch.values()))
                offsets = {tp: records[-1].offset + 1 for tp, records in batch.items()}
                await consumer.commit(offsets)
                committed.update(offsets)
                if target is None and sum(committed.values()) >= count:
                    last.set()
        finally:
            await consumer.stop()

    started = time.perf_counter()
    tasks = [asyncio.create_task(stage(index)) for index in range(length)]
    try:
        await asyncio.wait_for(last.wait(), timeout)
        elapsed = time.perf_counter() - started
    finally:
        stopping.set()
        await asyncio.gather(*tasks)
    return count / elapsed
