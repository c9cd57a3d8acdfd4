"""The consume loop: each partition in order, partitions independent of each other, and an
offset committed only once its record's effects and outgoing events are acknowledged.

The poll loop only fetches and commits. Records go to a lane per partition, whose task
hands them to the dispatcher in batches (Kafka Streams' shape: process what a poll
returned, flush the producer, then commit), preparing the next batch while the last one's
acknowledgements are awaited. A slow handler holds back its own partition
and nothing else; a lane that falls behind has its partition paused until it catches up,
so memory stays bounded, and resumed while its last batch is handled, so the next
records are fetched meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from choreo.dispatch import Dispatcher, Outgoing
from choreo.errors import TransportError
from choreo.middleware import Hooks, Middleware
from choreo.retry import INFRASTRUCTURE_RETRY, Backoff, RetryPolicy
from choreo.transport.base import Consumer, Record, TopicPartition, Transport

log = logging.getLogger("choreo.worker")


class _Lane:
    """One partition's fetched records, in offset order, and the task working on them."""

    def __init__(self, tp: TopicPartition) -> None:
        self.tp = tp
        self.buffer: deque[Record] = deque()
        self.next_fetch = -1  # the offset the next fetched record should have
        self.task: asyncio.Task[None] | None = None
        self.closing = asyncio.Event()  # revoked or stopping: take no further batch

    def feed(self, records: Sequence[Record]) -> None:
        if self.next_fetch != records[0].offset:
            # The position moved (the partition came back at its committed offset):
            # what is buffered will be fetched again.
            self.buffer.clear()
        self.buffer.extend(records)
        self.next_fetch = records[-1].offset + 1

    def take(self, limit: int) -> list[Record]:
        count = min(limit, len(self.buffer))
        return [self.buffer.popleft() for _ in range(count)]


@dataclass(slots=True)
class _Flight:
    """A prepared batch whose outgoing records are being sent."""

    records: list[Record]
    keys: set[bytes | None]  # the keys (gids) of its outgoing records
    sending: asyncio.Task[None]
    started: float


async def _settled(flights: Sequence[_Flight]) -> None:
    """Let sends already under way finish, whatever their outcome: the records are sent
    again, and a send left running could otherwise land after the new one."""
    await asyncio.gather(*(flight.sending for flight in flights), return_exceptions=True)


