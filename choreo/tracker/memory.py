"""The tracker shell that keeps saga states in a dict, over any transport.

It is the embedded tracker (tests, ``--engine memory``): the same folds and the same
records as the faust tracker, but its states live only as long as the process. A
restart resumes from the group's committed offsets with no states, so use a new group
(or the faust tracker) where states must survive. Run one instance per group: a second
member would take half the partitions, and with them half of every saga's events.

A deadline never changes state from the timer: the timer sends a ``DeadlineCheck``
record, and the state changes when that record comes back through the log, like every
other change. This keeps the log the single source of truth (invariant 10).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence

from choreo import codec
from choreo.deadletter import DLQ_TOPIC, DeadLetter, dead_letter_record
from choreo.errors import PoisonEvent, UnknownEventType
from choreo.events import EventRegistry
from choreo.saga.contract import SagaContract
from choreo.saga.state import SagaState
from choreo.store.base import Store
from choreo.tracker.core import DeadlineIndex, TrackerCore
from choreo.tracker.view import StatesView, TrackerMetrics
from choreo.transport.base import Consumer, OutgoingRecord, Record, TopicPartition, Transport
from choreo.urls import open_transport
from choreo.worker import INFRASTRUCTURE_ERRORS

log = logging.getLogger("choreo.tracker")


class MemoryTracker:
    name = "tracker"

    def __init__(
        self,
        contracts: Sequence[SagaContract],
        *,
        broker: str | Transport = "memory://",
        group: str = "choreo.tracker",
        clock: Callable[[], float] = time.time,
        tick: float = 0.05,
        partitions: int = 4,
        dlq_topic: str = DLQ_TOPIC,
        limits: codec.Limits | None = None,
    ) -> None:
        self.core = TrackerCore(contracts)
        self.broker = broker
        self.group = group
        self.clock = clock
        self.tick = tick
        self.partitions = partitions
        self.dlq_topic = dlq_topic
        self.limits = limits or codec.Limits()
        self.deadlines = DeadlineIndex()
        self.metrics = TrackerMetrics()
        self.processed = 0
        self._states: dict[str, SagaState] = {}
        self.transport: Transport | None = None  # while running, for the ops routes

    # -- the harness's Participant protocol and the API's read side ------------------
    def subscribed_topics(self) -> list[str]:
        return self.core.topics()

    def known_topics(self) -> list[str]:
        return sorted({*self.core.topics(), self.dlq_topic})

    def registry(self) -> EventRegistry:
        return self.core.registry

    def states(self) -> dict[str, SagaState]:
        return dict(self._states)

    def get(self, gid: str) -> SagaState | None:
        return self._states.get(gid)

    def view(self) -> StatesView:
        return StatesView(self._states, self.metrics)

    # -- lifespan ----------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def running(
        self, *, broker: str | Transport | None = None, store: str | Store | None = None
    ) -> AsyncIterator[MemoryTracker]:
        """Consume and fire deadlines until the block exits. ``store`` is accepted for the
        harness and ignored: the tracker's state is its own."""
        broker = broker if broker is not None else self.broker
        owns = isinstance(broker, str)
        transport = (
            open_transport(broker, partitions=self.partitions)
            if isinstance(broker, str)
            else broker
        )
        stopping = asyncio.Event()
        async with contextlib.AsyncExitStack() as stack:
            if owns:
                await stack.enter_async_context(transport)
            await transport.ensure_topics(self.known_topics(), self.partitions)
            consumer = transport.consumer(self.group, self.subscribed_topics())
            await consumer.start()
            stack.push_async_callback(consumer.stop)
            tasks = [
                asyncio.create_task(self._consume(transport, consumer, stopping)),
                asyncio.create_task(self._timer(transport, stopping)),
            ]
            for task in tasks:
                task.add_done_callback(_report_crash)
            self.transport = transport
            try:
                yield self
            finally:
                stopping.set()
                await asyncio.gather(*tasks)
                self.transport = None

    async def _consume(
        self, transport: Transport, consumer: Consumer, stopping: asyncio.Event
    ) -> None:
        """Records are folded one at a time, in order: states are one dict, and a fold is
        cheap next to the sends it waits for."""
        while not stopping.is_set():
            batch = await consumer.getmany(timeout=0.1)
            offsets: dict[TopicPartition, int] = {}
            for tp, records in batch.items():
                for record in records:
                    await self._process(transport, record)
                    offsets[tp] = record.offset + 1
                    self.processed += 1
            if offsets:
                await consumer.commit(offsets)

    async def _process(self, transport: Transport, record: Record) -> None:
        try:
            message = codec.decode(record, self.core.registry, self.limits)
        except UnknownEventType:
            return  # another app's event on a shared topic; its consumers judge it
        except PoisonEvent as exc:
            letter = DeadLetter("poison", exc.reason, self.name)
            await self._send(transport, [dead_letter_record(record, letter, self.dlq_topic)])
            return
        before = self._states.get(message.gid)
        try:
            after, out = self.core.fold(before, message, self.clock())
        except Exception as exc:  # a bug in a fold must not stop every other saga
            log.exception("tracker cannot fold %s[%d]@%d", record.topic, record.partition,
                          record.offset)  # fmt: skip
            letter = DeadLetter("failed", f"{type(exc).__name__}: {exc}", self.name)
            await self._send(transport, [dead_letter_record(record, letter, self.dlq_topic)])
            return
        await self._send(transport, out)
        if after is not None:
            self._states[after.gid] = after
            self.deadlines.track(after)
        self.metrics.observe(before, after, out, self.clock())

    async def _send(self, transport: Transport, records: Sequence[OutgoingRecord]) -> None:
        """Send or keep trying: the offset must not be committed past unsent actions."""
        delay = 0.1
        while records:
            try:
                await transport.send_many(records)
                return
            except INFRASTRUCTURE_ERRORS as exc:
                log.warning("tracker cannot publish, retrying in %.1fs: %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _timer(self, transport: Transport, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            for gid, _version in self.deadlines.pop_due(self.clock()):
                state = self._states.get(gid)
                if state is None:
                    continue
                try:
                    await transport.send(self.core.deadline_check(state))
                except INFRASTRUCTURE_ERRORS as exc:
                    log.warning("cannot send the deadline check of %s: %s", gid, exc)
                    self.deadlines.track(state)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.tick)


def _report_crash(task: asyncio.Task[None]) -> None:
    """Say so at once: a dead loop behind a live state API would look like quiet sagas."""
    if not task.cancelled() and task.exception() is not None:
        log.error("the tracker stopped working", exc_info=task.exception())
