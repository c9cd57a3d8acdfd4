"""Dispatch throughput: N events through one handler that emits one event.

choreo: a ``Service`` runs the full per-record pipeline (decode, route, barrier check,
handler, barrier commit with the outbox, publish the outbox, commit the offset).

baseline: the same transport driven by a bare loop written as a competent engineer
would: per poll, call the same handler function with the already-decoded event for
every record, hand every output to the producer, await the acknowledgements together,
commit the poll's offsets. No codec, no barrier, no outbox.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from choreo import Event, Middleware, Service, codec
from choreo.events import Envelope, Message
from choreo.transport.base import OutgoingRecord, Record, TopicPartition, Transport

SKUS = ("widget", "gadget", "gizmo")
CUSTOMERS = ("alice", "bob", "carol", "dave", "eve")
PARTITIONS = 4


@dataclass(frozen=True)
class Workload:
    """The events of one repetition, on topics of its own."""

    ping: type[Event]
    pong: type[Event]
    handler: Callable[[Event], Awaitable[Any]]
    events: dict[bytes, Event]  # by record key (the gid)
    records: list[OutgoingRecord]

    @property
    def count(self) -> int:
        return len(self.records)


def make_workload(count: int, tag: str | None = None) -> Workload:
    """``count`` order-like events on fresh topics (each repetition reads only its own),
    each with its own gid, as when every record starts or continues another saga."""
    tag = tag or uuid.uuid4().hex[:8]

    class Ping(Event, type="bench.Ping", topic=f"bench.{tag}.in"):
        order_id: str
        customer: str
        sku: str
        qty: int
        amount: int

    class Pong(Event, type="bench.Pong", topic=f"bench.{tag}.out"):
        order_id: str
        customer: str
        amount: int

    async def handler(event: Event) -> Any:
        ping = cast(Any, event)  # a Ping; its class is local, so mypy cannot name it
        return Pong(order_id=ping.order_id, customer=ping.customer, amount=ping.amount)

    events: dict[bytes, Event] = {}
    records = []
    for number in range(count):
        gid = f"{tag}-{number:07d}"
        event = Ping(
            order_id=gid,
            customer=CUSTOMERS[number % len(CUSTOMERS)],
            sku=SKUS[number % len(SKUS)],
            qty=1 + number % 3,
            amount=20 + number % 280,
        )
        envelope = Envelope(event_type=Ping.event_type, gid=gid, source="bench")
        record = codec.encode(Message(envelope, event, Ping.topic))
        events[gid.encode()] = event
        records.append(record)
    return Workload(Ping, Pong, handler, events, records)


async def prefill(transport: Transport, workload: Workload, chunk: int = 5_000) -> None:
    await transport.ensure_topics([workload.ping.topic, workload.pong.topic], PARTITIONS)
    for start in range(0, workload.count, chunk):
        await transport.send_many(workload.records[start : start + chunk])


class _Stopwatch(Middleware):
    """Times from taking the first batch to the offset commit that covers the last
    record: consumer-group joins and the first fetch stay out of the measurement."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.started: float | None = None
        self.finished: float | None = None
        self.committed: dict[TopicPartition, int] = {}
        self.done = asyncio.Event()

    async def after_batch(self, tp: TopicPartition, records: int, seconds: float) -> None:
        # Per batch, not per record: a per-record hook would add its own cost to what
        # is measured. The clock starts when the first batch was taken.
        if self.started is None:
            self.started = time.perf_counter() - seconds

    async def after_commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.committed.update(offsets)
        if sum(self.committed.values()) >= self.expected and not self.done.is_set():
            self.finished = time.perf_counter()
            self.done.set()

    @property
    def elapsed(self) -> float:
        if self.started is None or self.finished is None:
            raise RuntimeError("the stopwatch did not see the run start and finish")
        return self.finished - self.started


async def choreo_run(
    transport: Transport,
    store: Any,
    workload: Workload,
    timeout: float = 600.0,
    *,
    prefilled: bool = False,
    middleware: Sequence[Middleware] = (),
    tracer_provider: Any = None,
) -> float:
    """Events per second through a Service's full pipeline (``middleware`` and
    ``tracer_provider`` as a Service takes them: the observability benchmark's)."""
    if not prefilled:
        await prefill(transport, workload)
    stopwatch = _Stopwatch(workload.count)
    service = Service(
        "bench",
        group=f"bench.choreo.{workload.ping.topic}",
        partitions=PARTITIONS,
        middleware=[stopwatch, *middleware],
        tracer_provider=tracer_provider,
    )
    service.register_events(workload.pong)
    service.on_event(workload.ping, step="bench.echo")(workload.handler)
    async with service.running(broker=transport, store=store):
        await asyncio.wait_for(stopwatch.done.wait(), timeout)
    await _check_output(transport, workload)
    return workload.count / stopwatch.elapsed


async def _check_output(transport: Transport, workload: Workload) -> None:
    """Every input produced its one output (measured after the clock stopped)."""
    tps = await transport.topic_partitions([workload.pong.topic])
    written = sum((await transport.end_offsets(tps)).values())
    if written != workload.count:
        raise RuntimeError(f"{written} outputs for {workload.count} inputs")


async def bare_run(transport: Transport, workload: Workload, timeout: float = 600.0) -> float:
    """Events per second through the bare consume -> handler -> send -> commit loop."""
    await prefill(transport, workload)
    out_topic = workload.pong.topic
    handler, events = workload.handler, workload.events
    consumer = transport.consumer(f"bench.bare.{workload.ping.topic}", [workload.ping.topic])
    await consumer.start()

    async def poll(batch: Mapping[TopicPartition, Sequence[Record]]) -> None:
        # As a competent engineer writes it: call the handler for every record of the
        # poll, hand all outputs to the producer, await the acknowledgements together.
        outputs = []
        for records in batch.values():
            for record in records:
                assert record.key is not None
                await handler(events[record.key])
                outputs.append(OutgoingRecord(out_topic, record.key, record.value, record.headers))
        await transport.send_many(outputs)

    committed: dict[TopicPartition, int] = {}
    started: float | None = None
    deadline = time.monotonic() + timeout
    try:
        while sum(committed.values()) < workload.count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"bare loop not done after {timeout}s")
            batch = await consumer.getmany(timeout=0.1)
            if not batch:
                continue
            if started is None:
                started = time.perf_counter()
            await poll(batch)
            offsets = {tp: records[-1].offset + 1 for tp, records in batch.items()}
            await consumer.commit(offsets)
            committed.update(offsets)
        assert started is not None
        elapsed = time.perf_counter() - started
    finally:
        await consumer.stop()
    await _check_output(transport, workload)
    return workload.count / elapsed