class Worker:
    def __init__(
        self,
        *,
        transport: Transport,
        group: str,
        topics: Sequence[str],
        dispatcher: Dispatcher,
        middleware: Sequence[Middleware] = (),
        batch_size: int = 500,
        commit_interval: float = 0.1,
        infrastructure_retry: RetryPolicy = INFRASTRUCTURE_RETRY,
    ) -> None:
        self.transport = transport
        self.group = group
        self.topics = tuple(topics)
        self.dispatcher = dispatcher
        self.hooks = Hooks(middleware)
        # Records per poll and per dispatched batch; a lane holding twice this many is
        # paused. Small batches keep a rebalance's wait for the batch in hand short.
        self.batch_size = batch_size
        self.commit_interval = commit_interval
        self.infrastructure_retry = infrastructure_retry
        self.consumer: Consumer | None = None
        self.processed = 0
        self._lanes: dict[TopicPartition, _Lane] = {}
        self._paused: set[TopicPartition] = set()
        self._pending: dict[TopicPartition, int] = {}
        self._last_commit = 0.0
        self._commit_lock = asyncio.Lock()
        self._failure: BaseException | None = None

    async def run(self, stopping: asyncio.Event) -> None:
        """Consume until ``stopping`` is set; raises what broke a lane (a bug, never a
        record: records that cannot be handled are dead-lettered)."""
        self.consumer = self.transport.consumer(self.group, self.topics, on_revoke=self._on_revoke)
        await self.consumer.start()
        try:
            while not stopping.is_set():
                if self._failure is not None:
                    raise self._failure
                try:
                    batch = await self.consumer.getmany(timeout=0.1, max_records=self.batch_size)
                except TransportError as exc:
                    log.warning("group %s: fetch failed, polling again: %s", self.group, exc)
                    await asyncio.sleep(0.1)
                    continue
                for tp, records in batch.items():
                    if records:
                        self._feed(tp, records)
                if time.monotonic() - self._last_commit >= self.commit_interval:
                    await self._commit()
        finally:
            await self._close(list(self._lanes))
            await self._commit()
            await self.consumer.stop()

    def _feed(self, tp: TopicPartition, records: Sequence[Record]) -> None:
        lane = self._lanes.get(tp)
        if lane is None:
            lane = self._lanes[tp] = _Lane(tp)
        lane.feed(records)
        if len(lane.buffer) >= 2 * self.batch_size and tp not in self._paused:
            assert self.consumer is not None
            self.consumer.pause([tp])
            self._paused.add(tp)
        if lane.task is None or lane.task.done():
            lane.task = asyncio.create_task(self._drive(lane), name=f"{self.group}:{tp}")
            lane.task.add_done_callback(self._lane_ended)

    async def _drive(self, lane: _Lane) -> None:
        """Prepare a lane's batches one after another; each batch's outgoing records go
        to the producer as soon as it is prepared, and its acknowledgements are awaited
        while the next batch is prepared (Kafka Streams' shape, one batch deep). A batch's
        offsets become committable only once it and every batch before it are
        acknowledged, so a crash anywhere is still redelivery plus the barrier."""
        assert self.consumer is not None
        flights: list[_Flight] = []  # batches being sent, oldest first; at most two
        try:
            # Until the buffer is empty and every batch landed: records fed while the last
            # batch is acknowledged are taken by this task (a new one starts only once it
            # is done).
            while (lane.buffer or flights) and not lane.closing.is_set():
                if lane.tp not in self.consumer.assignment():
                    lane.buffer.clear()  # taken away by a rebalance; the new owner reads it
                    return
                batch = lane.take(self.batch_size)
                if lane.tp in self._paused and len(lane.buffer) < self.batch_size:
                    # Fetch the next records while this batch is handled.
                    self.consumer.resume([lane.tp])
                    self._paused.discard(lane.tp)
                started = time.monotonic()
                outgoing: Outgoing | None = None
                try:
                    if not batch:
                        # Nothing buffered: records that arrive meanwhile wait for this
                        # landing and are then taken together. A batch started for each
                        # arrival would be small, and a batch has a fixed cost (about
                        # two records' worth of CPU on Redis): batches grow with the load.
                        await self._land(lane, flights)
                        continue
                    outgoing = await self.dispatcher.prepare(batch)
                    if flights and not flights[-1].keys.isdisjoint(outgoing.keys):
                        # A saga of this batch has records in flight: they go first, so
                        # a failed send can never put a later record of it ahead.
                        await self._land(lane, flights)
                    sending = asyncio.create_task(outgoing.deliver())
                    flights.append(_Flight(batch, outgoing.keys, sending, started))
                    if len(flights) > 1:
                        await self._land(lane, flights)
                except TransportError as exc:
                    # Handle everything not acknowledged again, as one batch whose
                    # acknowledgements are awaited before going on: the barrier turns
                    # what was recorded into re-publications of the same records.
                    redo = [record for flight in flights for record in flight.records]
                    if batch and (not flights or flights[-1].records is not batch):
                        redo += batch
                        if outgoing is not None:  # prepared, never sent: end its spans
                            outgoing.abandon(exc)
                    log.warning("%s@%d..%d: infrastructure error, retrying: %s", lane.tp,
                                redo[0].offset, redo[-1].offset, exc)  # fmt: skip
                    await _settled(flights)
                    flights.clear()
                    if not await self._handle(lane, redo):
                        lane.buffer.clear()  # given up while stopping: redelivered later
                        return
                    await self._acknowledged(lane, redo, started)
        finally:
            await self._land_last(lane, flights)

    async def _land(self, lane: _Lane, flights: list[_Flight]) -> None:
        """Await the oldest batch's acknowledgements and drop it from ``flights``; raises
        TransportError (leaving it there) when its send failed."""
        await flights[0].sending
        flight = flights.pop(0)
        await self._acknowledged(lane, flight.records, flight.started)

    async def _land_last(self, lane: _Lane, flights: list[_Flight]) -> None:
        """The lane is ending (drained, revoked, stopping): the batches in flight land in
        order; from the first that fails on, they stay uncommitted and are redelivered to
        whoever reads the partition next."""
        while flights:
            try:
                await asyncio.shield(flights[0].sending)
            except TransportError as exc:
                log.warning("%s@%d: not acknowledged, left to redelivery: %s", lane.tp,
                            flights[0].records[0].offset, exc)  # fmt: skip
                await _settled(flights)
                return
            flight = flights.pop(0)
            await self._acknowledged(lane, flight.records, flight.started)

    async def _acknowledged(self, lane: _Lane, batch: Sequence[Record], started: float) -> None:
        self._pending[lane.tp] = batch[-1].offset + 1
        self.processed += len(batch)
        if self.hooks:
            await self.hooks.after_batch(lane.tp, len(batch), time.monotonic() - started)

    async def _handle(self, lane: _Lane, batch: Sequence[Record]) -> bool:
        """Handle a batch, retrying infrastructure trouble (the partition waits: skipping
        would break per-gid order); False when the lane closed while retrying."""
        backoff = Backoff(self.infrastructure_retry, lane.closing)
        if not await backoff.wait():  # the failure that brought us here counts as one
            return False
        while True:
            try:
                await self.dispatcher.handle_batch(batch)
                return True
            except TransportError as exc:
                log.warning("%s@%d..%d: infrastructure error, retrying: %s", lane.tp,
                            batch[0].offset, batch[-1].offset, exc)  # fmt: skip
                if not await backoff.wait():
                    return False

    def _lane_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None and self._failure is None:
            self._failure = task.exception()
            log.error("group %s: a partition's worker failed", self.group, exc_info=self._failure)

    async def _commit(self) -> None:
        async with self._commit_lock:
            self._last_commit = time.monotonic()
            if not self._pending or self.consumer is None:
                return
            offsets, self._pending = self._pending, {}
            try:
                await self.consumer.commit(offsets)
            except TransportError as exc:
                log.warning("group %s: offset commit failed, will retry: %s", self.group, exc)
                for tp, offset in offsets.items():
                    self._pending[tp] = max(offset, self._pending.get(tp, offset))
                return
        await self.hooks.after_commit(offsets)

    async def _close(self, tps: Sequence[TopicPartition]) -> None:
        """Let the batches in hand finish (never half a batch), drop what is buffered."""
        lanes = [lane for tp in tps if (lane := self._lanes.pop(tp, None)) is not None]
        self._paused.difference_update(tps)
        for lane in lanes:
            lane.closing.set()
            lane.buffer.clear()
        tasks = [lane.task for lane in lanes if lane.task is not None and not lane.task.done()]
        if tasks:
            await asyncio.gather(*(asyncio.shield(task) for task in tasks), return_exceptions=True)

    async def _on_revoke(self, revoked: frozenset[TopicPartition]) -> None:
        """Finish and commit the work in hand before a rebalance hands it to someone else;
        never commit past what finished."""
        await self._close(sorted(revoked))
        await self._commit()
