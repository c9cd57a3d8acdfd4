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
from typing import TYPE_CHECKING

from choreo import codec
from choreo.deadletter import DLQ_TOPIC
from choreo.errors import TransportError
from choreo.events import EventRegistry
from choreo.saga.contract import SagaContract
from choreo.saga.state import SagaState
from choreo.store.base import Store
from choreo.tracker.core import TRACKER_SOURCE, TrackerCore
from choreo.tracker.pipeline import Stopping, TrackerPipeline
from choreo.tracker.tracing import TrackerTracing
from choreo.tracker.view import StatesView
from choreo.transport.base import Consumer, OutgoingRecord, Transport
from choreo.urls import open_transport

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

log = logging.getLogger("choreo.tracker")


class MemoryTracker:
    name = TRACKER_SOURCE

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
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        """``tracer_provider``: where the spans of the tracker's decisions go
        (``choreo.tracker.tracing``); None: the global provider, looked up when the
        tracker starts, as a service does."""
        self.tracer_provider = tracer_provider
        self.core = TrackerCore(contracts)
        self.broker = broker
        self.group = group
        self.clock = clock
        self.tick = tick
        self.partitions = partitions
        self.dlq_topic = dlq_topic
        self.pipeline = TrackerPipeline(
            self.core, send=self._send, clock=clock, dlq_topic=dlq_topic, limits=limits
        )
        self.deadlines = self.pipeline.deadlines
        self.metrics = self.pipeline.metrics
        self._states = self.pipeline.states
        self.transport: Transport | None = None  # while running, for the ops routes
        self._tasks: list[asyncio.Task[None]] = []

    def use_clock(self, clock: Callable[[], float]) -> None:
        """Read time from ``clock`` from now on (a test's ``VirtualClock.now``)."""
        self.clock = clock
        self.pipeline.clock = clock

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
        stopping = self.pipeline.stopping = asyncio.Event()
        self.pipeline.tracing = TrackerTracing(self.tracer_provider)
        async with contextlib.AsyncExitStack() as stack:
            if owns:
                await stack.enter_async_context(transport)
            await transport.ensure_topics(self.known_topics(), self.partitions)
            consumer = transport.consumer(self.group, self.subscribed_topics())
            await consumer.start()
            stack.push_async_callback(consumer.stop)
            self.transport = transport
            tasks = [
                asyncio.create_task(self._consume(consumer, stopping)),
                asyncio.create_task(self._timer(stopping)),
            ]
            for task in tasks:
                task.add_done_callback(_report_crash)
            self._tasks = tasks
            try:
                yield self
            finally:
                stopping.set()
                self._tasks = []
                await asyncio.gather(*tasks)  # a crashed loop's error is raised here
                self.transport = None

    async def until_stopped(self, stopping: asyncio.Event) -> None:
        """Inside ``running()``: wait for ``stopping``, or for a loop of the tracker to end
        on its own, which only a crash does; leaving ``running()`` then raises its error,
        so the process ends non-zero instead of serving a state API over dead loops."""
        waiting = asyncio.create_task(stopping.wait())
        try:
            await asyncio.wait([waiting, *self._tasks], return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()

    async def _send(self, records: Sequence[OutgoingRecord]) -> None:
        assert self.transport is not None, "the tracker is not running"
        await self.transport.send_many(records)

    async def _consume(self, consumer: Consumer, stopping: asyncio.Event) -> None:
        """What a poll returned is folded as one batch (one wait for its outputs), then
        its offsets are committed."""
        while not stopping.is_set():
            batch = await consumer.getmany(timeout=0.1)
            if not batch:
                continue
            now = self.clock()
            items = [(record, now) for records in batch.values() for record in records]
            try:
                await self.pipeline.handle_batch(items)
            except Stopping:
                continue  # an unfinished batch is read again
            offsets = {tp: records[-1].offset + 1 for tp, records in batch.items()}
            try:
                await consumer.commit(offsets)
            except TransportError as exc:  # redelivered and folded again: harmless
                log.warning("tracker: offset commit failed: %s", exc)

    async def _timer(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            await self.pipeline.send_due(self.clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.tick)


def _report_crash(task: asyncio.Task[None]) -> None:
    """Say so at once: a dead loop behind a live state API would look like quiet sagas."""
    if not task.cancelled() and task.exception() is not None:
        log.error("the tracker stopped working", exc_info=task.exception())
